"""Run configuration: YAML files, command-line overrides and one-line errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.config import ConfigError, PipelineConfig, build_config, load_yaml, parse_host_port, parse_size
from stream.edges.live import live_options
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
