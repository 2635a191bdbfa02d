"""A fault-injecting HTTP proxy in front of the GCS emulator, scripted per test (#22).

The client (``STORAGE_EMULATOR_HOST`` = the proxy's URL) sends every request here; the proxy
forwards it to fake-gcs-server, or answers it with the fault a rule picks:

    status     an HTTP error (503, 429, ...), with or without ``Retry-After``
    reset      the connection reset (RST) before any answer; ``after=True``: after the
               emulator handled the request (the write happened, the client never hears of it)
    stall      no answer for ``seconds`` (longer than the client's timeout), then a close
    truncate   the emulator's answer with its full Content-Length, but only half the body
    gone       404 "bucket does not exist" for every request naming the bucket (it was deleted)

Rules are matched in order (``method``, a regex on the path, a bucket, a substring of the
body: a multipart upload names its object there); each fires ``times``
times, or on a seeded ``rate`` of the matching requests, or always. Links the emulator writes
into its answers (``mediaLink``, resumable-upload ``Location``) are rewritten to the proxy, so
no request goes around it. ``injected`` counts the faults by kind, ``requests`` every request.

    with FaultProxy(emulator_url) as proxy:
        proxy.add(Fault("status", status=503), rate=0.2, seed=1)
        ... STORAGE_EMULATOR_HOST=proxy.url ...
"""

from __future__ import annotations

import collections
import http.client
import http.server
import json
import random
import re
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}


@dataclass(frozen=True)
class Fault:
    kind: str  # status, reset, stall, truncate, gone
    status: int = 503
    retry_after: float | None = None
    seconds: float = 0.0  # stall
    after: bool = False  # reset: after forwarding


@dataclass
class Rule:
    fault: Fault
    method: str | None = None
    path: re.Pattern | None = None
    bucket: str | None = None
    body: bytes | None = None  # a substring of the request body (an upload's object name)
    times: int | None = None  # None: no count limit
    rate: float | None = None  # None: every matching request
    rng: random.Random = field(default_factory=random.Random)

    def matches(self, method: str, path: str, body: bytes = b"") -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method and method != self.method:
            return False
        if self.path is not None and not self.path.search(path):
            return False
        if self.bucket is not None and not _names_bucket(path, self.bucket):
            return False
        if self.body is not None and self.body not in body:
            return False
        return self.rate is None or self.rng.random() < self.rate


def _names_bucket(path: str, bucket: str) -> bool:
    unquoted = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
    return f"/b/{bucket}/" in unquoted + "/" or unquoted.startswith(f"/{bucket}/")


class FaultProxy:
    def __init__(self, upstream: str):
        parts = urllib.parse.urlsplit(upstream)
        self.upstream = upstream.rstrip("/")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.rules: list[Rule] = []
        self.injected: collections.Counter = collections.Counter()
        self.requests = 0
        self.lock = threading.Lock()
        self.server: http.server.ThreadingHTTPServer | None = None
        self.url = ""

    # -- scripting -----------------------------------------------------------------------

    def add(self, fault: Fault, *, method: str | None = None, path: str | None = None,
            bucket: str | None = None, body: bytes | None = None, times: int | None = None,
            rate: float | None = None, seed: int = 0) -> Rule:
        rule = Rule(fault, method, re.compile(path) if path else None, bucket, body, times, rate,
                    random.Random(seed))
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def _pick(self, method: str, path: str, body: bytes) -> Fault | None:
        with self.lock:
            self.requests += 1
            for rule in self.rules:
                if rule.matches(method, path, body):
                    if rule.times is not None:
                        rule.times -= 1
                    self.injected[rule.fault.kind] += 1
                    return rule.fault
        return None

    # -- serving -------------------------------------------------------------------------

    def start(self) -> str:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def do_GET(self):
                self._handle()

            do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._pick(self.command, self.path, body)
                if fault is None or fault.kind == "truncate" or (fault.kind == "reset" and fault.after):
                    status, headers, data = proxy._forward(self.command, self.path, self.headers, body)
                if fault is None:
                    self._answer(status, headers, data)
                elif fault.kind == "status":
                    extra = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
                    self._answer(fault.status, extra, _error(fault.status, "injected by the fault proxy"))
                elif fault.kind == "gone":
                    self._answer(404, {}, _error(404, "The specified bucket does not exist."))
                elif fault.kind == "reset":
                    self._reset()
                elif fault.kind == "stall":
                    time.sleep(fault.seconds)
                    self.close_connection = True
                elif fault.kind == "truncate":
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self._reset()
                else:
                    raise ValueError(f"unknown fault {fault.kind!r}")

            def _answer(self, status: int, headers: dict, data: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a reset we made, or the client's
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True).start()
        return self.url

    def _forward(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=120)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in HOP_HEADERS | {"host"}}
            sent["Host"] = f"{self.upstream_host}:{self.upstream_port}"
            if body or method in ("POST", "PUT", "PATCH"):
                sent["Content-Length"] = str(len(body))
            conn.request(method, path, body=body, headers=sent)
            resp = conn.getresponse()
            data = resp.read()
            out = {k: v.replace(self.upstream, self.url) for k, v in resp.getheaders()
                   if k.lower() not in HOP_HEADERS}
            return resp.status, out, data.replace(self.upstream.encode(), self.url.encode())
        finally:
            conn.close()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self) -> FaultProxy:  # noqa: PYI034 (py3.10 target: no typing.Self)
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _error(status: int, message: str) -> bytes:
    return json.dumps({"error": {"code": status, "message": message,
                                 "errors": [{"message": message, "reason": "injected"}]}}).encode()
