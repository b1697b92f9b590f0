"""Segmentation on a Triton Inference Server: the engine a pipeline gets with
`segment.backend: triton` (one model server for many operating rooms).

It is not in the local registry (engines/backends/__init__.py): nothing is built or cached
here, the server holds the model (exported by engines/triton_repo.py). Over gRPC
(tritonclient) or Triton's HTTP/REST endpoint (engines/backends/triton_http.py: a lighter call
where only region names travel); where client and server share the host, frames and labels
travel through Triton system shared memory instead of the socket: the resized frame is written
straight into the region the server reads.

A server that dies or hangs must cost frames, never the pipeline: a failed request marks the
server down (logged once), and until a background thread finds it ready again (probing with
backoff, re-registering the shared memory a restarted server forgot), `infer` raises
TritonOffline at once, without touching the network, and the stage passes the frame on
unlabelled. Measured in the spike: gRPC's own reconnect backoff (1 s, growing to 120 s)
delayed the first good frame after a restart by up to 2.1 s; capped, 0.05 s.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from orstream.engines.backends.base import BackendError, import_backend
from orstream.engines.triton_repo import weights_version

SHM_PREFIX = "orstream-triton-"  # this client's regions: /dev/shm/orstream-triton-<pid>-...


class TritonUnreachable(BackendError):
    """Nothing answers at the url: expected while a server restarts."""


class WrongModel(Exception):
    """A response computed by other weights than the room's: never used."""


class TritonOffline(Exception):
    """The server cannot take this frame now (down, hung, restarting): drop its labels."""


@dataclass(frozen=True)
class TritonTarget:
    """Which server and model a pipeline segments with (the config's segment.triton)."""

    url: str = "127.0.0.1:8001"  # host:port of the endpoint `protocol` names
    model: str = "orstream_unet"
    version: str = ""  # "": the server's choice (its newest ready version)
    timeout_s: float = 1.0  # one request; past it the server counts as down
    shared_memory: bool = True  # system shm for frames and labels (same host only)
    reconnect_min_s: float = 0.1
    reconnect_max_s: float = 0.5
    tls: bool = False
    root_certificates: Path | None = None
    protocol: str = "grpc"  # grpc | http (KServe v2 REST)


def _client_module() -> Any:
    return import_backend("tritonclient.grpc", "triton",
                          "onnxruntime or openvino locally (pip install 'tritonclient[grpc]' "
                          "for triton)")


def _connect(target: TritonTarget) -> Any:
    if target.protocol == "http":
        from orstream.engines.backends.triton_http import HttpClient

        _client_module()  # tritonclient: its errors and shared-memory helpers
        return HttpClient(target.url, target.timeout_s)
    grpc = _client_module()
    backoff_ms = int(target.reconnect_min_s * 1000)
    # gRPC's defaults wait 1 s, then up to 120 s, between reconnect attempts: a restarted
    # server would idle that long before the room's next frame reaches it.
    channel_args = [("grpc.initial_reconnect_backoff_ms", backoff_ms),
                    ("grpc.min_reconnect_backoff_ms", backoff_ms),
                    ("grpc.max_reconnect_backoff_ms", int(target.reconnect_max_s * 1000)),
                    # A failed call is a dropped frame and an outage (TritonEngine), never a
                    # retry: without gRPC's retry machinery every call is 0.3 ms shorter.
                    ("grpc.enable_retries", 0)]
    if target.shared_memory:
        # Calls of a few hundred bytes (the pixels are in shared memory): no flow-control
        # window to size, and the probe's pings cost each call another 0.2 ms. Over the
        # socket (245 KB a frame) the probe stays: it sizes the window for the frames.
        channel_args.append(("grpc.http2.bdp_probe", 0))
    certificates = str(target.root_certificates) if target.root_certificates else None
    return grpc.InferenceServerClient(target.url, ssl=target.tls,
                                      root_certificates=certificates,
                                      channel_args=channel_args)


