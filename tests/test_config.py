"""Run configuration: YAML files, command-line overrides and one-line errors for bad values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stream.config import ConfigError, PipelineConfig, build_config, load_yaml, parse_host_port, parse_size
from stream.edges.live_open import live_options
from stream.front.cli import build_parser, config_values

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    "name, task", [("pose", ("pose",)), ("seg", ("seg",)), ("pose_seg", ("pose", "seg"))]
)
def test_shipped_configs_load(name: str, task: tuple[str, ...]) -> None:
    config = build_config({**load_yaml(CONFIGS / f"{name}.yaml"), "sources": ["a.mp4"]})
    assert config.task == task
    assert config.input_size == (1024, 768)
    assert config.flip is True


def test_command_line_overrides_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("task: seg\nmax-batch: 4\ninput_size: [512, 384]\nsmooth: false\n")
    args = build_parser().parse_args(
        ["run", "a.mp4", "b/", "--config", str(path), "--max-batch", "2", "--out", "o"]
    )
    config = build_config(config_values(args))
    assert (config.task, config.max_batch, config.input_size, config.smooth) == (
        ("seg",),
        2,
        (512, 384),
        False,
    )
    assert config.sources == ["a.mp4", "b/"] and config.out == "o"
    assert config.flip is None  # not given anywhere: on offline, off live


def test_defaults() -> None:
    config = PipelineConfig(sources=["x.mp4"])
    assert (config.task, config.workers, config.mode, config.precision) == (("pose",), "ipc", "auto", "auto")
    assert config.pose and not config.seg


@pytest.mark.parametrize(
    "values, message",
    [
        ({"task": "pose,depth"}, "task must be"),
        ({"input_size": "1000x768"}, "multiples of 16"),
        ({"input_size": "big"}, "HxW"),
        ({"max_batch": 0}, "max_batch must be a positive integer"),
        ({"mode": "fast"}, "mode must be one of"),
        ({"conf": 1.5}, r"conf must be a number in \[0, 1\]"),
        ({"serve": "8080"}, "HOST:PORT"),
        ({"workers": "mpi"}, "workers must be one of"),
        ({"colour": "red"}, "unknown option 'colour'"),
    ],
)
def test_bad_values_are_one_line_errors(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        build_config({"sources": ["a.mp4"], **values})
    assert "\n" not in str(info.value)


def test_bad_yaml_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("task: [pose\nmax_batch: 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- pose\n- seg\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(listing)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("tsak: pose\n")
    with pytest.raises(ConfigError, match="unknown option 'tsak'"):
        load_yaml(unknown)
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_parse_size_forms() -> None:
    assert parse_size("1024x768") == (1024, 768)
    assert parse_size([256, 192]) == (256, 192)


def test_live_options_carry_the_stall_timer_and_webcam_request() -> None:
    args = build_parser().parse_args(
        ["run", "/dev/video0", "--stall-timeout", "2.5", "--webcam-size", "1280x720", "--webcam-fps", "30",
         "--webcam-format", "mjpeg", "--rtsp-transport", "udp"]
    )
    options = live_options(build_config(config_values(args)))
    assert (options.stall_timeout, options.width, options.height, options.fps, options.pixel_format) == (
        2.5, 1280, 720, 30.0, "mjpeg",
    )
    assert options.rtsp_transport == "udp"


@pytest.mark.parametrize(
    "values, option",
    [({"webcam_size": "1280"}, "webcam_size"), ({"stall_timeout": 0}, "stall_timeout"),
     ({"webcam_fps": -1}, "webcam_fps")],
)
def test_bad_live_options_name_the_option(values: dict, option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        build_config({"sources": ["rtsp://camera/stream"], **values})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:9100", ("127.0.0.1", 9100)), ("0.0.0.0:80", ("0.0.0.0", 80)), ("[::1]:8080", ("::1", 8080))],
)
def test_parse_host_port(value: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(value) == expected


@pytest.mark.parametrize("value", ["localhost:http", "127.0.0.1:70000", "host:", ":9100", "9100"])
def test_parse_host_port_errors(value: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT|out of range"):
        parse_host_port(value)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"stale_after": 0}, "stale_after must be a positive number"),
        ({"stale_after": -0.5}, "stale_after must be a positive number"),
        ({"folder_fps": 0}, "folder_fps must be a positive number"),
        ({"webcam_fps": 0}, "webcam_fps must be a positive number"),
        ({"stall_timeout": float("inf")}, "stall_timeout must be a positive number"),
        ({"conf": float("nan")}, r"conf must be a number in \[0, 1\]"),
        ({"max_wait_ms": -1}, "max_wait_ms must be a non-negative number"),
        ({"max_batch": True}, "max_batch must be a positive integer"),
        ({"max_batch": 2.0}, "max_batch must be a positive integer"),
        ({"queue_frames": 0}, "queue_frames must be a positive integer"),
        ({"max_viewers": 0}, "max_viewers must be a positive integer"),
        ({"crf": 52}, r"crf must be an integer in \[0, 51\]"),
        ({"flip": "yes"}, "flip must be true or false, got 'yes'"),
        ({"smooth": 1}, "smooth must be true or false"),
        ({"random_weights": "false"}, "random_weights must be true or false"),
        ({"serve": "127.0.0.1:0"}, "port 1-65535"),
        ({"metrics": "127.0.0.1:65536"}, "port 1-65535"),
        ({"device": "gpu 0"}, "device must be auto, cpu, cuda or cuda:N"),
        ({"pose_model": ""}, "pose_model must be a non-empty string"),
        ({"sources": ["a.mp4", 3]}, "sources must be a list of paths or URLs"),
        ({"metrics": "0.0.0.0:9100"}, "metrics address 0.0.0.0:9100 is not a loopback address"),
        ({"serve": "192.168.1.5:8080"}, "add --allow-remote"),
        ({"serve": "camera-box:8080"}, "add --allow-remote"),  # a name may resolve to anything
    ],
)
def test_values_are_type_and_range_checked(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        build_config({"sources": ["a.mp4"], **values})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("address", ["127.0.0.1:9100", "127.8.0.1:9100", "localhost:9100", "[::1]:9100"])
def test_loopback_addresses_need_no_permission(address: str) -> None:
    assert build_config({"sources": ["a.mp4"], "metrics": address, "serve": address}).metrics == address


def test_allow_remote_opens_other_addresses() -> None:
    config = build_config({"sources": ["a.mp4"], "metrics": "0.0.0.0:9100", "allow_remote": True})
    assert config.metrics == "0.0.0.0:9100" and config.max_viewers == 4


@pytest.mark.parametrize(
    "text, message",
    [
        ('flip: "yes"\n', "flip must be true or false, got 'yes'"),
        ("flip: 3\n", "flip must be true or false, got 3"),
        ('max-batch: "4"\n', "max_batch must be a positive integer, got '4'"),
        ("stale_after: 0\n", "stale_after must be a positive number"),
        ("serve: 8080\n", "serve must be HOST:PORT"),
        ("random_weights: true\n", "random_weights cannot be set in a config file, only with --random-w"),
    ],
)
def test_yaml_values_are_checked_with_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_yaml(path)
    assert str(info.value).startswith(f"config {path}: ") and "\n" not in str(info.value)


def test_yaml_booleans_sources_and_cross_checks_after_merging(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("flip: yes\nrandom_weights: false\nmetrics: 0.0.0.0:9100\n"
                    "sources: [{name: door, url: 'rtsp://cam/x'}, b.mp4]\n")
    values = load_yaml(path)
    assert values["flip"] is True and values["sources"] == ["door=rtsp://cam/x", "b.mp4"]
    with pytest.raises(ConfigError, match="add --allow-remote"):
        build_config(values)  # the address alone is fine; off loopback it needs the permission
    args = build_parser().parse_args(["run", "a.mp4", "--config", str(path), "--allow-remote"])
    assert build_config(config_values(args)).allow_remote is True


def test_random_weights_only_from_the_command_line(tmp_path: Path) -> None:
    args = build_parser().parse_args(["run", "a.mp4", "--random-weights"])
    assert build_config(config_values(args)).random_weights is True
    assert build_config(config_values(build_parser().parse_args(["run", "a.mp4"]))).random_weights is False


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--stale-after", "0"], "stale_after must be a positive number"),
        (["--max-batch", "0"], "max_batch must be a positive integer"),
        (["--max-batch", "abc"], "argument --max-batch: invalid int value: 'abc'"),
        (["--webcam-fps", "-5"], "webcam_fps must be a positive number"),
        (["--max-viewers", "0"], "max_viewers must be a positive integer"),
        (["--metrics", "127.0.0.1:99999"], "port 1-65535"),
        (["--serve", "0.0.0.0:8080"], "add --allow-remote"),
        (["--config", "{yaml}"], "random_weights cannot be set in a config file"),
    ],
)
def test_bad_values_through_the_real_command(tmp_path: Path, argv: list[str], message: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("random_weights: true\n")
    argv = [a.replace("{yaml}", str(config)) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "stream", "run", "a.mp4", "--out", str(tmp_path / "o"), *argv],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("sapiens-stream: error: ") and message in lines[0], lines[0]
    assert not (tmp_path / "o").exists()


def test_servers_print_where_they_listen(tmp_path: Path) -> None:
    """A real run with the preview on loopback and the metrics on every interface (--allow-remote): each
    prints its address, and the run completes."""
    from pipeline_fixtures import save_tiny_model, write_boxes, write_test_clip
    from rtsp_server import free_port

    clip = write_test_clip(tmp_path / "clip.mp4", 4, (64, 48), fps=10)
    model = save_tiny_model(tmp_path / "pose", "pose")
    boxes = write_boxes(tmp_path / "boxes.jsonl", {})
    serve, metrics = free_port(), free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "stream", "run", str(clip), "--out", str(tmp_path / "o"), "--pose-model",
         str(model), "--detector", f"boxes:{boxes}", "--input-size", "64x48", "--device", "cpu",
         "--workers", "inproc", "--no-progress", "--serve", f"127.0.0.1:{serve}",
         "--metrics", f"0.0.0.0:{metrics}", "--allow-remote"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"preview: http://127.0.0.1:{serve}/" in proc.stderr.splitlines()
    assert f"metrics: http://0.0.0.0:{metrics}/metrics" in proc.stderr.splitlines()


def test_input_size_defaults_to_each_checkpoints_own() -> None:
    """None: every model runs at its checkpoint's size (preprocessor_config.json, else the release's);
    a given size is checked and applies to every model."""
    assert build_config({"sources": ["a.mp4"]}).input_size is None
    assert build_config({"sources": ["a.mp4"], "input_size": "512x384"}).input_size == (512, 384)
