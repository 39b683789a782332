"""A local RTSP server for the live-source tests and the latency benchmark.

Run with the system Python, which has GStreamer's bindings (Debian: python3-gi, python3-gst-1.0,
gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-ugly for x264enc):

    /usr/bin/python3 tests/rtsp_server.py --port 8554 [--user U --password P] [--duration 120]

It serves a generated, endlessly moving test picture as H.264 at rtsp://127.0.0.1:PORT/MOUNT (with
``--record FILE`` it instead accepts a stream published to it, RTSP RECORD as FFmpeg publishes, into
FILE), prints ``READY <url without credentials>`` once listening, and stops by itself after
``--duration`` seconds, on SIGTERM/SIGINT, or when its parent process goes away. It binds loopback
addresses only. Killing it is how the tests take a camera "down"; starting it again on the same port
brings the camera "back".
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = Path(__file__).resolve()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", default="/cam", help="path of the stream")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--keyint", type=int, default=15, help="frames between keyframes (fast joins)")
    parser.add_argument("--pattern", default="ball", help="videotestsrc pattern (ball, smpte, red, ...)")
    parser.add_argument("--user", default=None, help="require basic authentication with this user")
    parser.add_argument("--password", default=None)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds before exiting by itself")
    parser.add_argument("--record", default=None, metavar="FILE",
                        help="instead of serving, accept a published H.264 stream (RTSP RECORD) into FILE "
                        "(MPEG-TS, readable while written)")
    args = parser.parse_args(argv)
    if not ipaddress.ip_address(args.host).is_loopback:
        parser.error(f"--host must be a loopback address, got {args.host}")
    if (args.user is None) != (args.password is None):
        parser.error("give both --user and --password, or neither")
    if not 0 < args.duration <= 3600:
        parser.error("--duration must be in (0, 3600] seconds")
    return args


def launch_line(args: argparse.Namespace) -> str:
    """A live test picture, encoded for low latency with frequent keyframes so clients join fast."""
    return (
        f"( videotestsrc is-live=true pattern={args.pattern} "
        f"! video/x-raw,format=I420,width={args.width},height={args.height},framerate={args.fps}/1 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.keyint} bitrate=1000 "
        "! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def add_basic_auth(server, factory, user: str, password: str) -> None:
    from gi.repository import GstRtspServer

    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    server.set_auth(auth)
    permissions = GstRtspServer.RTSPPermissions()
    permissions.add_permission_for_role("viewer", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
    permissions.add_permission_for_role("viewer", GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True)
    factory.set_permissions(permissions)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    if args.record:
        # What a publisher announces is depayloaded and written as it arrives.
        factory.set_transport_mode(GstRtspServer.RTSPTransportMode.RECORD)
        # At TEARDOWN, end the stream before stopping the pipeline, so that the parser's and the muxer's
        # last buffers reach the file (stopping alone drops them, now and then the last frame).
        factory.set_eos_shutdown(True)
        sink = f"filesink location={args.record}"
        factory.set_launch(f"( rtph264depay name=depay0 ! h264parse ! mpegtsmux ! {sink} )")
    else:
        factory.set_launch(launch_line(args))
        factory.set_shared(True)  # every client sees the same live picture, like a camera
    if args.user is not None:
        add_basic_auth(server, factory, args.user, args.password)
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on {args.host}:{args.port}", file=sys.stderr)
        return 1

    loop = GLib.MainLoop()
    GLib.timeout_add(int(args.duration * 1000), loop.quit)
    parent = os.getppid()

    def parent_alive() -> bool:
        if os.getppid() != parent:  # orphaned: the test run is gone
            loop.quit()
            return False
        return True

    GLib.timeout_add(500, parent_alive)
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, lambda *_: (loop.quit(), False)[1])
    print(f"READY rtsp://{args.host}:{args.port}{args.mount}", flush=True)
    loop.run()
    return 0


# -- used by the tests and the benchmark (any Python): start, stop and restart the server process --


def server_unavailable_reason() -> str | None:
    """Why the server cannot run here (missing system packages), or None when it can."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
        "missing = [e for e in ('videotestsrc', 'x264enc', 'rtph264pay') if not Gst.ElementFactory.find(e)];"
        "print(' '.join(missing))"
    )
    try:
        done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {SYSTEM_PYTHON}: {exc}"
    if done.returncode != 0:
        return ("GStreamer RTSP server bindings missing (python3-gi, python3-gst-1.0, "
                "gir1.2-gst-rtsp-server-1.0)")
    if done.stdout.strip():
        return f"GStreamer elements missing: {done.stdout.strip()} (gstreamer1.0-plugins-ugly/-good/-base)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RtspServerProcess:
    """The server as a subprocess: ``start()`` waits until it listens, ``stop()`` kills it (camera down)."""

    def __init__(self, port: int | None = None, user: str | None = None, password: str | None = None,
                 duration: float = 300.0, **options) -> None:
        self.port = port or free_port()
        self.user, self.password = user, password
        self.duration = duration
        self.options = options  # width, height, fps, keyint, pattern, mount, record
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f"{self.user}:{self.password}@" if self.user is not None else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}{self.options.get('mount', '/cam')}"

    def start(self, timeout: float = 20.0) -> RtspServerProcess:
        command = [SYSTEM_PYTHON, str(SCRIPT), "--port", str(self.port), "--duration", str(self.duration)]
        if self.user is not None:
            command += ["--user", self.user, "--password", self.password]
        for key, value in self.options.items():
            command += [f"--{key}", str(value)]
        deadline = time.monotonic() + timeout
        while True:
            # stderr to a file: GStreamer warnings must never fill a pipe nobody reads.
            self._stderr = tempfile.TemporaryFile(mode="w+")
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._stderr, text=True)
            line = self.process.stdout.readline()  # "READY ..." or EOF when it could not listen
            if line.startswith("READY"):
                return self
            self.process.wait(timeout=5)
            if time.monotonic() > deadline:
                self._stderr.seek(0)
                raise RuntimeError(f"RTSP server did not start: {self._stderr.read().strip()}")
            time.sleep(0.2)  # the port may still be held by the previous instance

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process is not None:
            self.process.stdout.close()
            self._stderr.close()
        self.process = None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but no data flows, a stalled camera."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> RtspServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
