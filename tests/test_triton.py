"""Central inference on Triton (issue 22): the model repository export, a real `tritonserver`
process (from the nvidia-pytriton wheel) on loopback, and pipelines that segment on it and
outlive its crash. No mocks: every server here is the real binary."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from orstream.common.errors import UsageError
from orstream.common.net import free_port
from orstream.engines.backends import BackendError
from orstream.engines.cache import file_sha256
from orstream.engines.triton_repo import (
    RUNTIMES,
    TritonModelOptions,
    TritonRepoError,
    export_triton_repo,
    weights_version,
)
from orstream.engines.triton_server import Distribution, TritonServer, TritonServerError
from orstream.pipeline.config import ConfigError, load_config

WEIGHTS = Path(__file__).resolve().parents[1] / "engines" / "weights"
TYPES, BINARY = WEIGHTS / "unet_xs_types.pt", WEIGHTS / "unet_xs_binary.pt"
BATCHED = "orstream_unet_batched"


def _parse(config: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_export_writes_a_config_triton_parses(tmp_path, runtime):
    """Every runtime's config.pbtxt is a valid Triton ModelConfig with orstream's tensors
    (parsed with Triton's own protobuf schema, the one the official server reads)."""
    gpu = runtime in ("onnxruntime", "tensorrt")
    options = TritonModelOptions(runtime, max_batch=4, instances=2, gpu=gpu,
                                 precision="fp16" if runtime == "tensorrt" else "fp32")
    folder = export_triton_repo(TYPES, tmp_path, options)
    config = _parse(folder / "config.pbtxt")
    assert config.name == "orstream_unet" and config.max_batch_size == 4
    (frames,), (labels,) = config.input, config.output
    assert (frames.name, list(frames.dims)) == ("frames", [256, 320, 3])
    assert (labels.name, list(labels.dims)) == ("labels", [256, 320])
    assert frames.data_type == labels.data_type == 2  # TYPE_UINT8
    assert config.HasField("dynamic_batching")
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == (1 if gpu else 2)  # KIND_GPU / KIND_CPU
    # The version folder is the weights' (every response names it: checked per frame)
    (version,) = [p for p in folder.iterdir() if p.is_dir()]
    assert version.name == str(weights_version(file_sha256(TYPES)))
    assert (version / "model.onnx").stat().st_size > 1_000_000
    assert (version / "model.py").exists() == (runtime == "python")
    if runtime == "tensorrt":
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert accelerator.name == "tensorrt"
        assert accelerator.parameters["precision_mode"] == "FP16"
    assert config.parameters["orstream_task"].string_value == "types"


def test_export_refuses_what_would_not_serve(tmp_path):
    with pytest.raises(TritonRepoError, match="--triton-runtime python runs on the CPU"):
        export_triton_repo(TYPES, tmp_path, TritonModelOptions("python", gpu=True))
    with pytest.raises(TritonRepoError, match="precision fp16"):
        export_triton_repo(TYPES, tmp_path, TritonModelOptions("onnxruntime", precision="fp16"))
    with pytest.raises(TritonRepoError, match="TP-SIS runs in the pipeline"):
        export_triton_repo(WEIGHTS / "tpsis_xs.pt", tmp_path, TritonModelOptions())


def test_config_refuses_triton_where_it_cannot_work():
    with pytest.raises(ConfigError, match="backend triton serves U-Net models"):
        load_config(None, ["segment.model=tpsis", "segment.backend=triton"])
    with pytest.raises(ConfigError, match="segment.triton: url 10.1.2.3:8001 is off this host"):
        load_config(None, ["segment.backend=triton", "segment.triton.url=10.1.2.3:8001"])
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load_config(None, ["segment.backend=triton", "segment.triton.url=grpc://x:1"])
    remote = load_config(None, ["segment.backend=triton", "segment.triton.url=10.1.2.3:8001",
                                "segment.triton.tls=true"]).segment.triton.target()
    local = load_config(None, ["segment.backend=triton"]).segment.triton.target()
    assert (remote.shared_memory, local.shared_memory) == (False, True)
    assert (remote.protocol, local.protocol) == ("grpc", "grpc")
    rest = load_config(None, ["segment.backend=triton", "segment.triton.protocol=http",
                              "segment.triton.url=127.0.0.1:8000"]).segment.triton.target()
    assert (rest.protocol, rest.url, rest.shared_memory) == ("http", "127.0.0.1:8000", True)
    # Triton's HTTP endpoint has no TLS: asking for it must not silently send in clear
    with pytest.raises(ConfigError, match="segment.triton: protocol http with tls"):
        load_config(None, ["segment.backend=triton", "segment.triton.protocol=http",
                           "segment.triton.tls=true"])
    with pytest.raises(ConfigError, match="segment.triton.protocol"):
        load_config(None, ["segment.backend=triton", "segment.triton.protocol=rest"])


# ----------------------------------------------------------------- a real server

def _have_server() -> str | None:
    try:
        Distribution.find()
    except TritonServerError as exc:
        return str(exc)
    return None


needs_server = pytest.mark.skipif(_have_server() is not None,
                                  reason=f"no tritonserver: {_have_server()}")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("triton-repo")
    export_triton_repo(TYPES, root, TritonModelOptions(threads=1))
    # A second model whose batcher holds frames 50 ms for others to join: batching shows
    # deterministically, where the first (delay 0) never waits.
    export_triton_repo(TYPES, root, TritonModelOptions(name=BATCHED, threads=1,
                                                       queue_delay_us=50_000))
    return root


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    with TritonServer(repo, log=tmp_path_factory.mktemp("triton-log") / "server.log") as s:
        yield s


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """Synthetic endoscope frames through the live path's crop and resize (256x320)."""
    from orstream.common.crop import endovis_region
    from orstream.engines.preprocess import resize_image
    from orstream.training.synth.generator import SynthConfig, SyntheticEndoscope

    synth = SyntheticEndoscope(SynthConfig(seed=seed))
    y, x, h, w = endovis_region(1080, 1920)
    return [resize_image(synth.render(i * 9).image[y:y + h, x:x + w], (256, 320))
            for i in range(n)]


@needs_server
def test_triton_labels_match_the_local_engine(server):
    """>= 99.5 % pixel agreement with the local onnxruntime engine on the same frames, over
    shared memory and over the socket alike, by gRPC (both ways of sending the request) and
    by HTTP/REST."""
    from orstream.engines.backends.triton_backend import TritonEngine, TritonTarget
    from orstream.engines.export import EngineSpec, open_engine

    local = open_engine(EngineSpec(TYPES, "onnxruntime", "fp32"))
    frames = _frames(4)
    # over shared memory and the socket, each with the request built once and with
    # tritonclient's own infer (a client without the stub the prebuilt request goes through)
    ways = [("grpc", True), ("grpc", False), ("http", True)]
    for shared, (protocol, prebuilt) in itertools.product((True, False), ways):
        url = server.http_url if protocol == "http" else server.url
        engine = TritonEngine(TritonTarget(url, shared_memory=shared, protocol=protocol))
        if not prebuilt:
            engine._prebuilt_rpc = ()
        try:
            agree = [float((engine(f) == local(f)).mean()) for f in frames]
            if protocol == "grpc":
                assert (engine._prebuilt_rpc not in (None, ())) == prebuilt
        finally:
            engine.close()
        assert min(agree) >= 0.995, (shared, protocol, prebuilt, agree)
    assert not list(Path("/dev/shm").glob(f"orstream-triton-{os.getpid()}-*"))
    # Nothing printed per frame: a traceback each (the stub's DLPack capsule) fills a
    # hospital server's disk at 150 lines a second and costs every frame a quarter ms.
    log = server.log.read_text(errors="replace")
    assert "Traceback" not in log and "PyCapsule" not in log, server.log_tail(20)


@needs_server
def test_the_benchmarks_breakdown_reads_the_servers_own_figures_for_its_calls(server, tmp_path):
    """benchmarks/triton.py's breakdown: every server step is the server's mean over exactly
    the calls made (a read of the wrong counters gives zeros or other calls' figures), and
    the steps fit inside the client's whole call."""
    from orstream.benchmarks.triton import SERVER_STEPS, breakdown

    for protocol, url in (("grpc", server.url), ("http", server.http_url)):
        rows = {r["step"]: r["mean_ms"] for r in breakdown(url, "orstream_unet", TYPES, 1, 6,
                                                            tmp_path, protocol, server.url)}
        whole = rows["Triton over shared memory: the whole call"]
        steps = [rows[label] for label in SERVER_STEPS.values()]
        assert all(v >= 0 for v in steps) and rows[SERVER_STEPS["compute_infer"]] > 0, rows
        assert sum(steps) <= whole, rows
        assert rows[f"outside the server: the {protocol} call and the client"] > 0, rows
        # the model runs inside the backend step: it is at least most of the local run
        assert rows[SERVER_STEPS["compute_infer"]] > 0.5 * rows[
            "local engine (same frames, this process)"], rows


@needs_server
def test_rooms_frames_are_batched_and_each_gets_its_own_labels(server):
    """Four rooms at once on the batching model: Triton merges their frames into batches
    (fewer executions than inferences) and every room gets the labels of its own frame."""
    import tritonclient.grpc as grpcclient

    from orstream.engines.backends.triton_backend import TritonEngine, TritonTarget
    from orstream.engines.export import EngineSpec, open_engine

    local = open_engine(EngineSpec(TYPES, "onnxruntime", "fp32"))
    frames = _frames(4, seed=3)
    client = grpcclient.InferenceServerClient(server.url)
    before = client.get_inference_statistics(BATCHED, as_json=True)["model_stats"][0]
    results: dict[int, list[float]] = {}

    def room(i: int) -> None:
        engine = TritonEngine(TritonTarget(server.url, BATCHED, timeout_s=10))
        start.wait()
        try:
            results[i] = [float((engine(frames[i]) == local(frames[i])).mean())
                          for _ in range(3)]
        finally:
            engine.close()

    start = threading.Barrier(4)
    threads = [threading.Thread(target=room, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    after = client.get_inference_statistics(BATCHED, as_json=True)["model_stats"][0]
    inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    assert inferences == 12
    assert executions < inferences  # batches formed across rooms
    assert all(min(r) >= 0.995 for r in results.values()) and len(results) == 4


def _labelled_seqs(endpoint: str, stop: threading.Event, out: dict) -> threading.Thread:
    from orstream.pipeline.transport import Receiver

    def loop() -> None:
        receiver = Receiver(endpoint, mode="lossless", hwm=1000)
        try:
            while not stop.is_set():
                frame = receiver.recv(100)
                if frame is not None:
                    out[frame.seq] = frame.labels is not None
        finally:
            receiver.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


@needs_server
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_pipeline_outlives_a_killed_server_and_resumes(repo, tmp_path, protocol):
    """`orstream run --set segment.backend=triton`: the server is SIGKILLed mid-run and
    restarted; the pipeline never exits, frames keep flowing unlabelled meanwhile (counted),
    and labelled frames resume after the restart. By gRPC and by HTTP (whose kept-alive
    connection died with the server)."""
    endpoint = load_config(None).publish.endpoint
    server = TritonServer(repo, log=tmp_path / "server.log")
    server.start()
    server.wait_ready()
    url = server.http_url if protocol == "http" else server.url
    seen: dict[int, bool] = {}
    stop = threading.Event()
    listener = _labelled_seqs(endpoint, stop, seen)
    cmd = [sys.executable, "-m", "orstream.pipeline.cli", "run", "--frames", "330",
           "--set", "segment.backend=triton", "--set", f"segment.triton.url={url}",
           "--set", f"segment.triton.protocol={protocol}",
           "--set", "describe.enabled=false", "--set", "publish.parts=[labels]",
           "--set", "publish.mode=lossless"]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while sum(seen.values()) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(seen.values()) >= 60, "no labelled frames before the kill"
        server.kill()
        killed_at = max(seen)
        time.sleep(1.5)  # an outage of ~45 frames at 30 fps
        server.restart()
        out, _ = run.communicate(timeout=90)
    finally:
        stop.set()
        if run.poll() is None:
            run.kill()
        server.stop()
    listener.join(5)
    assert run.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    after = [s for s in sorted(seen) if s > killed_at]
    gap = [s for s in after if not seen[s]]
    assert len(gap) >= 20, "frames went on (unlabelled) while the server was down"
    resumed = [s for s in after if s > max(gap) and seen[s]]
    assert len(resumed) >= 30, "labelled frames resumed after the restart"
    assert out.count("unavailable") == 1, "one error line per outage"
    assert "inference server down 1 time(s)" in out
    assert not list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))


@needs_server
def test_start_errors_name_the_key_to_fix(server, tmp_path):
    """No server, a wrong model name, other weights: one line naming segment.triton.* or
    segment.weights, exit 2, no traceback."""
    cases = [
        ([f"segment.triton.url=127.0.0.1:{free_port()}"], "segment.triton.url"),
        ([f"segment.triton.url={server.url}", "segment.triton.model=nope"],
         "has no ready model 'nope' (segment.triton.model): it serves ['orstream_unet'"),
        ([f"segment.triton.url={server.url}", f"segment.weights={BINARY}"],
         "exported from other weights than segment.weights (unet_xs_binary.pt)"),
        # protocol http at the gRPC port: the url is what to fix
        ([f"segment.triton.url={server.url}", "segment.triton.protocol=http"],
         "protocol http: the url is the server's HTTP port"),
        ([f"segment.triton.url={server.http_url}", "segment.triton.protocol=http",
          "segment.triton.model=nope"], "has no ready model 'nope' (segment.triton.model)"),
    ]
    for overrides, message in cases:
        cmd = [sys.executable, "-m", "orstream.pipeline.cli", "run", "--frames", "5",
               "--set", "segment.backend=triton", "--set", "describe.enabled=false"]
        for o in overrides:
            cmd += ["--set", o]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr[-2000:]
        assert message in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr


@needs_server
def test_serve_restarts_a_crashed_server_and_cleans_up(repo):
    """`orstream serve --triton`: a server that dies is restarted (rooms reconnect on their
    own); Ctrl-C stops it with nothing left in /dev/shm or the process table."""
    import tritonclient.grpc as grpcclient

    ports = [free_port() for _ in range(3)]
    cmd = [sys.executable, "-m", "orstream.pipeline.cli", "serve", "--triton", str(repo),
           "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
           "--metrics-port", str(ports[2])]
    serve = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = serve.stdout.readline()
        while line and "Triton serving" not in line:
            line = serve.stdout.readline()
        assert f"127.0.0.1:{ports[1]}" in line
        # rooms on this host are told the HTTP settings too
        assert (f"--set segment.triton.protocol=http --set segment.triton.url=127.0.0.1:"
                f"{ports[0]}") in serve.stdout.readline()
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports[1]}")
        assert client.is_model_ready("orstream_unet")
        first = _server_pid(serve.pid)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if client.is_model_ready("orstream_unet") and _server_pid(serve.pid) != first:
                    break
            except Exception:  # noqa: BLE001 - down until restarted
                pass
            time.sleep(0.1)
        assert _server_pid(serve.pid) not in (None, first)
        serve.send_signal(signal.SIGINT)
        out, _ = serve.communicate(timeout=30)
    finally:
        if serve.poll() is None:
            serve.kill()
    assert serve.returncode == 0, out[-2000:]
    assert "exited with -9 (restart 1)" in out
    assert not list(Path("/dev/shm").glob(f"orstream_triton_{serve.pid}_*"))


