"""A local RTSP server for the live-source tests and the latency benchmark.

Run with the system Python, which has GStreamer's bindings (Debian: python3-gi, python3-gst-1.0,
gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-ugly for x264enc):

    /usr/bin/python3 tests/rtsp_server.py --port 8554 [--user U --password P] [--duration 120]

It serves a generated, endlessly moving test picture as H.264 at rtsp://127.0.0.1:PORT/MOUNT, prints
``READY <url without credentials>`` once listening, and stops by itself after ``--duration`` seconds, on
SIGTERM/SIGINT, or when its parent process goes away. It binds loopback addresses only. Killing it is how
the tests take a camera "down"; starting it again on the same port brings the camera "back".
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402 - versions must be required first


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


def add_basic_auth(server: GstRtspServer.RTSPServer, factory: GstRtspServer.RTSPMediaFactory,
                   user: str, password: str) -> None:
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
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
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


if __name__ == "__main__":
    sys.exit(main())
