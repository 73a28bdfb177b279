"""A loopback HTTP server that answers AWS JSON-protocol calls (SageMaker) with scripted responses.

moto cannot produce throttling or an expired session token; this server can, at the HTTP level, so the real
botocore client (signing, retry handler, error parsing) runs exactly as against AWS. Each request takes the next
scripted ``(status, body)``; the last one repeats. Requests are recorded as ``(X-Amz-Target, headers)``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultServer:
    """``with FaultServer([(400, {"__type": "ThrottlingException", ...}), (200, {...})]) as server: server.url``."""

    def __init__(self, responses: list[tuple[int, dict]]):
        self.responses = list(responses)
        self.requests: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                index = min(len(outer.requests), len(outer.responses) - 1)
                outer.requests.append((self.headers.get("X-Amz-Target", ""), dict(self.headers)))
                status, body = outer.responses[index]
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