def _server_pid(parent: int) -> int | None:
    """The tritonserver process `orstream serve` (pid `parent`) runs now."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"tritonserver" in cmdline.split(b"\0")[0]:
            return int(proc.name)
    return None


def test_a_missing_server_package_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pytriton" else real(name, *a))
    with pytest.raises(TritonServerError, match="pip install --no-deps nvidia-pytriton"):
        Distribution.find()


def test_a_non_loopback_server_needs_tls_or_insecure(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"')
    with pytest.raises(UsageError, match="--tls-cert"):
        TritonServer(tmp_path, address="0.0.0.0")


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "1", "-subj", "/CN=orstream test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "san").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san")
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


@needs_server
@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI to make certificates")
def test_tls_server_serves_tls_rooms_only(repo, tmp_path):
    """A server with --tls-cert/--tls-key: a room with segment.triton.tls and the CA gets
    labels; a room without TLS is told the url does not answer, and that TLS may be why."""
    from orstream.engines.backends.triton_backend import TritonEngine, TritonTarget

    ca, cert, key = _certificates(tmp_path)
    with TritonServer(repo, tls=(cert, key)) as server:
        engine = TritonEngine(TritonTarget(server.url, tls=True, root_certificates=ca))
        try:
            assert engine(_frames(1)[0]).shape == (256, 320)
        finally:
            engine.close()
        with pytest.raises(BackendError, match="needs segment.triton.tls"):
            TritonEngine(TritonTarget(server.url, timeout_s=2))


def _outward_address() -> str | None:
    """This host's address on its default route (no packet is sent), or None without one."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the route
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


