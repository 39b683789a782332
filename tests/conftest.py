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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs_system(what, missing): a test that needs a system package (Debian); `missing` is why it "
        "is unavailable, or None. Skipped when missing, but failed under REQUIRE_SYSTEM_DEPS=1 (CI), so a "
        "green CI run means every test ran.",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_system"):
        missing = mark.kwargs.get("missing")
        if missing is None:
            continue
        reason = f"{mark.kwargs.get('what', 'system dependency')}: {missing}"
        if os.environ.get("REQUIRE_SYSTEM_DEPS") == "1":
            pytest.fail(f"required system dependency missing ({reason})", pytrace=False)
        pytest.skip(reason)

