"""The test kubelet's log server: container logs over HTTPS, as the API server asks for them.

``kubectl logs`` and ``read_namespaced_pod_log`` reach the kubelet through the API server at
``/containerLogs/<namespace>/<pod>/<container>`` (with ``follow``, ``previous``, ``tailLines``,
``limitBytes``); the API server authenticates with its client certificate (required), the
kubelet with its serving certificate. ``/healthz`` answers without one.
"""

from __future__ import annotations

import http.server
import logging
import ssl
import threading
import urllib.parse
from collections.abc import Callable

from kubelet_pods import ContainerRun

log = logging.getLogger("kubelet")

# (namespace, pod, container, previous) -> that container's run, or None
FindRun = Callable[[str, str, str, bool], "ContainerRun | None"]


def serve(port: int, tls_cert: str, tls_key: str, ca_file: str,
          find_run: FindRun) -> http.server.ThreadingHTTPServer:
    """Start the HTTPS log server on 127.0.0.1:``port`` in a thread; returns the server."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):
            log.debug("http: " + fmt, *args)

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/healthz":
                self.reply(200, b"ok")
                return
            if not self.connection.getpeercert():
                self.reply(401, b"client certificate required")
                return
            parts = url.path.strip("/").split("/")
            if len(parts) == 4 and parts[0] == "containerLogs":
                query = urllib.parse.parse_qs(url.query)
                previous = query.get("previous", ["false"])[0] == "true"
                run = find_run(parts[1], parts[2], parts[3], previous)
                if run is None:
                    self.reply(404, f"no logs for {'/'.join(parts[1:])}".encode())
                else:
                    _send_log(self, run, query)
            else:
                self.reply(404, b"not found")

        def reply(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_cert, tls_key)
    context.load_verify_locations(ca_file)
    context.verify_mode = ssl.CERT_OPTIONAL
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="logs", daemon=True).start()
    return server


def _send_log(handler: http.server.BaseHTTPRequestHandler, run: ContainerRun, query: dict) -> None:
    """The log so far (``tailLines``, ``limitBytes``), then with ``follow`` what the container
    writes until it ends."""
    data = run.log_path.read_bytes()
    position = len(data)
    if "tailLines" in query:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-int(query["tailLines"][0]):]) if lines else b""
    limit = int(query["limitBytes"][0]) if "limitBytes" in query else None
    handler.send_response(200)
    handler.send_header("Content-Type", "text/plain")
    handler.end_headers()
    sent = 0

    def send(chunk: bytes) -> bool:
        nonlocal sent
        if limit is not None:
            chunk = chunk[: limit - sent]
        handler.wfile.write(chunk)
        handler.wfile.flush()
        sent += len(chunk)
        return limit is None or sent < limit

    try:
        if not send(data) or query.get("follow", ["false"])[0] != "true":
            return
        with run.log_path.open("rb") as f:
            f.seek(position)
            while True:
                finished = run.done.is_set()  # read before, so no last line is missed
                chunk = f.read(65536)
                if chunk:
                    if not send(chunk):
                        return
                elif finished:
                    return
                else:
                    run.done.wait(0.2)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        return
