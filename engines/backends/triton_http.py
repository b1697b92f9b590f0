"""Triton's KServe v2 REST endpoint on one kept-alive HTTP/1.1 connection
(`segment.triton.protocol: http`).

Why a second protocol beside gRPC: where the room and the server share a host, the frame and
its labels travel through system shared memory and the call carries only a few hundred bytes
naming the two regions. What is left of a frame's overhead is then the call itself, and gRPC's
(HTTP/2 framing, its completion queues, the server's gRPC frontend) costs more than a
prebuilt HTTP/1.1 request written to a socket: measured alternating both on one server in
one process (2-core EPYC), 0.66 ms less per frame back to back and 0.85 ms less after 33 ms
idle (http.client instead of this connection: 0.15-0.38 ms less; its header parsing is the
difference).

`HttpClient` offers the calls of tritonclient.grpc's client that TritonEngine and
check_served make, with the same names and results, and raises tritonclient's
InferenceServerException, so the engine's outage handling is the same for both protocols.
Triton's HTTP endpoint has no TLS: across a network use gRPC with TLS (the config refuses
protocol http with tls).
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import numpy as np

HEADER_END = b"\r\n\r\n"
MAX_HEADER_BYTES = 64 * 1024  # a response whose header is larger is not Triton's


def _error(message: str, status: str) -> Exception:
    from tritonclient.utils import InferenceServerException

    return InferenceServerException(msg=message, status=status)


@dataclass(frozen=True)
class InferRequest:
    """A frame's request, built once: the whole message with shared memory (it names the same
    two regions every frame), else the part before the frame's bytes."""

    message: bytes
    with_pixels: bool
    labels_shape: tuple[int, int]


