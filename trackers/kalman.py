"""Constant-velocity Kalman filter for person boxes, batched over tracks, with real time steps.

State per track (8,): box centre x, y, aspect ratio a = w / h, height h, and their velocities, the
parametrisation of SORT/ByteTrack. Noise scales with the box height, as in ByteTrack, so one set of
weights serves near and far persons. Time steps are in frames of the nominal rate (``dt`` may be a
fraction or several frames), which is how skipped frames and jittery timestamps enter the model.
"""

from __future__ import annotations

import numpy as np

# Standard deviations relative to the box height (ByteTrack's values).
STD_POSITION = 1.0 / 20.0
STD_VELOCITY = 1.0 / 160.0


def xyxy_to_xyah(boxes: np.ndarray) -> np.ndarray:
    """(N,4) xyxy -> (N,4) centre x, centre y, aspect w/h, height."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return np.stack([boxes[:, 0] + w / 2, boxes[:, 1] + h / 2, w / h, h], axis=1)


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """(N,4) centre x, centre y, aspect w/h, height -> (N,4) xyxy."""
    h = xyah[:, 3]
    w = xyah[:, 2] * h
    return np.stack([xyah[:, 0] - w / 2, xyah[:, 1] - h / 2, xyah[:, 0] + w / 2, xyah[:, 1] + h / 2], axis=1)


def _position_std(height: np.ndarray) -> np.ndarray:
    """(N,) -> (N,4) measurement/position noise std per coordinate."""
    return np.stack([STD_POSITION * height, STD_POSITION * height, np.full_like(height, 1e-2),
                     STD_POSITION * height], axis=1)


def _velocity_std(height: np.ndarray) -> np.ndarray:
    return np.stack([STD_VELOCITY * height, STD_VELOCITY * height, np.full_like(height, 1e-5),
                     STD_VELOCITY * height], axis=1)


def initiate(measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New tracks from (N,4) xyah measurements -> mean (N,8), covariance (N,8,8)."""
    n = measurement.shape[0]
    mean = np.concatenate([measurement, np.zeros((n, 4))], axis=1)
    h = measurement[:, 3]
    std = np.concatenate([2 * _position_std(h), 10 * _velocity_std(h)], axis=1)
    std[:, 2], std[:, 6] = 1e-2, 1e-5
    return mean, np.einsum("ni,ij->nij", std**2, np.eye(8))


def predict(mean: np.ndarray, cov: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Advance (N,8) means and (N,8,8) covariances by dt (N,) frames (dt = 0 leaves them as they are)."""
    n = mean.shape[0]
    dt = np.asarray(dt, dtype=np.float64).reshape(n)
    motion = np.tile(np.eye(8), (n, 1, 1))
    motion[:, np.arange(4), np.arange(4) + 4] = dt[:, None]
    h = mean[:, 3]
    std = np.concatenate([_position_std(h), _velocity_std(h)], axis=1)
    process = np.einsum("ni,ij->nij", std**2 * dt[:, None], np.eye(8))  # noise grows with elapsed time
    mean = np.einsum("nij,nj->ni", motion, mean)
    cov = motion @ cov @ motion.transpose(0, 2, 1) + process
    return mean, cov


def update(mean: np.ndarray, cov: np.ndarray, measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correct (N,8) means and (N,8,8) covariances with (N,4) xyah measurements."""
    std = _position_std(mean[:, 3])
    std[:, 2] = 1e-1  # the measured aspect ratio is noisier than the model's drift of it
    projected_mean = mean[:, :4]
    projected_cov = cov[:, :4, :4] + np.einsum("ni,ij->nij", std**2, np.eye(4))
    # Kalman gain K = P H^T S^-1, with H selecting the first four state entries.
    gain = np.linalg.solve(projected_cov, cov[:, :4, :]).transpose(0, 2, 1)  # (N,8,4)
    innovation = measurement - projected_mean
    mean = mean + np.einsum("nij,nj->ni", gain, innovation)
    cov = cov - gain @ projected_cov @ gain.transpose(0, 2, 1)
    return mean, cov
