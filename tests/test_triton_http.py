"""The HTTP/1.1 connection under segment.triton.protocol: http, against a real socket server
that answers the way HTTP servers may (chunked bodies, a kept-alive connection closed
between calls, an answer later than the timeout). Triton's own answers are covered by
tests/test_triton.py against the real tritonserver."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest

pytest.importorskip("tritonclient.utils")

from tritonclient.utils import InferenceServerException  # noqa: E402

from orstream.engines.backends.triton_http import HttpClient  # noqa: E402

Answer = Callable[[socket.socket], bool]  # writes one response; False: close the connection


def _read_request(conn: socket.socket, buffer: bytearray) -> bool:
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    length = 0
    for line in bytes(buffer[:end]).decode().split("\r\n"):
        if line.lower().startswith("content-length:"):
            length = int(line.split(":")[1])
    while len(buffer) < end + length:
        buffer += conn.recv(65536)
    del buffer[:end + length]
    return True


class ScriptedServer:
    """Answers the n-th request with answers[n]; counts the connections it accepted."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = list(answers)
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.answers:
            conn, _ = self.listener.accept()
            self.connections += 1
            buffer = bytearray()
            with conn:
                while self.answers and _read_request(conn, buffer):
                    if not self.answers.pop(0)(conn):
                        break

    def close(self) -> None:
        self.listener.close()


def plain(body: bytes, status: str = "200 OK") -> Answer:
    def answer(conn: socket.socket) -> bool:
        conn.sendall(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        return True
    return answer


def chunked(*parts: bytes) -> Answer:
    def answer(conn: socket.socket) -> bool:
        body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        return True
    return answer


def then_close(inner: Answer) -> Answer:
    """Answers, then closes the kept-alive connection without saying so (an idle timeout)."""
    def answer(conn: socket.socket) -> bool:
        inner(conn)
        return False
    return answer


def late(seconds: float, inner: Answer) -> Answer:
    def answer(conn: socket.socket) -> bool:
        time.sleep(seconds)
        return inner(conn)
    return answer


def test_chunked_and_plain_answers_are_read_whole_on_one_connection():
    server = ScriptedServer([chunked(b'[{"name":', b'"m","state":"READY"}]'),
                             plain(b'{"name":"m"}')])
    client = HttpClient(server.url, timeout_s=2)
    try:
        assert client.get_model_repository_index() == {"models": [{"name": "m",
                                                                   "state": "READY"}]}
        assert client.get_model_config("m") == {"config": {"name": "m"}}
        assert server.connections == 1  # kept alive
    finally:
        client.close()
        server.close()


def test_a_kept_alive_connection_the_server_closed_is_reopened_not_an_outage():
    server = ScriptedServer([then_close(plain(b"")), plain(b"")])
    client = HttpClient(server.url, timeout_s=2)
    try:
        assert client.is_server_live()
        time.sleep(0.05)  # the server has closed its side by now
        assert client.is_server_live()  # sent again on a new connection, no error
        assert server.connections == 2
    finally:
        client.close()
        server.close()


def test_a_late_answer_is_a_timeout_and_never_read_as_the_next_calls():
    server = ScriptedServer([late(0.5, plain(b'{"name":"old"}')), plain(b'{"name":"new"}')])
    client = HttpClient(server.url, timeout_s=0.2)
    try:
        with pytest.raises(InferenceServerException) as timeout:
            client.get_model_config("m")
        assert timeout.value.status() == "DEADLINE_EXCEEDED"
        assert "within 0.2 s" in timeout.value.message()
        time.sleep(0.5)  # the late answer has been written to the closed connection
        assert client.get_model_config("m", client_timeout=2) == {"config": {"name": "new"}}
    finally:
        client.close()
        server.close()


def test_tritons_error_body_is_the_message_and_a_dead_port_is_unavailable():
    server = ScriptedServer([plain(b'{"error":"Request for unknown model: \'x\'"}',
                                   "404 Not Found")])
    client = HttpClient(server.url, timeout_s=2)
    try:
        with pytest.raises(InferenceServerException) as missing:
            client.get_model_config("x")
        assert (missing.value.status(), missing.value.message()) == (
            "404", "Request for unknown model: 'x'")
    finally:
        client.close()
        server.close()
    nobody = HttpClient(server.url, timeout_s=2)  # its listener is closed now
    with pytest.raises(InferenceServerException) as down:
        nobody.is_server_live()
    assert down.value.status() == "UNAVAILABLE"
    assert server.url in down.value.message()