class _Connection:
    """One kept-alive HTTP/1.1 connection, opened on first use and after any failure.

    A call that times out or breaks closes it: a late answer must never be read as the
    next call's."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._sock: socket.socket | None = None
        self._buffer = bytearray()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer.clear()

    def exchange(self, parts: list[bytes | memoryview], timeout: float
                 ) -> tuple[int, dict[str, str], bytes]:
        """Send `parts` (one request), read its response: (status, headers, body)."""
        try:
            reused = self._sock is not None
            try:
                return self._send(self._open(timeout), parts, timeout)
            except ConnectionError:
                # Nothing of an answer came (the buffer holds only this call's bytes) on a
                # kept-alive connection: the server had closed it meanwhile. What HTTP clients
                # do is send again on a new one (a frame's call is idempotent: same regions,
                # same labels), not count an outage of a server that is up.
                if not reused or self._buffer:
                    raise
                self.close()
                return self._send(self._open(timeout), parts, timeout)
        except TimeoutError:
            self.close()
            raise _error(f"no answer from {self.host}:{self.port} within {timeout:g} s",
                         "DEADLINE_EXCEEDED") from None
        except (OSError, ValueError) as exc:
            self.close()
            raise _error(f"{self.host}:{self.port}: {exc}", "UNAVAILABLE") from None

    def _send(self, sock: socket.socket, parts: list[bytes | memoryview], timeout: float
              ) -> tuple[int, dict[str, str], bytes]:
        sock.settimeout(timeout)
        for part in parts:  # the request, then a frame's bytes over the socket
            sock.sendall(part)
        return self._response(sock)

    def _open(self, timeout: float) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=timeout)
            # Each call is one small write answered by one small read: Nagle would hold it.
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._sock

    def _fill(self, sock: socket.socket) -> None:
        chunk = sock.recv(256 * 1024)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self._buffer += chunk

    def _response(self, sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
        buffer = self._buffer
        while (end := buffer.find(HEADER_END)) < 0:
            if len(buffer) > MAX_HEADER_BYTES:
                raise ValueError("an HTTP response header over 64 KiB")
            self._fill(sock)
        lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
        del buffer[:end + len(HEADER_END)]
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise ValueError(f"not an HTTP/1.1 response: {lines[0][:80]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._chunked(sock)
        else:
            length = int(headers.get("content-length", "0"))
            while len(buffer) < length:
                self._fill(sock)
            body = bytes(buffer[:length])
            del buffer[:length]
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(rest[:3]), headers, body

    def _chunked(self, sock: socket.socket) -> bytes:
        buffer, body = self._buffer, bytearray()
        while True:
            while (end := buffer.find(b"\r\n")) < 0:
                self._fill(sock)
            size = int(bytes(buffer[:end]).split(b";")[0], 16)
            del buffer[:end + 2]
            while len(buffer) < size + 2:
                self._fill(sock)
            body += buffer[:size]
            del buffer[:size + 2]
            if size == 0:
                return bytes(body)


class HttpClient:
    """The subset of tritonclient.grpc.InferenceServerClient that orstream calls, over
    Triton's REST endpoint at `url` (HOST:PORT of its HTTP port)."""

    def __init__(self, url: str, timeout_s: float = 1.0) -> None:
        host, _, port = url.rpartition(":")
        self.url = url
        self.timeout_s = timeout_s
        self._host = host.strip("[]")
        self._connection = _Connection(self._host, int(port))

    # ------------------------------------------------------------------ control calls
    def _call(self, method: str, path: str, body: bytes = b"",
              client_timeout: float | None = None) -> tuple[int, bytes]:
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.url}\r\n"
                f"Content-Length: {len(body)}\r\n")
        if body:
            head += "Content-Type: application/json\r\n"
        status, _, data = self._connection.exchange(
            [(head + "\r\n").encode("latin-1") + body], client_timeout or self.timeout_s)
        return status, data

    def _json(self, method: str, path: str, body: Any = None,
              client_timeout: float | None = None) -> Any:
        payload = json.dumps(body).encode() if body is not None else b""
        status, data = self._call(method, path, payload, client_timeout)
        if status != 200:
            raise _error(_message(data, status), str(status))
        return json.loads(data) if data else None

    @staticmethod
    def _model_path(model: str, version: str) -> str:
        path = f"/v2/models/{quote(model, safe='')}"
        return path + (f"/versions/{quote(version, safe='')}" if version else "")

    def is_server_live(self, client_timeout: float | None = None) -> bool:
        return self._call("GET", "/v2/health/live", client_timeout=client_timeout)[0] == 200

    def is_server_ready(self, client_timeout: float | None = None) -> bool:
        return self._call("GET", "/v2/health/ready", client_timeout=client_timeout)[0] == 200

    def is_model_ready(self, model_name: str, model_version: str = "",
                       client_timeout: float | None = None) -> bool:
        path = self._model_path(model_name, model_version) + "/ready"
        return self._call("GET", path, client_timeout=client_timeout)[0] == 200

    def get_model_repository_index(self, as_json: bool = True,
                                   client_timeout: float | None = None) -> dict:
        """{"models": [...]}, as the gRPC client's as_json gives it."""
        return {"models": self._json("POST", "/v2/repository/index", {}, client_timeout)}

    def get_model_config(self, model_name: str, model_version: str = "", as_json: bool = True,
                         client_timeout: float | None = None) -> dict:
        """{"config": {...}}, as the gRPC client's as_json gives it."""
        path = self._model_path(model_name, model_version) + "/config"
        return {"config": self._json("GET", path, client_timeout=client_timeout)}

    def register_system_shared_memory(self, name: str, key: str, byte_size: int,
                                      offset: int = 0,
                                      client_timeout: float | None = None) -> None:
        self._json("POST", f"/v2/systemsharedmemory/region/{quote(name, safe='')}/register",
                   {"key": key, "offset": offset, "byte_size": byte_size}, client_timeout)

    def unregister_system_shared_memory(self, name: str = "",
                                        client_timeout: float | None = None) -> None:
        where = f"/region/{quote(name, safe='')}" if name else ""
        self._json("POST", f"/v2/systemsharedmemory{where}/unregister", {}, client_timeout)

    def close(self) -> None:
        self._connection.close()

    # ------------------------------------------------------------------ the frame path
    def infer_request(self, model: str, version: str, size: tuple[int, int],
                      regions: tuple[str, int, str, int] | None) -> InferRequest:
        """A frame's request, built once. `regions`: (input region, its bytes, output region,
        its bytes) for shared memory; None: the frame's bytes follow the JSON (Triton's
        binary data extension) and the labels come back the same way."""
        h, w = size
        frames: dict[str, Any] = {"name": "frames", "shape": [1, h, w, 3], "datatype": "UINT8"}
        labels: dict[str, Any] = {"name": "labels"}
        if regions is None:
            frames["parameters"] = {"binary_data_size": h * w * 3}
            labels["parameters"] = {"binary_data": True}
        else:
            in_name, in_bytes, out_name, out_bytes = regions
            frames["parameters"] = {"shared_memory_region": in_name,
                                    "shared_memory_byte_size": in_bytes}
            labels["parameters"] = {"shared_memory_region": out_name,
                                    "shared_memory_byte_size": out_bytes}
        header = json.dumps({"inputs": [frames], "outputs": [labels]},
                            separators=(",", ":")).encode()
        path = self._model_path(model, version) + "/infer"
        head = f"POST {path} HTTP/1.1\r\nHost: {self.url}\r\n"
        if regions is None:
            head += (f"Content-Type: application/octet-stream\r\n"
                     f"Inference-Header-Content-Length: {len(header)}\r\n"
                     f"Content-Length: {len(header) + h * w * 3}\r\n\r\n")
        else:
            head += (f"Content-Type: application/json\r\n"
                     f"Content-Length: {len(header)}\r\n\r\n")
        return InferRequest(head.encode("latin-1") + header, regions is None, (h, w))

    def infer(self, request: InferRequest, pixels: np.ndarray | None,
              timeout_s: float) -> tuple[str, np.ndarray | None]:
        """One frame: (the model version that answered, its (H, W) labels unless they went
        to the shared region)."""
        parts = [request.message]
        if request.with_pixels:
            parts.append(memoryview(np.ascontiguousarray(pixels)).cast("B"))
        status, headers, body = self._connection.exchange(parts, timeout_s)
        if status != 200:
            raise _error(_message(body, status), str(status))
        split = int(headers.get("inference-header-content-length", len(body)))
        try:
            answer = json.loads(body[:split])
        except ValueError:
            raise _error(f"an infer response that is not JSON: {body[:80]!r}",
                         "INTERNAL") from None
        version = str(answer.get("model_version", ""))
        if not request.with_pixels:
            return version, None
        return version, _labels(answer, body[split:], request.labels_shape)


def _labels(answer: dict, data: bytes, shape: tuple[int, int]) -> np.ndarray:
    from orstream.engines.backends.triton_backend import WrongModel

    h, w = shape
    for tensor in answer.get("outputs", []):
        if (tensor.get("name") == "labels" and tensor.get("datatype") == "UINT8"
                and list(tensor.get("shape", [])) == [1, h, w] and len(data) == h * w):
            return np.frombuffer(data, np.uint8).reshape(h, w)
    raise WrongModel(f"Triton's response has no uint8 'labels' of 1x{h}x{w}")


def _message(data: bytes, status: int) -> str:
    """The error Triton put in a failed call's body ({"error": ...}), else the body itself."""
    try:
        return str(json.loads(data)["error"])
    except (ValueError, KeyError, TypeError):
        return data.decode("utf-8", "replace")[:200] or f"HTTP {status}"


__all__ = ["HttpClient", "InferRequest"]
