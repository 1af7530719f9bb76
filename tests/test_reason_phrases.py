"""
Every status line the proxy sends carries the standard reason phrase, read through real
sockets: its own errors (tests/test_connection_budgets.py checks 400, 422 and 429), a
backend's answer that came with an empty phrase (HTTP allows it; the proxy fills in the
standard one), and the side listeners' answers.
"""

from __future__ import annotations

import http.client
import socket
import threading

import pytest

from mediaproxy.testing import start_proxy


class BarePhraseBackend:
    """Answers ``GET /<code>`` with the status line ``HTTP/1.1 <code> `` (no phrase): a raw
    socket, because every HTTP server library fills the phrase in."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                code = head.split(b" ")[1].strip(b"/") if head else b"500"
                conn.sendall(b"HTTP/1.1 " + code + b" \r\nContent-Length: 2\r\n"
                             b"Connection: close\r\n\r\nok")

    def close(self):
        self.sock.close()


def status_line(port: int, path: str, headers=None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status, response.reason
    finally:
        conn.close()


@pytest.mark.parametrize("code, reason", [
    (429, "Too Many Requests"), (422, "Unprocessable Entity"), (503, "Service Unavailable"),
    (404, "Not Found"),
])
def test_a_backend_status_without_a_phrase_goes_out_with_the_standard_one(code, reason):
    backend = BarePhraseBackend()
    try:
        with start_proxy(backend_port=backend.port, overrides={"backend": {"retries": 0}}) \
                as proxy:
            assert status_line(proxy.port, f"/{code}") == (code, reason)
    finally:
        backend.close()


def test_the_admin_listener_answers_with_reason_phrases():
    overrides = {"admin": {"token": "s3cret", "listen": "tcp:0:interface=127.0.0.1"}}
    with start_proxy(files={}, overrides=overrides) as proxy:
        svc = next(s for s in proxy.services if getattr(s, "what", "") == "admin")
        port = svc.port.getHost().port
        assert status_line(port, "/admin/stats") == (401, "Unauthorized")
        assert status_line(port, "/admin/nothing-here",
                           {"Authorization": "Bearer s3cret"}) == (404, "Not Found")
