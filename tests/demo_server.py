"""Helpers for the demo's tests: a server in a thread or a process, canvas-like PNGs,
HTTP calls."""

import base64
import contextlib
import http.client
import io
import json
import re
import signal
import socket
import subprocess
import sys
import threading

import helpers
from PIL import Image, ImageDraw

from fastnn.demo.server import DemoServer

SEVEN = [[(70, 50), (210, 50), (120, 250)]]  # a "7" on a 280x280 pad, one stroke
ONE = [[(140, 30), (140, 250)]]


@contextlib.contextmanager
def running(engine):
    """A demo server on 127.0.0.1, an OS-chosen port, in a thread: yields (host, port)."""
    server = DemoServer(("127.0.0.1", 0), engine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[:2]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def canvas_png(strokes, size=280, width=22):
    """PNG bytes like the page's pad: white strokes (round ends) on opaque black RGBA."""
    img = Image.new("RGBA", (size, size), (0, 0, 0, 255))
    draw = ImageDraw.Draw(img)
    for points in strokes:
        draw.line(points, fill=(255, 255, 255, 255), width=width, joint="curve")
        for x, y in (points[0], points[-1]):
            r = width / 2
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def data_url(data, kind="image/png"):
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def request(address, method, path, body=None, headers=None, conn=None):
    """(status, headers, decoded JSON or raw bytes); body: dict (sent as JSON) or bytes."""
    own = conn is None
    conn = conn or http.client.HTTPConnection(*address, timeout=30)
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        kind = r.getheader("Content-Type", "")
        return r.status, r, json.loads(data) if kind == "application/json" else data
    finally:
        if own:
            conn.close()


def raw(address, data: bytes) -> bytes:
    """Send raw bytes on a fresh connection and hang up; return all the server answers."""
    with socket.create_connection(address, timeout=30) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # a short body ends here instead of keeping it waiting
        return b"".join(iter(lambda: s.recv(65536), b""))


def demo(*args, **kwargs):
    """`python -m fastnn.demo --no-browser ARGS` in a process, its output piped."""
    return subprocess.Popen([sys.executable, "-m", "fastnn.demo", "--no-browser", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=helpers.ctrl_c_reaches_it, **kwargs)


def address_of(proc):
    """Read the command's output up to its "Ctrl-C stops it" line; ((host, port), lines)."""
    lines, address = [], None
    for line in proc.stdout:
        lines.append(line)
        match = re.search(r"serving http://127\.0\.0\.1:(\d+)/", line)
        if match:
            address = ("127.0.0.1", int(match.group(1)))
        if "Ctrl-C stops it" in line and address:
            return address, lines
    raise AssertionError(f"no address printed: {''.join(lines)}{proc.stderr.read()}")


def stop(proc):
    """Ctrl-C, as a user would: (exit code, the rest of stdout, stderr). A server that
    ignores it is killed (the test fails on the timeout) rather than left running."""
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, out, err
