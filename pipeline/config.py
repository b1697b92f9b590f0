"""Pipeline configuration: YAML validated into typed objects, with errors that name the key.

`load_config(path, overrides)` reads a YAML file (the shipped default when no path is given),
applies ORSTREAM_SET and `--set key.sub=value` overrides (values parsed as YAML scalars), and
validates. A mistake is a ConfigError blamed on where the value came from, such as:

    configs/pipeline.yaml: segment.alpah: unknown key (did you mean segment.alpha?)
    --set render.alpha=2: render.alpha: Input should be less than or equal to 1 (got 2)
    ORSTREAM_SET render.alpah=0.5: render.alpah: unknown key (did you mean render.alpha?)
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orstream.common.errors import UsageError
from orstream.common.sizes import check_unet_input, format_hw, parse_hw
from orstream.common.yamlio import load_mapping
from orstream.engines.backends import TRITON
from orstream.pipeline.endpoints import is_loopback, normalize_endpoint

if TYPE_CHECKING:
    from orstream.engines.backends.triton_backend import TritonTarget

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_OVERRIDES = "ORSTREAM_SET"
ENV_CONFIG = "ORSTREAM_CONFIG"  # the YAML read when no path is given, instead of the shipped one
DEFAULT_CONFIG = REPO_ROOT / "configs" / "pipeline.yaml"


class ConfigError(UsageError):
    """A configuration value that is missing, unknown or out of range; names the key and
    where it was set (the file, ORSTREAM_SET or a command-line flag)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _endpoint(value: str) -> str:
    return normalize_endpoint(value)


def _message_endpoint(value: str) -> str:
    """Endpoints of messages without pixels for other processes (mask stream, `orstream ask`
    questions): no shm://, no inproc://."""
    endpoint = normalize_endpoint(value)
    scheme, _, where = endpoint.partition("://")
    if scheme == "shm":
        raise ValueError(f"{endpoint}: shm:// moves frame pixels through shared memory; this "
                         f"stream has none: use ipc://{where}")
    if scheme == "inproc":
        raise ValueError(f"{endpoint}: inproc:// stays inside this process, and this stream "
                         f"is for other processes: use ipc:///tmp/{where} or tcp://HOST:PORT")
    return endpoint