@needs_server
@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI to make certificates")
def test_a_tls_server_on_the_network_keeps_its_plain_http_on_loopback(repo, tmp_path):
    """Triton's HTTP endpoint has no TLS. A server listening on every address with TLS
    (gRPC) must not also serve frames in clear over HTTP there: its HTTP stays on loopback,
    where rooms on the same host use it (protocol http, shared memory)."""
    import socket

    from orstream.engines.backends.triton_backend import TritonEngine, TritonTarget

    ca, cert, key = _certificates(tmp_path)
    with TritonServer(repo, address="0.0.0.0", tls=(cert, key)) as server:
        assert server.http_url == f"127.0.0.1:{server.ports.http}"
        engine = TritonEngine(TritonTarget(server.http_url, protocol="http"))
        try:
            assert engine(_frames(1)[0]).shape == (256, 320)
        finally:
            engine.close()
        outward = _outward_address()
        if outward is not None:  # the network side: gRPC (TLS) answers, HTTP is not there
            socket.create_connection((outward, server.ports.grpc), timeout=2).close()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((outward, server.ports.http), timeout=2)


@needs_server
@pytest.mark.parametrize("protocol, shared", [("grpc", True), ("grpc", False),
                                              ("http", False)],
                         ids=["grpc-shm", "grpc", "http"])
