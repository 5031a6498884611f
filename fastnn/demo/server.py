"""The demo's HTTP server: the page, its files and a small JSON API.

The standard library's ThreadingHTTPServer (one thread per connection) is
all a local demo needs: a request costs a few milliseconds and a handful of
tabs at most share it. Routes:

    GET  /                    the page (and /demo.css, /demo.js)
    GET  /api/model           the network: sizes, classes, how hidden units are shown
    POST /api/predict         {"image": data URL} or {"pixels": [784]} -> prediction
    GET  /api/sample[?index=N] a (random) test-set digit with its true label -> prediction
    GET  /api/weights/N.png   hidden unit N's first-layer weights as a 28x28 picture

A bad request gets a 4xx with {"error": "..."}; no request can stop the server.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from fastnn.demo.decode import BadRequest, request_pixels

# A 280x280 canvas PNG is 5-30 KB as a data URL; a 1024x1024 photo as JPEG
# fits too. Bigger bodies are refused before they are read.
MAX_BODY = 2 * 1024 * 1024
IDLE_SECONDS = 30  # a keep-alive connection idle this long is closed (frees its thread)

STATIC = {"/": "index.html", "/demo.css": "demo.css", "/demo.js": "demo.js"}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".js": "text/javascript; charset=utf-8"}
WEIGHTS = re.compile(r"/api/weights/(\d{1,6})\.png")
ROUTES = {"/api/model": "GET", "/api/sample": "GET", "/api/predict": "POST"}


class PageFilesMissing(OSError):
    """The page's files are not in the installed package."""


def load_static():
    """{path: (bytes, content type)}: the page's files, read once from the package."""
    files = {}
    folder = resources.files("fastnn.demo") / "static"
    for path, name in STATIC.items():
        try:
            body = (folder / name).read_bytes()
        except OSError:
            raise PageFilesMissing(f"the demo's page file static/{name} is missing from the "
                                   "installed fastnn package; reinstall it "
                                   "(python -m pip install .)") from None
        files[path] = (body, CONTENT_TYPES[name[name.rindex("."):]])
    return files


class DemoServer(ThreadingHTTPServer):
    """The server, listening on ``address`` = (host, port); port 0 lets the OS choose."""

    daemon_threads = True  # Ctrl-C does not wait for open keep-alive connections

    def __init__(self, address, engine):
        self.engine = engine
        self.static = load_static()
        # an IPv6 host (--host ::1) needs an IPv6 socket; the class default is IPv4
        self.address_family = socket.getaddrinfo(*address, type=socket.SOCK_STREAM)[0][0]
        super().__init__(address, Handler)

    def handle_error(self, request, client_address):
        # A client that hangs up mid-response is normal; anything else is a bug
        # in a handler: report it, keep serving.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            traceback.print_exc()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a tab reuses one connection while drawing
    timeout = IDLE_SECONDS
    # TCP_NODELAY: with Nagle's algorithm a small answer waits for the client's
    # delayed ACK, 40 ms on Linux, twice the whole round trip's budget
    disable_nagle_algorithm = True
    server_version = "fastnn-demo"

    def log_message(self, format, *args):
        pass  # one line per request would bury the address the command printed

    # -- routing

    def do_GET(self):
        self._body_read = False
        url = urlsplit(self.path)
        if url.path in self.server.static:
            body, kind = self.server.static[url.path]
            return self._send(200, body, kind, {"Cache-Control": "no-cache"})
        self._api("GET", url, lambda: self._get(url))

    def do_POST(self):
        self._body_read = False
        url = urlsplit(self.path)
        self._api("POST", url, lambda: self.server.engine.predict(request_pixels(self._body())))

    def _get(self, url):
        engine = self.server.engine
        if url.path == "/api/model":
            return engine.info()
        if url.path == "/api/sample":
            return engine.sample(_index(url.query))
        return engine.weights_png(int(WEIGHTS.fullmatch(url.path).group(1)))

    def _api(self, method, url, answer):
        """Check the path and method, then answer() -> a JSON-able dict, or PNG bytes."""
        allowed = ROUTES.get(url.path) or ("GET" if WEIGHTS.fullmatch(url.path) else None)
        if allowed is None:
            return self._error(404, f"no such page: {url.path}; the page is at /, the API at "
                                    "/api/predict, /api/sample, /api/model")
        if method != allowed:
            return self._error(405, f"{method} is not allowed on {url.path}: use {allowed}",
                               {"Allow": allowed})
        try:
            result = answer()
        except BadRequest as e:
            return self._error(e.status, str(e))
        except Exception as e:  # noqa: BLE001  a bug: say so, keep serving
            traceback.print_exc()
            return self._error(500, f"internal error: {type(e).__name__}: {e}")
        if isinstance(result, bytes):
            # the page asks for weights with the model's token in the URL: safe to cache
            return self._send(200, result, "image/png", {"Cache-Control": "max-age=86400"})
        self._send(200, json.dumps(result).encode(), "application/json")

    def _length(self):
        """The declared body length, or BadRequest (411, 400, 413)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise BadRequest(411, "send the body with a Content-Length (no chunked encoding)")
        text = self.headers.get("Content-Length")
        if text is None:
            raise BadRequest(411, "a POST needs a Content-Length header")
        if not text.strip().isdigit():
            raise BadRequest(400, f"bad Content-Length {text!r}")
        if int(text) > MAX_BODY:
            raise BadRequest(413, f"the body is {int(text):,} bytes; at most {MAX_BODY:,} "
                                  "are accepted")
        return int(text)

    def _body(self):
        length = self._length()
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise BadRequest(400, f"the body ended after {len(body)} of {length} bytes")
        self._body_read = True
        return body

    def _unread_body(self):
        """Did this request come with a body that was not read?"""
        if getattr(self, "_body_read", True) or getattr(self, "headers", None) is None:
            return False
        return ("Transfer-Encoding" in self.headers
                or self.headers.get("Content-Length", "0").strip() not in ("", "0"))

    def handle_expect_100(self):
        # A client that waits for "100 Continue" before a big body learns at
        # once that it is too big, instead of after sending it.
        if self.command == "POST":
            try:
                self._length()
            except BadRequest as e:
                self._body_read = False
                self._error(e.status, str(e))
                return False
        return super().handle_expect_100()

    def send_error(self, code, message=None, explain=None):
        # The standard library's own refusals (unknown method, malformed request
        # line, oversized headers), in JSON like ours. Its 501 for a method no
        # route has is a 405 here.
        if code == HTTPStatus.NOT_IMPLEMENTED:
            code, message = 405, f"{self.command} is not allowed: use GET or POST"
        if self.request_version == "HTTP/0.9":
            # what it assumes of a garbled request line: an answer without status
            # line or headers, which no client today reads as an error
            self.request_version = "HTTP/1.0"
        self.close_connection = True
        self._error(code, message or HTTPStatus(code).phrase, {"Connection": "close"})

    def _error(self, status, message, headers=None):
        self._send(status, json.dumps({"error": message}).encode(), "application/json",
                   headers)

    def _send(self, status, body, kind, headers=None):
        if self._unread_body():
            # what is left of the body would be read as the next request
            self.close_connection = True
            headers = dict(headers or {}, Connection="close")
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy",
                         "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _index(query):
    """?index=N -> N (an int), or None for a random one."""
    values = parse_qs(query).get("index")
    if not values:
        return None
    try:
        return int(values[0])
    except ValueError:
        raise BadRequest(400, f"index must be an integer, got {values[0]!r}") from None