class SourceConfig(_Strict):
    # synthetic | a video file path | a URL (rtsp, rtsps, rtmp, udp, rtp, tcp, http, https,
    # srt where FFmpeg has it) | camera:N | /dev/videoN
    spec: str = "synthetic"
    fps: float = Field(30.0, gt=0, le=240)  # synthetic rate; cameras: requested; files: own
    width: int = Field(1920, ge=64)  # synthetic frame size; cameras: requested size
    height: int = Field(1080, ge=64)
    seed: int = 0  # synthetic procedure
    loop: bool = False  # files: start again at the end
    # files: paced = released at the recording's timestamps, live-like (newest frame only);
    # lossless = every frame once, in order (the capture edge is then made lossless too)
    mode: Literal["paced", "lossless"] = "paced"
    start: float = Field(0.0, ge=0)  # files: seconds from the recording's start
    end: float | None = Field(None, gt=0)  # files: stop here (seconds); None = the end
    # files and network streams: FFmpeg decoding threads (0 = FFmpeg picks) and threading;
    # None = the mode's default (sources.DECODER_DEFAULTS, measured)
    decoder_threads: int | None = Field(None, ge=0)
    thread_type: Literal["none", "slice", "frame", "auto"] | None = None
    # Live links (network streams, cameras). A dead host must fail within open_timeout_s;
    # a stream silent for read_timeout_s counts as dropped and is reconnected.
    open_timeout_s: float = Field(5.0, gt=0, le=120)
    read_timeout_s: float = Field(3.0, gt=0, le=120)
    # Reconnect backoff: the first retry after reconnect_delay_s, doubling up to
    # reconnect_delay_max_s; give up (SourceError) after reconnect_max_s of continuous
    # outage; None = retry until stopped; 0 = never retry (fail at the first error)
    reconnect_delay_s: float = Field(0.5, gt=0)
    reconnect_delay_max_s: float = Field(10.0, gt=0)
    reconnect_max_s: float | None = Field(None, ge=0)
    low_latency: bool = True  # network: no input buffering, short probe, low-delay decoding
    # network: extra FFmpeg options, over orstream's (e.g. {rtsp_transport: udp})
    ffmpeg_options: dict[str, str] = Field(default_factory=dict)
    pixel_format: str | None = None  # cameras: FOURCC to request (MJPG, YUYV, ...); None = device's
    # Burn seq and capture time into each frame as it is taken (pipeline/timecode.py), for
    # `orstream view --measure`: auto = the sources that do by default (synthetic); true =
    # any source (overwrites a 256x192 patch left of the segmentation crop); false = never
    timecode: bool | Literal["auto"] = "auto"

    @field_validator("ffmpeg_options", mode="before")
    @classmethod
    def _option_strings(cls, value: Any) -> Any:
        # YAML gives numbers for numeric options (buffer_size: 1048576); FFmpeg takes text.
        if isinstance(value, dict):
            return {str(k): "1" if v is True else "0" if v is False else str(v)
                    for k, v in value.items()}
        return value

    @field_validator("pixel_format")
    @classmethod
    def _fourcc(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if len(value) != 4 or not value.isascii() or not value.strip():
            raise ValueError("a pixel format is a four-character code such as MJPG or YUYV")
        return value.upper() if value.upper() in ("MJPG", "YUYV") else value

    @field_validator("reconnect_delay_max_s")
    @classmethod
    def _cap(cls, value: float, info: ValidationInfo) -> float:
        first = info.data.get("reconnect_delay_s")
        if first is not None and value < first:
            raise ValueError(f"must be at least reconnect_delay_s ({first:g})")
        return value

    @model_validator(mode="after")
    def _range(self) -> SourceConfig:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end:g} s) must be after start ({self.start:g} s)")
        return self


def _auto_order() -> dict[str, list[str]]:
    """The registry's `auto` order (engines/backends/__init__.py), as the config's default."""
    from orstream.engines.backends import AUTO_ORDER

    return {device: list(names) for device, names in AUTO_ORDER.items()}


SHIPPED_WEIGHTS = {"unet": REPO_ROOT / "engines" / "weights" / "unet_xs_types.pt",
                   "tpsis": REPO_ROOT / "engines" / "weights" / "tpsis_xs.pt"}