@dataclass(frozen=True)
class ServedModel:
    """What the server says of the model: its input size and the checkpoint it came from."""

    size: tuple[int, int]
    weights_sha256: str | None
    max_batch: int


def check_served(client: Any, target: TritonTarget) -> ServedModel:
    """The server live, ready and serving the model with orstream's tensors, or BackendError
    naming segment.triton's key to fix."""
    from tritonclient.utils import InferenceServerException

    where = f"Triton at {target.url} (segment.triton.url)"
    try:
        live = client.is_server_live(client_timeout=target.timeout_s)
    except InferenceServerException as exc:
        if target.protocol == "http":
            hint = " (protocol http: the url is the server's HTTP port, 8000 in its container)"
        else:
            hint = "" if target.tls else " (a server started with TLS needs segment.triton.tls)"
        raise TritonUnreachable(f"{where} does not answer ({_reason(exc)}): start it (orstream "
                                f"serve --triton MODEL_REPO, or the Triton container) or fix "
                                f"the url{hint}") from None
    if not live or not client.is_server_ready(client_timeout=target.timeout_s):
        raise BackendError(f"{where} is up but not ready (a model failed to load?): see "
                           f"the server's log")
    try:
        ready = client.is_model_ready(target.model, target.version,
                                      client_timeout=target.timeout_s)
    except InferenceServerException:  # a malformed name or version: not ready either way
        ready = False
    if not ready:
        try:
            names = sorted(m["name"] for m in client.get_model_repository_index(
                as_json=True, client_timeout=target.timeout_s).get("models", []))
        except InferenceServerException:
            names = []
        raise BackendError(f"{where} has no ready model {target.model!r}"
                           f"{' version ' + target.version if target.version else ''} "
                           f"(segment.triton.model): it serves {names or 'nothing'}")
    config = client.get_model_config(target.model, target.version, as_json=True,
                                     client_timeout=target.timeout_s)["config"]
    inputs = {t["name"]: t for t in config.get("input", [])}
    outputs = {t["name"]: t for t in config.get("output", [])}
    frames, labels = inputs.get("frames"), outputs.get("labels")
    dims = [int(d) for d in frames.get("dims", [])] if frames else []
    if (frames is None or labels is None or frames.get("data_type") != "TYPE_UINT8"
            or len(dims) != 3 or dims[2] != 3 or labels.get("data_type") != "TYPE_UINT8"):
        raise BackendError(f"{where}: model {target.model!r} does not take uint8 NHWC "
                           f"'frames' to uint8 'labels': export it with `orstream export "
                           f"--backend triton`")
    params = {k: v.get("string_value") for k, v in config.get("parameters", {}).items()}
    return ServedModel((dims[0], dims[1]), params.get("orstream_weights_sha256"),
                       int(config.get("max_batch_size", 0)))


def _reason(exc: Exception) -> str:
    status = getattr(exc, "status", lambda: None)()
    text = getattr(exc, "message", lambda: str(exc))() or str(exc)
    return f"{status or exc.__class__.__name__}: {text.splitlines()[0][:160]}"


class _SharedMemory:
    """One input and one output region (batch 1), registered with the server."""

    _ids = itertools.count()

    def __init__(self, client: Any, size: tuple[int, int]) -> None:
        import tritonclient.utils.shared_memory as shm

        self.shm, self.client = shm, client
        h, w = size
        tag = f"{SHM_PREFIX}{os.getpid()}-{next(self._ids)}"
        self.in_name, self.out_name = f"{tag}-in", f"{tag}-out"
        self.in_bytes, self.out_bytes = h * w * 3, h * w
        self.in_handle = shm.create_shared_memory_region(self.in_name, "/" + self.in_name,
                                                         self.in_bytes)
        self.out_handle = shm.create_shared_memory_region(self.out_name, "/" + self.out_name,
                                                          self.out_bytes)
        self.frame = shm.get_contents_as_numpy(self.in_handle, np.uint8, (1, h, w, 3))
        self.labels = shm.get_contents_as_numpy(self.out_handle, np.uint8, (1, h, w))

    def register(self, client: Any) -> None:
        """Tell the server about both regions (again after it restarted: it forgets them)."""
        for name, size in ((self.in_name, self.in_bytes), (self.out_name, self.out_bytes)):
            with contextlib.suppress(Exception):  # not registered yet: nothing to undo
                client.unregister_system_shared_memory(name)
            client.register_system_shared_memory(name, "/" + name, size)

    def close(self, client: Any) -> None:
        for name in (self.in_name, self.out_name):
            with contextlib.suppress(Exception):  # the server may be gone; ours go below
                client.unregister_system_shared_memory(name, client_timeout=0.5)
        for handle in (self.in_handle, self.out_handle):
            self.shm.destroy_shared_memory_region(handle)


