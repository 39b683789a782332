"""Secrets in source URLs reach no output: the redaction function, output names, the metrics page and the
preview page over real HTTP, the JSONL a real sink writes, and what the real CLI prints.

The property tests build URLs the way cameras, DVRs and CDNs take them, with random printable secrets
(``@ : / ? & # %`` included) in the user-info, under every sensitive query key, in DVR-style path
credentials and in fragments, behind correct, mistyped and missing schemes. A leak is any 4-character
piece of a secret that shows up in an output while the URL without its secrets does not contain it.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import os
import re
import signal
import string
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from stream.edges.metrics import StatsRegistry, start_metrics_server
from stream.edges.preview import PreviewServer
from stream.edges.redact import MASK, SENSITIVE_KEYS, redact
from stream.edges.sinks import JsonlSink, jsonl_record
from stream.edges.sources import SourceError, is_live, probe_source, unique_names
from stream.front.cli import main
from stream.media.frames import DecodedFrame

# No whitespace (a URL has none), no "=" (an unescaped "&name=" inside a password cannot be told from
# the next parameter; see stream/edges/redact.py) and no "*" (the mask itself).
SECRET_ALPHABET = "".join(c for c in string.printable if c not in string.whitespace + "=*")
secret_text = st.text(SECRET_ALPHABET, min_size=4, max_size=14)

GOOD_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://")
BAD_SCHEMES = ("rstp://", "rtsp:/", "http//", "rtsp:", "htp://", "", "//")
HOSTS = ("cam.local", "10.0.0.7", "10.0.0.7:554", "nvr-3.example.com:8554")
PATHS = (("Streaming", "Channels", "101"), ("live.sdp",), ("cam", "realmonitor"), ("h264",), ("stream1",))
PLAIN_PARAMS = ("channel=1", "subtype=0", "quality=hd")
QUERY_KEYS = tuple(sorted(SENSITIVE_KEYS)) + ("X-Amz-Signature", "X-Amz-Credential", "X-Goog-Signature")
# The text around the URL in the error for a source that is neither a file nor a known URL.
# The fixed words of the source errors (a secret "anno" is in "cannot"): not leaks.
SOURCE_ERROR = ("sapiens-stream: error: source not found: "
                "(not a file, nor a URL of a known scheme: rtsp://, http://, ...)"
                "not a usable source URL: (its host or port cannot be read; in a password, "
                "percent-encode characters such as @ : # / ? as %40 %3A %23 %2F %3F)")
# Without a scheme, a user name that begins like one is read as the scheme, and quotes, brackets or
# slashes before it as the text around the URL (see stream/edges/redact.py).
_SCHEME_LIKE = re.compile(r"[\"'(\[{</]|[A-Za-z][A-Za-z0-9+.\-]*(?::|//)")
PATH_FORMS = (("user", "password", "&"), ("user", "pwd", ";"), ("user", "password", "_"),
              ("username", "passwd", "&"))


@dataclass
class SecretUrl:
    url: str
    secrets: list[str]
    background: str  # the URL with every secret left out

    def leaks(self, output: str, named: bool = False, known: str = "", words: bool = True) -> list[str]:
        """Pieces of secrets in ``output``; ``named``: also as an output name spells them. Pieces found in
        ``known`` (the output's own text around the URL) and, without ``words``, pieces made of letters
        only (which messages are made of) do not count."""
        forms = [(s, self.background) for s in self.secrets]
        if named:
            forms += [(_as_name(s), _as_name(self.background)) for s in self.secrets]
        found = []
        for secret, background in forms:
            for i in range(len(secret) - 3):
                piece = secret[i:i + 4]
                if piece in background or piece in known or (not words and piece.isalpha()):
                    continue
                if piece in output:
                    found.append(piece)
        return found


def _as_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def _case(draw, key: str) -> str:
    return draw(st.sampled_from([key, key.upper(), key.title()]))


@st.composite
def secret_urls(draw, schemes=GOOD_SCHEMES + BAD_SCHEMES, hosts=HOSTS) -> SecretUrl:
    """A URL with at least one secret, as ``SecretUrl``; ``parts`` pairs text with whether it is secret."""
    parts: list[tuple[str, bool]] = []
    scheme = draw(st.sampled_from(schemes))
    parts.append((scheme, False))
    userinfo = draw(st.sampled_from(["none", "user", "user:password"]))
    if scheme in ("", "//") and userinfo == "user":
        userinfo = "user:password"  # without a scheme, a lone name@ cannot be told from a file name
    if userinfo != "none":
        plain = scheme in ("", "//")
        parts.append((draw(secret_text.filter(lambda text: not (plain and _SCHEME_LIKE.match(text)))), True))
        if userinfo == "user:password":
            parts += [(":", False), (draw(secret_text), True)]
        parts.append(("@", False))
    parts.append((draw(st.sampled_from(hosts)), False))
    for segment in draw(st.sampled_from(PATHS)):
        parts.append(("/" + segment, False))
    if draw(st.booleans()):  # DVR-style credentials in the path
        user_key, password_key, sep = draw(st.sampled_from(PATH_FORMS))
        parts += [(f"/{_case(draw, user_key)}=", False), (draw(secret_text), True),
                  (f"{sep}{_case(draw, password_key)}=", False), (draw(secret_text), True),
                  (f"{sep}channel=1", False)]
    params = draw(st.lists(st.one_of(st.sampled_from(PLAIN_PARAMS), st.sampled_from(QUERY_KEYS)), max_size=3))
    for i, param in enumerate(params):
        parts.append(("?" if i == 0 else "&", False))
        if "=" in param:
            parts.append((param, False))
        else:
            parts += [(_case(draw, param) + "=", False), (draw(secret_text), True)]
    fragment = draw(st.sampled_from(["none", "plain", "token"]))
    if fragment == "plain":
        parts.append(("#frag", False))
    elif fragment == "token":
        parts += [("#access_token=", False), (draw(secret_text), True)]
    secrets = [text for text, secret in parts if secret]
    if not secrets:  # at least one secret: put it in the query
        secret = draw(secret_text)
        parts += [("&" if params else "?", False), ("token=", False), (secret, True)]
        secrets = [secret]
    return SecretUrl(
        "".join(text for text, _ in parts), secrets, "".join(text for text, secret in parts if not secret)
    )


# --- the function -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "secret", "kept"),
    [
        ("rtsp://admin:p@ss@192.168.1.64:554/Streaming/Channels/101", "p@ss", "192.168.1.64:554/Streaming"),
        ("rtsp://192.168.1.64:554/live?user=admin&pwd=Hik12345&channel=1", "Hik12345", "channel=1"),
        ("https://cdn.example.com/live/index.m3u8?access_token=eyJhbGciOi.xyz", "eyJhbGciOi", "index.m3u8"),
        ("rtsp://10.1.1.9:554/user=admin&password=tlJwpbo6&channel=1&stream=0.sdp?", "tlJwpbo6", "channel=1"),
        ("rtsp://10.1.1.9/user=admin_password=tlJwpbo6_channel=1_stream=0.sdp", "tlJwpbo6", "_channel=1"),
        ("rtsp://10.1.1.9/cam;user=admin;pwd=tlJwpbo6;channel=2", "tlJwpbo6", ";channel=2"),
        ("rstp://admin:Secr3t!@10.1.1.9/stream1", "Secr3t!", "10.1.1.9/stream1"),
        ("rtsp:/admin:Secr3t!@10.1.1.9/stream1", "Secr3t!", "10.1.1.9/stream1"),
        ("http//admin:Secr3t!@10.1.1.9/video.mjpg", "Secr3t!", "10.1.1.9/video.mjpg"),
        ("admin:Secr3t!@10.1.1.9/video.mjpg", "Secr3t!", "10.1.1.9/video.mjpg"),
        ("https://b.s3.amazonaws.com/v.mp4?X-Amz-Credential=AKIAX%2F2024&X-Amz-Signature=9f8e7d", "9f8e7d",
         "b.s3.amazonaws.com/v.mp4"),
        ("https://example.com/v.m3u8#access_token=t0k3n-abc", "t0k3n-abc", "v.m3u8"),
        ("https://example.com/v.m3u8?API_KEY=k3y-XYZ&sig=s1g-XYZ", "k3y-XYZ", "v.m3u8"),
    ],
)
def test_real_world_forms(url: str, secret: str, kept: str) -> None:
    redacted = redact(url)
    assert secret not in redacted and kept in redacted, redacted
    assert redact(redacted) == redacted, "masking twice changes nothing"


@pytest.mark.parametrize("text", ["clip.mp4", "clip@2x.mp4", "videos/a@b/c.mp4", "mail me@example.com",
                                  "0", "/dev/video0", "rtsp://cam.local/stream", "door"])
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_free_text_masks_secrets_seen_before_in_any_spelling() -> None:
    redact("rtsp://viewer:Pa55%40word@10.0.0.9/live")
    message = "401 for viewer:Pa55@word at 10.0.0.9 (sent Pa55%40word, Pa55%2540word)"
    masked = redact(message)
    assert "Pa55" not in masked and "10.0.0.9" in masked, masked


@settings(max_examples=300, deadline=None)
@given(secret_urls())
# A password that starts with a slash (``rtsp:///000@cam``), once found as such, then percent-encoded.
@example(SecretUrl("rtsp:///000@cam.local/Streaming/Channels/101", ["/000"], "rtsp://@cam.local/Streaming/Channels/101"))
def test_redact_leaves_no_secret(case: SecretUrl) -> None:
    redacted = redact(case.url)
    assert not case.leaks(redacted), (case.url, redacted)
    template = "[Errno 111] Connection refused: '{}' (retrying)"
    masked = redact(template.format(case.url))
    assert not case.leaks(masked, known=template), ("also inside a message", masked)
    # The same URL percent-encoded (as a parameter of another URL, or as FFmpeg may quote it).
    encoded = SecretUrl(quote(case.url, safe=""), [quote(s, safe="") for s in case.secrets],
                        quote(case.background, safe=""))
    masked = redact(f"open {encoded.url} failed")
    assert not encoded.leaks(masked, known="open failed"), ("also percent-encoded", masked)


# --- output names and source errors ---------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(secret_urls())
def test_output_names_and_source_errors_carry_no_secret(case: SecretUrl) -> None:
    try:
        info = probe_source(case.url)
    except SourceError as exc:  # a mistyped or missing scheme: not a file, not a known URL
        assert not case.leaks(str(exc), known=SOURCE_ERROR), str(exc)
        return
    (name,) = unique_names([info])
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", name), name
    assert not case.leaks(name, named=True), (case.url, name)


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("rtsp://admin:p@ss@10.0.0.2:554/Streaming/Channels/101", "101"),
        ("rtsp://10.0.0.2:554/user=admin&password=x1&channel=1&stream=0.sdp", "10.0.0.2_554"),
        ("rtsp://10.0.0.2/cam/user=admin_password=x1_channel=1_stream=0.sdp?real", "cam"),
        ("https://cdn/hls/live.m3u8?token=abc", "live.m3u8"),
        ("door=rtsp://admin:pw@10.0.0.2/x", "door"),
        ("0", "cam0"),
    ],
)
def test_live_names(spec: str, name: str) -> None:
    assert probe_source(spec).name == name


def test_named_source_keeps_its_url(tmp_path: Path) -> None:
    info = probe_source("door=rtsp://admin:pw@10.0.0.2/x")
    assert (info.name, info.spec, info.kind) == ("door", "rtsp://admin:pw@10.0.0.2/x", "live")
    odd = tmp_path / "a=b.mp4"
    odd.write_bytes(b"")
    with pytest.raises(SourceError, match="cannot read"):  # an existing file keeps its "=" (and fails)
        probe_source(str(odd))


# --- metrics page, preview page, JSONL (real HTTP, real sink) -------------------------------------------


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


@settings(max_examples=25, deadline=None)
@given(case=secret_urls())
def test_metrics_page_over_http(case: SecretUrl) -> None:
    registry = StatsRegistry()
    stats = registry.source(case.url)
    stats.frame_in()
    stats.drop("stale")
    with start_metrics_server(registry, port=0) as server:
        page = _get(server.url)
    labels = [
        sample.labels["source"]
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if "source" in sample.labels
    ]
    assert labels and not any(case.leaks(value) for value in labels), labels


def _preview_of(url: str) -> tuple[str, list[str]]:
    """The source figures of the preview page and the strings ``sources.json`` lists, for one source."""
    with PreviewServer(port=0) as preview:
        preview.publish(url, np.zeros((8, 8, 3), np.uint8), stats={"fps_in": 1.0})
        page = _get(preview.url)
        listed = json.loads(_get(preview.url + "sources.json"))
    figures = html.unescape(page.split('<main id="sources">', 1)[1].split("</main>", 1)[0])
    return figures, [value for source in listed for value in (source["name"], source["id"], source["stream"])]


@settings(max_examples=25, deadline=None)
@given(case=secret_urls())
def test_preview_page_over_http(case: SecretUrl) -> None:
    # Not leaks: the page's own markup (a source named "x"; a secret "stre" is in every "/stream/"), and
    # the element id the page spells from the URL without its secrets (a secret "tor_" is in the id of
    # ".../realmonitor?token=", where "?" becomes "_").
    blank_figures, blank_strings = _preview_of("x")
    background_id = re.sub(r"[^A-Za-z0-9_-]+", "_", case.background)
    markup = "\n".join([blank_figures, *blank_strings, background_id])
    figures, strings = _preview_of(case.url)
    assert "<figure" in figures and not case.leaks(figures, known=markup), figures
    assert strings and not any(case.leaks(value, known=markup) for value in strings), strings


def _frame() -> DecodedFrame:
    return DecodedFrame(image=np.zeros((4, 4, 3), np.uint8), index=0, pts=0.0, time_base=Fraction(1, 25),
                        capture_time=0.0)


@settings(max_examples=40, deadline=None)
@given(case=secret_urls())
def test_jsonl_written_by_a_real_sink(tmp_path_factory, case: SecretUrl) -> None:
    path = tmp_path_factory.mktemp("jsonl") / "out.jsonl"
    sink = JsonlSink(path)
    sink.write(jsonl_record(case.url, _frame(), None, skipped=True))
    sink.close()
    (line,) = path.read_text().splitlines()
    source = json.loads(line)["source"]
    assert not case.leaks(source) and MASK in source, source


# --- the real command line ------------------------------------------------------------------------------


def _error_line(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse's own errors (a source that starts with "-")
            status = exc.code
    return status, err.getvalue()


@settings(max_examples=30, deadline=None)
@given(case=secret_urls(schemes=BAD_SCHEMES))
def test_cli_error_line_for_a_mistyped_url(tmp_path_factory, case: SecretUrl) -> None:
    assume(not is_live(case.url))  # a secret may complete a mistyped scheme: "rtsp:/" + "/user"
    out = tmp_path_factory.mktemp("out")
    status, err = _error_line(["run", case.url, "--out", str(out / "o")])
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("sapiens-stream: error: "), err
    assert not case.leaks(lines[0], known=SOURCE_ERROR), lines[0]


@pytest.fixture(scope="module")
def tiny_pose(tmp_path_factory) -> Path:
    from pipeline_fixtures import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("pose"), "pose")


@pytest.fixture(scope="module")
def boxes_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("boxes") / "boxes.jsonl"
    path.write_text('{"frame": 0, "boxes": []}\n')
    return path


def _closed_port() -> int:
    from rtsp_server import free_port

    return free_port()  # bound and released: nothing listens there


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases=st.lists(secret_urls(schemes=("rtsp://",), hosts=("127.0.0.1:{port}",)), min_size=3, max_size=3))
def test_cli_with_unreachable_cameras(tmp_path_factory, tiny_pose: Path, boxes_file: Path,
                                      cases: list[SecretUrl]) -> None:
    """Cameras on a loopback port where nothing listens: the run logs its retries until SIGINT; neither
    what it prints nor the files it writes (names or contents) holds a secret."""
    port = _closed_port()
    where = tmp_path_factory.mktemp("cli")
    out = where / "out"
    command = [sys.executable, "-m", "stream", "run", *[c.url.replace("{port}", str(port)) for c in cases],
               "--out", str(out), "--mode", "live", "--pose-model", str(tiny_pose), "--input-size", "64x48",
               "--detector", f"boxes:{boxes_file}", "--device", "cpu", "--workers", "inproc", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    stdout_path, stderr_path = where / "stdout.txt", where / "stderr.txt"
    with stdout_path.open("w") as stdout_file, stderr_path.open("w") as stderr_file:
        run = subprocess.Popen(command, stdout=stdout_file, stderr=stderr_file, env=env,
                               cwd=Path(__file__).parents[1])
    try:
        # Each camera's failed connection is reported on a line of its own, then the run is stopped.
        deadline = time.monotonic() + 180
        while len(stderr_path.read_text().splitlines()) < len(cases) and run.poll() is None:
            assert time.monotonic() < deadline, f"no retries reported: {stderr_path.read_text()[-2000:]}"
            time.sleep(0.2)
        run.send_signal(signal.SIGINT)
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    stdout, stderr = stdout_path.read_text(), stderr_path.read_text()
    # The URLs were reported (the host may be masked too where a secret happens to be part of it).
    assert "rtsp:" in stderr or "***" in stderr, stderr[-2000:]
    outputs = [stdout, stderr] + [p.name for p in out.rglob("*")]
    outputs += [p.read_text() for p in out.glob("*.jsonl")]
    for case in cases:
        background = SecretUrl(case.url, case.secrets, case.background.replace("{port}", str(port)))
        for text in outputs:
            # The run's own messages are English words and its output paths: neither counts.
            assert not background.leaks(text, named=True, known=str(out), words=False), text[-2000:]