class TritonConfig(_Strict):
    # segment.backend triton: a Triton Inference Server holds the model (exported with
    # `orstream export --backend triton`, served by `orstream serve --triton` or the official
    # container); engines/backends/triton_backend.py
    # grpc: the KServe v2 gRPC API (tritonclient), the field's usual one across a network.
    # http: Triton's REST endpoint on a kept-alive connection: with shared memory (a server on
    # this host) 0.5-0.8 ms less per frame (benchmarks/triton.py); no TLS
    protocol: Literal["grpc", "http"] = "grpc"
    url: str = "127.0.0.1:8001"  # host:port of the endpoint `protocol` names (gRPC 8001, HTTP 8000)
    model: str = "orstream_unet"  # the model's name in the repository (--model-name)
    version: str = ""  # "": the newest version the server has ready
    # One request's limit: a hung server costs one frame this long, then counts as down
    timeout_ms: int = Field(1000, ge=10, le=60_000)
    # Frames and labels through Triton system shared memory, not the socket. auto: where the
    # url is on this host (a remote server cannot map this host's memory)
    shared_memory: Literal["auto", "on", "off"] = "auto"
    # Probing a server that went down: from the first delay, doubling to the last (a probe
    # is one loopback health call; a long wait would leave a restarted server unused)
    reconnect_ms: tuple[int, int] = (100, 500)
    tls: bool = False  # gRPC over TLS (the server started with --grpc-use-ssl)
    root_certificates: Path | None = None  # PEM of the CA that signed the server's certificate
    # A url off this host without TLS sends patient video in clear: refused unless set
    allow_insecure: bool = False

    @field_validator("url")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in value:
            raise ValueError(f"{value!r}: give HOST:PORT of the server's endpoint, e.g. "
                             f"127.0.0.1:8001 for gRPC or 127.0.0.1:8000 with protocol http "
                             f"(no scheme)")
        return value

    @field_validator("reconnect_ms")
    @classmethod
    def _backoff(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 10 <= value[0] <= value[1]:
            raise ValueError(f"{list(value)}: [first, last] delays in ms, 10 <= first <= last")
        return value

    @model_validator(mode="after")
    def _exposure(self) -> TritonConfig:
        if self.protocol == "http" and self.tls:
            raise ValueError("protocol http with tls: Triton's HTTP endpoint has no TLS. Use "
                             "protocol grpc (the server started with --grpc-use-ssl)")
        if not self.on_this_host and not self.tls and not self.allow_insecure:
            raise ValueError(f"url {self.url} is off this host and tls is false: frames would "
                             f"cross the network in clear. Set segment.triton.tls: true (with "
                             f"root_certificates), or allow_insecure: true on a closed network")
        if self.shared_memory == "on" and not self.on_this_host:
            raise ValueError(f"shared_memory on: the server at {self.url} is not on this host; "
                             f"set it to auto or off")
        return self

    @property
    def on_this_host(self) -> bool:
        import ipaddress

        host = self.url.rpartition(":")[0].strip("[]")
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:  # a name: only localhost is sure to stay on this host
            return host.lower() == "localhost"

    def target(self) -> TritonTarget:
        from orstream.engines.backends.triton_backend import TritonTarget

        shared = self.shared_memory == "on" or (self.shared_memory == "auto"
                                                and self.on_this_host)
        return TritonTarget(self.url, self.model, self.version, self.timeout_ms / 1000, shared,
                            self.reconnect_ms[0] / 1000, self.reconnect_ms[1] / 1000, self.tls,
                            self.root_certificates, self.protocol)


class SegmentConfig(_Strict):
    # false: no model is loaded and frames go to render unlabelled, to record or stream a
    # feed as it is (and to measure capture without inference)
    enabled: bool = True
    # unet: a U-Net segments the task its weights were trained for (types, parts, binary);
    # tpsis: text-promptable segmentation (engines/tpsis.py) of what `prompts` name
    model: Literal["unet", "tpsis"] = "unet"
    # null (or not given): the model's shipped weights, unet_xs_types.pt or tpsis_xs.pt
    weights: Path = SHIPPED_WEIGHTS["unet"]
    # tpsis: 1-16 free-text prompts, each drawn in its own colour with its text in the
    # legend; changed while running with `orstream prompt`. null: tpsis_engine.DEFAULT_PROMPTS
    prompts: tuple[str, ...] | None = None
    # tpsis: a prompt the model was not trained on is given to it as the trained prompt it
    # means when the text encoder is sure ("needle holder" -> "needle driver";
    # engines/tpsis_reading.py); false: every prompt exactly as typed
    read_prompts: bool = True
    # tpsis: a YAML file of the site's own instrument names ("names": class -> names,
    # "not_segmented": names), added to the shipped configs/vocabulary/instruments.yaml that
    # prompts are read with; null: the shipped vocabulary alone
    vocabulary: Path | None = None
    # auto: the first backend in auto_backends[device] this machine can serve; otherwise a
    # name from the registry in engines/backends/__init__.py
    backend: str = "auto"
    # auto: the backend's fastest native float precision here (bf16 only where the CPU has
    # it); a named precision the machine cannot serve is an error, never a downgrade
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int | None = Field(None, ge=1)  # inference threads; None = the backend's default
    size: tuple[int, int] | None = None  # model input (H, W); None = what it was trained at
    # Fastest first, as benchmarks/engines.py measured them on each device
    auto_backends: dict[Literal["cpu", "cuda"], list[str]] = Field(
        default_factory=lambda: _auto_order())
    engine_cache: Path | None = None  # None: $ORSTREAM_ENGINE_CACHE or ~/.cache/orstream/engines
    crop: Literal["endovis", "none"] = "endovis"  # EndoVis crop (1024x1280 of 1080p, scaled)
    postprocess: Literal["vote", "none"] = "vote"  # types: one type per connected instrument
    triton: TritonConfig = TritonConfig()  # backend triton: the server and model

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, data: Any) -> Any:
        # The weights and prompts a model gets when the config names none: set before the
        # fields are validated, so that `segment.model: tpsis` alone is a working config.
        if not isinstance(data, dict):
            return data
        model = data.get("model", "unet")
        if model not in SHIPPED_WEIGHTS:
            # The field's own check names the allowed values. A null weights would add a
            # second error ("not a valid path ... got None") that only follows from the first.
            return {k: v for k, v in data.items() if not (k == "weights" and v is None)}
        filled = dict(data)
        if filled.get("weights") is None:
            filled["weights"] = SHIPPED_WEIGHTS[model]
        if model == "tpsis" and filled.get("prompts") is None:
            from orstream.engines.tpsis_engine import DEFAULT_PROMPTS

            filled["prompts"] = DEFAULT_PROMPTS
        return filled

    @field_validator("weights")
    @classmethod
    def _exists(cls, value: Path) -> Path:
        from orstream.engines.checkpoint import weights_path

        return weights_path(value).resolve()

    @field_validator("vocabulary")
    @classmethod
    def _vocabulary(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        from orstream.engines.tpsis_vocabulary import VocabularyError, load_vocabulary

        if value is None:
            return None
        if info.data.get("model") == "unet":
            raise ValueError("a vocabulary is for segment.model tpsis (its prompts are read "
                             "with it): set segment.model: tpsis, or remove segment.vocabulary")
        path = config_path(value)
        if not path.is_file():
            raise ValueError(f"no file {value}: give the path of a YAML vocabulary (the "
                             f"layout of configs/vocabulary/instruments.yaml)")
        try:
            load_vocabulary(path)  # its class names are checked against the checkpoint's later
        except VocabularyError as exc:
            raise ValueError(str(exc)) from None
        return path.resolve()

    @field_validator("prompts", mode="before")
    @classmethod
    def _prompt_list(cls, value: Any) -> Any:
        # --set segment.prompts=scissors: one prompt typed without brackets
        return [value] if isinstance(value, str) else value

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, value: tuple[str, ...] | None,
                 info: ValidationInfo) -> tuple[str, ...] | None:
        from orstream.engines.tpsis_engine import check_prompts

        if value is None:
            return None
        if info.data.get("model") == "unet":
            raise ValueError("prompts are for segment.model tpsis, and segment.model is unet "
                             "(a U-Net segments its fixed classes): set segment.model: tpsis, "
                             "or remove segment.prompts")
        return check_prompts(value)

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        # --set segment.size=320x256: written WxH like every size; held as (H, W)
        return parse_hw(value) if isinstance(value, str) else value

    @field_validator("size")
    @classmethod
    def _multiple(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        return None if value is None else check_unet_input(value)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        from orstream.engines.backends import NAMES

        if value not in ("auto", TRITON, *NAMES):
            raise ValueError(f"backend {value!r}: choose auto, {TRITON} (a Triton server) or "
                             f"one of {', '.join(NAMES)}")
        return value

    @model_validator(mode="after")
    def _remote(self) -> SegmentConfig:
        if self.backend != TRITON:
            return self
        if self.model == "tpsis":
            raise ValueError("backend triton serves U-Net models (the server holds no prompt "
                             "state): set segment.backend to auto, onnxruntime or openvino for "
                             "tpsis")
        if self.precision != "auto":
            raise ValueError(f"precision {self.precision} with backend triton: the server's "
                             f"model repository decides it (orstream export --backend triton "
                             f"--precision); leave segment.precision at auto")
        return self

    @field_validator("auto_backends")
    @classmethod
    def _known_backends(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        from orstream.engines.backends import NAMES

        for device, names in value.items():
            unknown = [n for n in names if n not in NAMES]
            if unknown or not names:
                raise ValueError(f"{device}: {unknown or 'empty list'}: backends are "
                                 f"{', '.join(NAMES)}")
        return value


class DescribeConfig(_Strict):
    # The scene-describing VLM beside the frame path (pipeline/describe.py)
    enabled: bool = True
    weights: Path | None = None  # None: the shipped engines/weights/vlm_tiny.pt
    # caption the newest frame this often; 0: whenever the describe thread is idle
    interval_s: float = Field(1.0, ge=0, le=3600)
    every_frames: int | None = Field(None, ge=1)  # instead of interval_s: every Nth frame drawn
    threads: int = Field(1, ge=1, le=64)  # torch threads for the VLM; the frame path keeps the rest
    # CPU class of the model's process: idle = only cores the frame path leaves idle (Linux
    # SCHED_IDLE); low = nice 10; normal = same as the frame path
    priority: Literal["idle", "low", "normal"] = "idle"
    ask_endpoint: str | None = "tcp://127.0.0.1:5601"  # `orstream ask` questions; None: none
    max_new_tokens: int = Field(48, ge=1, le=256)  # longest caption or answer
    # torch: eager with the KV cache; onnxruntime / openvino: the exported encoder and
    # decoder step (engines/vlm/export.py), same tokens, built into the engine cache on first
    # use; measured 16.7 / 13.7 / 12.0 ms a caption here (benchmarks/vlm.py)
    backend: Literal["torch", "onnxruntime", "openvino"] = "torch"

    _check = field_validator("ask_endpoint")(
        lambda v: None if v is None else _message_endpoint(v))

    @field_validator("weights")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"VLM weights {value} do not exist (null: the shipped ones)")
        return value


class RenderConfig(_Strict):
    alpha: float = Field(0.45, ge=0, le=1)  # overlay opacity
    outlines: bool = True  # instrument outlines
    legend: bool = True  # classes present
    status: bool = True  # fps / latency / drops line
    threads: int | None = Field(1, ge=1)  # numba threads for the blend; 1 beside a busy model
    # Several segment workers finish frames out of order: render holds an early frame up to
    # this long for the one before it, then goes on without it. 0: frames go as they come.
    reorder_ms: float = Field(0.0, ge=0, le=1000)


class PublishConfig(_Strict):
    endpoint: str | None = "tcp://127.0.0.1:5600"  # None: no publisher
    parts: tuple[Literal["overlay", "image", "labels"], ...] = ("overlay",)
    mode: Literal["latest", "lossless"] = "latest"  # displays want the newest frame

    _check = field_validator("endpoint")(lambda v: None if v is None else _endpoint(v))


class MasksConfig(_Strict):
    # The mask-only stream (PROTOCOL.md): label map, outlines, classes, caption; no pixels
    endpoint: str | None = None  # None: no mask stream
    mode: Literal["latest", "lossless"] = "latest"

    _check = field_validator("endpoint")(
        lambda v: None if v is None else _message_endpoint(v))


class SecurityConfig(_Strict):
    # CurveZMQ on every tcp socket: peers authenticate with key pairs and traffic is
    # encrypted. Keys come from `orstream keys DIR NAME`.
    curve: bool = False
    key: Path | None = None  # this process's secret key file (NAME.key_secret)
    server_public_key: Path | None = None  # the peer this process connects to (NAME.key)
    allowed_clients: Path | None = None  # folder of public keys allowed to connect here
    # Binding a non-loopback address without curve is refused unless this is true
    allow_insecure: bool = False

    @model_validator(mode="after")
    def _keys(self) -> SecurityConfig:
        if self.curve and self.key is None:
            raise ValueError("curve is on but no key is given: set security.key to a "
                             "NAME.key_secret file made by `orstream keys`")
        for name in ("key", "server_public_key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} does not exist (make keys with "
                                 f"`orstream keys DIR NAME`)")
        if self.allowed_clients is not None and not self.allowed_clients.is_dir():
            raise ValueError(f"allowed_clients: {self.allowed_clients} is not a folder of "
                             f"public keys")
        return self


class RecordConfig(_Strict):
    path: Path | None = None  # fragmented MP4 (or .ts): playable even after a crash
    crf: int = Field(23, ge=0, le=51)
    # A new file every this many seconds of video (NAME-0001.mp4, NAME-0002.mp4, ...), each
    # playable alone: a long procedure is never one file that one fault could spoil. 0: one
    # file, NAME itself.
    rotate_s: float = Field(0.0, ge=0, le=86400)


class EdgeConfig(_Strict):
    # `{stream}` in an endpoint is replaced by the frame's stream id: one inference process
    # serving several operating rooms sends each its own results
    endpoint: str
    mode: Literal["latest", "lossless"]
    # receiver: the consuming stage binds and producers connect (several cameras or rooms
    # into one stage); sender: the producer binds and consumers connect, so that a lossless
    # edge deals frames out to several workers in turn
    bind: Literal["receiver", "sender"] = "receiver"
    # frames queued per socket; None: 2 for latest (a deeper queue only holds older frames:
    # a full PUB queue drops the newest), 8 for lossless. 1 keeps workers' input fresh.
    hwm: int | None = Field(None, ge=1, le=1000)

    _check = field_validator("endpoint")(lambda v: _endpoint(v))


def _default_edges() -> dict[str, EdgeConfig]:
    # Live path: capture -> segment keeps only the newest frame (stale frames are worthless
    # in surgery); after that every frame that was segmented is drawn and recorded.
    return {
        "capture->segment": EdgeConfig(endpoint="inproc://capture", mode="latest"),
        "segment->render": EdgeConfig(endpoint="inproc://segment", mode="lossless"),
        "render->publish": EdgeConfig(endpoint="inproc://render-publish", mode="latest"),
        "render->record": EdgeConfig(endpoint="inproc://render-record", mode="lossless"),
        "render->masks": EdgeConfig(endpoint="inproc://render-masks", mode="latest"),
        "render->null": EdgeConfig(endpoint="inproc://render-null", mode="lossless"),
    }


class StatusConfig(_Strict):
    # Long enough that a paced source's jitter or a GC pause never trips it; short enough
    # that an operator sees a silent upstream before wondering why the picture froze.
    stall_warn_s: float = Field(2.0, gt=0, le=3600)  # warn when no frame came for this long


class PipelineConfig(_Strict):
    stream: str = Field("or-1", pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # stream id in the topic
    source: SourceConfig = SourceConfig()
    segment: SegmentConfig = SegmentConfig()
    describe: DescribeConfig = DescribeConfig()
    render: RenderConfig = RenderConfig()
    publish: PublishConfig = PublishConfig()
    record: RecordConfig = RecordConfig()
    masks: MasksConfig = MasksConfig()
    status: StatusConfig = StatusConfig()
    security: SecurityConfig = SecurityConfig()
    edges: dict[str, EdgeConfig] = Field(default_factory=_default_edges)
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # receivers reject larger

    @field_validator("publish")
    @classmethod
    def _labels_need_segmentation(cls, value: PublishConfig,
                                  info: ValidationInfo) -> PublishConfig:
        # Checked here, not when the publisher opens: a stream without its labels part
        # would only be noticed by the displays.
        segment = info.data.get("segment")
        if (value.endpoint and "labels" in value.parts and segment is not None
                and not segment.enabled):
            raise ValueError("publish.parts lists labels but segment.enabled is false (no "
                             "model, no labels): remove labels or enable segmentation")
        return value

    @model_validator(mode="after")
    def _exposure(self) -> PipelineConfig:
        # Refused here, before any socket exists: an open port on the hospital network
        # carrying patient video is not something to find out about from a log line.
        exposed = exposed_endpoints(self)
        if exposed and not self.security.curve and not self.security.allow_insecure:
            key, endpoint = exposed[0]
            raise ValueError(f"{key}: {endpoint} is reachable from other machines but "
                             f"security.curve is off: make keys (`orstream keys`) and set "
                             f"security.curve, or set security.allow_insecure: true")
        return self

    @model_validator(mode="after")
    def _one_socket_per_endpoint(self) -> PipelineConfig:
        # The publisher, the mask stream and the ask port each bind their endpoint: two on
        # one address would stop the pipeline at start-up with "address already in use".
        # (Their field validators have normalised them: localhost is 127.0.0.1 by now.)
        seen: dict[str, str] = {}
        for key, endpoint in (("publish.endpoint", self.publish.endpoint),
                              ("masks.endpoint", self.masks.endpoint),
                              ("describe.ask_endpoint", self.describe.ask_endpoint)):
            if endpoint in seen:
                raise ValueError(f"{key} and {seen[endpoint]} are both {endpoint}: each binds "
                                 "its own socket, so give one of them another port or path")
            if endpoint:
                seen[endpoint] = key
        return self

    @model_validator(mode="after")
    def _reorder_needs_lossless_dispatch(self) -> PipelineConfig:
        edge = self.edges["capture->segment"]
        if self.render.reorder_ms and edge.mode != "lossless":
            raise ValueError("render.reorder_ms needs edges.capture->segment.mode lossless "
                             "(frames dealt out to workers); with latest every worker gets "
                             "every frame")
        return self

    @field_validator("edges", mode="before")
    @classmethod
    def _merge_edges(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = {k: v.model_dump() for k, v in _default_edges().items()}
        unknown = set(value) - set(merged)
        if unknown:
            close = difflib.get_close_matches(min(unknown), list(merged), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"unknown edges {sorted(unknown)}{hint}: accepted {sorted(merged)}")
        for key, edge in value.items():
            merged[key] = {**merged[key], **(edge or {})}
        return merged


def exposed_endpoints(cfg: PipelineConfig) -> list[tuple[str, str]]:
    """(config key, endpoint) of every tcp endpoint on an address other than loopback."""
    named = [("publish.endpoint", cfg.publish.endpoint), ("masks.endpoint", cfg.masks.endpoint),
             ("describe.ask_endpoint", cfg.describe.ask_endpoint)]
    named += [(f"edges.{k}.endpoint", e.endpoint) for k, e in cfg.edges.items()]
    out = []
    for key, endpoint in named:
        if endpoint and not is_loopback(endpoint):
            out.append((key, endpoint))
    return out


PORT_BASE_KEYS = (("publish.endpoint", 0), ("describe.ask_endpoint", 1), ("masks.endpoint", 2))


def _set_path(tree: dict, dotted: str, value: Any, origin: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str, origin: str = "--set") -> tuple[str, Any]:
    """'key.sub=value' -> (key, YAML scalar); `origin` (--set, ORSTREAM_SET) names the
    source of the text in the error."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{origin} {text!r}: expected KEY=VALUE, e.g. render.alpha=0.6")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The model whose fields the key at `loc` belongs to (edges' entries: EdgeConfig)."""
    model: type[BaseModel] = PipelineConfig
    for part in loc[:-1]:
        if model is PipelineConfig and part == "edges":
            model = EdgeConfig
            continue
        if model is EdgeConfig and part not in EdgeConfig.model_fields:
            continue  # the edge's name: `edges.capture->segment.mode`
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _did_you_mean(loc: tuple) -> str:
    model = _model_at(loc)
    if model is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f" (did you mean {'.'.join([*map(str, loc[:-1]), close[0]])}?)" if close else ""


def _format(err: dict) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"{'.'.join(str(p) for p in err['loc'])}: unknown key{_did_you_mean(err['loc'])}"
    if not err["loc"]:
        # A check across sections: its message names the keys, and the input is the whole
        # configuration, too long to be of use.
        return msg
    key = ".".join(str(p) for p in err["loc"])
    return f"{key}: {msg} (got {err.get('input')!r})"


def _blame(err: dict, message: str, origins: dict[str, str], source: Path) -> str:
    """Where the faulty value came from: the override that set the key (or a section above
    it), the overrides a cross-section message names, else the file."""
    key = ".".join(str(p) for p in err["loc"])
    if key:
        setters = [k for k in origins if key == k or key.startswith(k + ".")
                   or k.startswith(key + ".")]
    else:
        setters = [k for k in origins if k in message]
    return ", ".join(dict.fromkeys(origins[k] for k in setters)) or str(source)


def _default_of(dotted: str) -> Any:
    """The model's default for a dotted key (the value when neither file nor flag sets it)."""
    node: Any = PipelineConfig()
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _value_in(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _default_of(dotted)
        node = node[part]
    return node


def config_path(value: Path | str) -> Path:
    """`value` as given (relative to the working folder), else relative to the orstream
    package, so that `configs/scaleout/two-workers.yaml`, as the README writes it, names the
    shipped config from any folder and in an installed wheel."""
    path = Path(value).expanduser()
    packaged = REPO_ROOT / path
    if not path.is_file() and not path.is_absolute() and packaged.is_file():
        return packaged
    return path


def load_config(path: Path | str | None = None, overrides: list[str] | None = None,
                port_base: int | None = None, flags: dict[str, str] | None = None,
                **direct: Any) -> PipelineConfig:
    """Load YAML (default $ORSTREAM_CONFIG, else the shipped configs/pipeline.yaml), apply
    ORSTREAM_SET, then --set overrides, then `port_base` and `direct` dotted-key values
    (`publish__endpoint`), and validate. `flags` names the command-line flag that gave a
    `direct` key ({"publish.endpoint": "--publish"}), so an error blames what was typed.

    port_base N moves the pipeline's own tcp ports, those that are on, to 127.0.0.1: publish
    N, describe.ask_endpoint N+1, masks.endpoint N+2 (a second pipeline on the same host).
    """
    source = config_path(path or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG)
    if not path and os.environ.get(ENV_CONFIG) and not source.is_file():
        # Nothing on the command line names this file: say where it came from.
        raise ConfigError(f"config file {source} does not exist ({ENV_CONFIG}={source}: "
                          f"point it at a file, or unset it for the shipped config)")
    tree = load_mapping(source, ConfigError)
    origins: dict[str, str] = {}  # dotted key -> what set it, for the error messages

    def put(dotted: str, value: Any, origin: str) -> None:
        _set_path(tree, dotted, value, origin)
        origins[dotted] = origin

    # ORSTREAM_SET="key=value;key=value" applies before --set (which wins): a deployment
    # (a container, a test session) sets its site's values once for every command.
    environment = [t.strip() for t in os.environ.get(ENV_OVERRIDES, "").split(";") if t.strip()]
    for text in environment:
        put(*parse_override(text, ENV_OVERRIDES), f"{ENV_OVERRIDES} {text}")
    for text in overrides or []:
        put(*parse_override(text), f"--set {text}")
    if port_base is not None:
        for dotted, offset in PORT_BASE_KEYS:
            if _value_in(tree, dotted) is not None:
                put(dotted, f"tcp://127.0.0.1:{port_base + offset}", f"--port-base {port_base}")
    for dotted, value in direct.items():
        if value is not None:
            key = dotted.replace("__", ".")
            put(key, value, f"{(flags or {}).get(key, key)} {value}")
    try:
        return PipelineConfig(**tree)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            message = _format(err)
            lines.append(f"{_blame(err, message, origins, source)}: {message}")
        raise ConfigError("; ".join(dict.fromkeys(lines))) from None


def effective_yaml(cfg: PipelineConfig) -> str:
    """The configuration a run would use, as YAML that `--config` reads back the same."""
    tree = cfg.model_dump(mode="json")
    size = cfg.segment.size
    # Held as (H, W) for the engines; written WxH like every size in a YAML or on a flag.
    tree["segment"]["size"] = None if size is None else format_hw(size)
    return yaml.safe_dump(tree, sort_keys=False, width=100)