class TritonEngine:
    """(H, W, 3) uint8 frames -> (H, W) uint8 labels, inferred by a Triton server.

    Not thread-safe for inference (one segment stage calls it); the reconnect thread only
    flips `online` after it has made the server usable again."""

    name = "triton"
    precision = "server"
    device = "remote"
    origin = None

    def __init__(self, target: TritonTarget, size: tuple[int, int] | None = None,
                 weights_sha256: str | None = None, weights_name: str = "segment.weights"
                 ) -> None:
        self.target = target
        self.client = _connect(target)
        served = check_served(self.client, target)
        if size is not None and tuple(size) != served.size:
            raise BackendError(f"segment.size is {size[1]}x{size[0]} but Triton's model "
                               f"{target.model!r} takes {served.size[1]}x{served.size[0]}: "
                               f"remove segment.size, or export the model at that size")
        self._weights = (weights_sha256, weights_name)
        self._check_weights(served)
        # What every response must name (engines/triton_repo.weights_version): None where
        # the room's weights are not known (benchmarks, the bench's engine check)
        self._version = str(weights_version(weights_sha256)) if weights_sha256 else None
        self.input_size = served.size
        self.served = served
        self._grpc = _client_module()
        self._prebuilt_rpc: tuple[Any, ...] | None = None  # () once found unavailable
        self.shared = _SharedMemory(self.client, served.size) if target.shared_memory else None
        if self.shared is not None:
            self.shared.register(self.client)
        # Over HTTP, every frame's request built once (engines/backends/triton_http.py)
        self._http_request = self._request_http() if target.protocol == "http" else None
        # Counters, read by the status line from another thread (ints: atomic enough)
        self.online = True
        self.unlabelled = 0  # frames that got no labels because the server was down
        self.outages = 0
        self._outage_s_past = 0.0  # outages that ended
        self._down_since = 0.0
        self._reason = ""
        self._stop = threading.Event()
        self._prober: threading.Thread | None = None

    def _check_weights(self, served: ServedModel) -> None:
        expected, name = self._weights
        if expected and served.weights_sha256 and served.weights_sha256 != expected:
            raise BackendError(f"Triton's model {self.target.model!r} was exported from other "
                               f"weights than {name} (sha256 {served.weights_sha256[:12]} vs "
                               f"{expected[:12]}): its labels would be drawn with the wrong "
                               f"class names. Point segment.weights at the checkpoint the "
                               f"server's model came from, or re-export it")

    # ------------------------------------------------------------------ the frame path
    def frame_buffer(self) -> np.ndarray | None:
        """Where to write the next (H, W, 3) frame (the shared region): no copy to send it.
        None without shared memory."""
        return self.shared.frame[0] if self.shared is not None else None

    def __call__(self, image: np.ndarray, inputs: dict[str, np.ndarray] | None = None
                 ) -> np.ndarray:
        """Labels for `image` (which may be frame_buffer() itself), or TritonOffline."""
        if not self.online:
            self.unlabelled += 1
            raise TritonOffline(self._reason)
        try:
            return self._infer(image)
        except self._errors() as exc:
            self._went_down(exc)
            self.unlabelled += 1
            raise TritonOffline(self._reason) from None

    def _errors(self) -> tuple[type[Exception], ...]:
        from tritonclient.utils import InferenceServerException

        return (InferenceServerException, WrongModel)

    def _rpc(self) -> tuple[Any, Any, type[Exception]] | None:
        """The gRPC method, a frame's whole request and the error the method raises, built
        once: with shared memory the request never changes (it names the same two regions
        every frame), over the socket only its pixels do. tritonclient's `infer` builds the
        request anew per call: 0.2 ms of every frame (measured, benchmarks/triton.py). None
        where this tritonclient has no stub to call (the attribute is not public API):
        frames then go through `infer`."""
        if self._prebuilt_rpc is None:
            method = getattr(getattr(self.client, "_client_stub", None), "ModelInfer", None)
            if method is None:
                self._prebuilt_rpc = ()
            else:
                import grpc  # present: tritonclient.grpc is

                self._prebuilt_rpc = (method, self._request_message(), grpc.RpcError)
        return self._prebuilt_rpc or None

    def _request_message(self) -> Any:
        """A frame's KServe v2 ModelInferRequest: from and into the shared regions, or with
        the frame's bytes in raw_input_contents[0] (set per frame)."""
        from tritonclient.grpc import service_pb2

        (h, w), shared = self.input_size, self.shared
        request = service_pb2.ModelInferRequest(model_name=self.target.model,
                                                model_version=self.target.version)
        frames = request.inputs.add(name="frames", datatype="UINT8", shape=[1, h, w, 3])
        labels = request.outputs.add(name="labels")
        if shared is None:
            request.raw_input_contents.append(b"")
            return request
        for tensor, name, size in ((frames, shared.in_name, shared.in_bytes),
                                   (labels, shared.out_name, shared.out_bytes)):
            tensor.parameters["shared_memory_region"].string_param = name
            tensor.parameters["shared_memory_byte_size"].int64_param = size
        return request

    def _infer(self, image: np.ndarray) -> np.ndarray:
        shared = self.shared
        if shared is not None and image is not shared.frame[0]:
            shared.frame[0] = image
        if self.target.protocol == "http":
            served, labels = self.client.infer(self._http_request, image,
                                               self.target.timeout_s)
        elif (rpc := self._rpc()) is None:
            served, labels = self._infer_by_client(image)
        else:
            method, request, rpc_error = rpc
            if shared is None:
                request.raw_input_contents[0] = np.ascontiguousarray(image).tobytes()
            try:
                response = method(request=request, timeout=self.target.timeout_s)
            except rpc_error as exc:
                from tritonclient.utils import InferenceServerException

                raise InferenceServerException(msg=exc.details(), status=str(exc.code()),
                                               debug_details=exc.debug_error_string()) from None
            served = response.model_version
            labels = None if shared is not None else self._labels_of(response)
        if self._version is not None and served != self._version:
            raise WrongModel(f"Triton answered with version {served} of "
                             f"{self.target.model!r}, not {self._version} (the weights of "
                             f"{self._weights[1]}): the server was restarted with another "
                             f"model")
        if shared is not None:
            return shared.labels[0].copy()  # the region is overwritten by the next frame
        return labels

    def _request_http(self) -> Any:
        """The REST request of every frame: from and into the shared regions, or with the
        frame's bytes after it."""
        shared = self.shared
        regions = None if shared is None else (shared.in_name, shared.in_bytes,
                                               shared.out_name, shared.out_bytes)
        return self.client.infer_request(self.target.model, self.target.version,
                                         self.input_size, regions)

    def _infer_by_client(self, image: np.ndarray) -> tuple[str, np.ndarray | None]:
        """tritonclient's own `infer`: (the version that answered, the labels unless they
        went to the shared region)."""
        grpc, (h, w), shared = self._grpc, self.input_size, self.shared
        request = grpc.InferInput("frames", [1, h, w, 3], "UINT8")
        wanted = grpc.InferRequestedOutput("labels")
        if shared is None:
            request.set_data_from_numpy(np.ascontiguousarray(image)[None])
        else:
            request.set_shared_memory(shared.in_name, shared.in_bytes)
            wanted.set_shared_memory(shared.out_name, shared.out_bytes)
        result = self.client.infer(self.target.model, [request],
                                   model_version=self.target.version, outputs=[wanted],
                                   client_timeout=self.target.timeout_s)
        labels = None if shared is not None else result.as_numpy("labels")[0]
        return result.get_response().model_version, labels

    def _labels_of(self, response: Any) -> np.ndarray:
        """The (H, W) labels in a socket response, or WrongModel if they are not that."""
        h, w = self.input_size
        for i, tensor in enumerate(response.outputs):
            if (tensor.name == "labels" and tensor.datatype == "UINT8"
                    and list(tensor.shape) == [1, h, w] and i < len(response.raw_output_contents)):
                return np.frombuffer(response.raw_output_contents[i], np.uint8).reshape(h, w)
        raise WrongModel(f"Triton's response has no uint8 'labels' of 1x{h}x{w}")

    # ------------------------------------------------------------------ outages
    def _went_down(self, exc: Exception) -> None:
        self.online = False
        self.outages += 1
        self._down_since = time.monotonic()
        self._reason = f"Triton at {self.target.url} unavailable ({_reason(exc)})"
        logger.error("{}: frames go on unlabelled while it reconnects", self._reason)
        self._prober = threading.Thread(target=self._reconnect, name="triton-reconnect",
                                        daemon=True)
        self._prober.start()

    def _reconnect(self) -> None:
        """Probe with backoff until the server serves the model again, then re-register the
        shared memory and go back online. Its own client: the frame path's is left alone."""
        delay = self.target.reconnect_min_s
        probe = _connect(self.target)
        last_problem = ""
        try:
            while not self._stop.wait(delay):
                try:
                    served = check_served(probe, self.target)
                    # A server restarted with another repository: never its labels here
                    if served.size != self.input_size:
                        raise BackendError(f"the model now takes {served.size}, this "
                                           f"pipeline sends {self.input_size}")
                    self._check_weights(served)
                    if self.shared is not None:
                        self.shared.register(probe)
                except Exception as exc:  # noqa: BLE001 - anything: stay down, keep trying
                    problem = str(exc).splitlines()[0]
                    if problem != last_problem and not isinstance(exc, TritonUnreachable):
                        # A server that answers but cannot serve the model (another model
                        # loaded, still loading): worth a line, once per new problem.
                        logger.error("Triton reconnect: {}", problem)
                    last_problem = problem
                    delay = min(delay * 2, self.target.reconnect_max_s)
                    continue
                down = time.monotonic() - self._down_since
                self._outage_s_past += down
                logger.info("Triton at {} is back after {:.1f} s; {} frames went unlabelled "
                            "so far", self.target.url, down, self.unlabelled)
                self.online = True
                return
        finally:
            probe.close()

    @property
    def outage_s(self) -> float:
        """Seconds without the server so far, the current outage included."""
        now = 0.0 if self.online else time.monotonic() - self._down_since
        return self._outage_s_past + now

    def status(self) -> str | None:
        """A status-line note while the server is down; None while it serves."""
        if self.online:
            return None
        return (f"segmentation offline {time.monotonic() - self._down_since:.0f} s "
                f"({self.unlabelled} frames unlabelled)")

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "url": self.target.url,
                "protocol": self.target.protocol, "model": self.target.model,
                "version": self.target.version or "latest", "input": list(self.input_size),
                "shared_memory": self.shared is not None,
                "max_batch": self.served.max_batch}

    def close(self) -> None:
        self._stop.set()
        if self._prober is not None:
            self._prober.join(timeout=2 * self.target.reconnect_max_s)
        if self.shared is not None:
            self.shared.close(self.client)
            self.shared = None
        self.client.close()


__all__ = ["SHM_PREFIX", "ServedModel", "TritonEngine", "TritonOffline", "TritonTarget",
           "TritonUnreachable", "check_served"]