def test_a_server_back_with_other_weights_is_never_used(tmp_path, protocol, shared):
    """A server restarted with a repository exported from another checkpoint (same model
    name, same size): the room stays unlabelled and says why, instead of drawing the other
    model's labels with its own class names. Over plain gRPC the restart itself goes
    unnoticed: the version each response names is what catches it."""
    from loguru import logger

    from orstream.engines.backends.triton_backend import (
        TritonEngine,
        TritonOffline,
        TritonTarget,
    )
    repo = tmp_path / "repo"
    export_triton_repo(TYPES, repo, TritonModelOptions(threads=1))
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="ERROR")
    server = TritonServer(repo)
    server.start()
    server.wait_ready()
    url = server.http_url if protocol == "http" else server.url
    engine = TritonEngine(TritonTarget(url, shared_memory=shared, reconnect_min_s=0.05,
                                       reconnect_max_s=0.1, protocol=protocol),
                          weights_sha256=file_sha256(TYPES), weights_name="segment.weights")
    try:
        frame = _frames(1)[0]
        assert engine(frame).shape == (256, 320)
        server.stop()
        export_triton_repo(BINARY, repo, TritonModelOptions(threads=1))  # same name and size
        server.start()
        server.wait_ready()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            with pytest.raises(TritonOffline):
                engine(frame)
            time.sleep(0.1)
        assert not engine.online
        assert sum("exported from other weights" in line for line in lines) == 1, lines
    finally:
        logger.remove(sink)
        engine.close()
        server.stop()
