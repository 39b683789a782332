"""Shared test settings (small thread pools so parallel test workers do not oversubscribe 2 cores, no
network) and the fixtures several test files use."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pose checkpoint trained on synthetic figures (``trained_pose.py``), once per test run."""
    from trained_pose import train_tiny_pose

    directory = tmp_path_factory.mktemp("tiny_pose_trained")
    train_tiny_pose(directory)
    return directory
