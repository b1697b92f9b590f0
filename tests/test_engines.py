"""Every backend this machine has must segment like eager fp32 (the reference), the engine
cache must never hand back a stale or damaged engine, and what the machine cannot serve is an
error that says what it can do."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from orstream.common.crop import endovis_region
from orstream.common.errors import OrstreamError
from orstream.engines import checkpoint as ckpt
from orstream.engines.backends import BACKENDS, NAMES, BackendError
from orstream.engines.backends.base import PRECISIONS
from orstream.engines.backends.torch_backend import TorchSegmenter, cpu_bf16_supported
from orstream.engines.cache import EngineCache
from orstream.engines.export import EngineSpec, cache_listing, export_engine, open_engine, resolve
from orstream.engines.preprocess import resize_image
from orstream.pipeline.cli import main
from orstream.pipeline.config import load_config
from orstream.pipeline.runner import Pipeline
from orstream.training.synth.generator import SynthConfig, SyntheticEndoscope

WEIGHTS = ckpt.shipped("types")


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """50 synthetic frames through the live path's crop and resize: (50, 256, 320, 3)."""
    synth = SyntheticEndoscope(SynthConfig(seed=4242))
    y, x, h, w = endovis_region(1080, 1920)
    return np.stack([resize_image(synth.render(i * 7).image[y:y + h, x:x + w], (256, 320))
                     for i in range(50)])


@pytest.fixture(scope="module")
def reference(frames) -> np.ndarray:
    engine = TorchSegmenter(WEIGHTS, (256, 320), "fp32")
    return np.stack([engine(f) for f in frames])


def _agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(pixel agreement, Dice of the instrument pixels labelled the same class)."""
    same_fg = np.count_nonzero((a == b) & (a > 0))
    dice = 2 * same_fg / max(1, np.count_nonzero(a > 0) + np.count_nonzero(b > 0))
    return float((a == b).mean()), dice


def _servable(backend: str, precision: str, device: str = "cpu") -> str | None:
    """Why this machine cannot run the combination, or None when it can."""
    if device not in BACKENDS[backend].devices:
        return f"{backend} does not run on {device}"
    try:
        BACKENDS[backend].check(precision, device)
    except BackendError as exc:
        return str(exc)
    return None


# Every registered backend in every float precision: what this machine cannot serve is
# skipped with its reason (int8 needs a calibrated engine: tests/test_calibration.py).
FLOAT_ENGINES = [(b, p) for b in NAMES for p in PRECISIONS if p != "int8"]


@pytest.mark.parametrize(("backend", "precision"), FLOAT_ENGINES)
def test_every_servable_backend_opens_and_segments_like_eager_fp32(backend, precision, frames,
                                                                 reference, tmp_path):
    why = _servable(backend, precision)
    if why is not None:
        pytest.skip(why)
    engine = open_engine(EngineSpec(WEIGHTS, backend, precision, cache=tmp_path))
    assert (engine.name, engine.precision, engine.input_size) == (backend, precision, (256, 320))
    labels = np.stack([engine(f) for f in frames])
    assert labels.dtype == np.uint8 and labels.shape == reference.shape
    agreement, dice = _agreement(reference, labels)
    assert agreement >= 0.995, f"{backend} {precision}: pixel agreement {agreement:.4f}"
    assert dice >= 0.99, f"{backend} {precision}: Dice with eager fp32 {dice:.4f}"
    assert (reference > 0).mean() > 0.02, "frames without instruments prove nothing"


def test_exported_engines_take_a_batch(frames, reference):
    engine = open_engine(EngineSpec(WEIGHTS, "onnxruntime", "fp32"))
    assert np.array_equal(engine.run(frames[:4]), np.stack([engine(f) for f in frames[:4]]))


def test_cache_hits_and_rebuilds_a_corrupted_engine(tmp_path, frames, reference):
    cache = EngineCache(tmp_path)
    spec = EngineSpec(WEIGHTS, "onnxruntime", "fp32", cache=tmp_path)
    first = export_engine(spec)
    again = export_engine(spec)
    assert again.folder == first.folder and again.meta["built_at"] == first.meta["built_at"]
    assert (first.folder / "meta.json").is_file() and first.engine_file.stat().st_size > 10_000

    # Damage the engine: the listing says so, and loading rebuilds a working one.
    data = bytearray(first.engine_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.engine_file.write_bytes(bytes(data))
    assert "corrupted" in cache_listing(cache)[0]["status"]
    engine = open_engine(spec)
    assert np.array_equal(engine(frames[0]), reference[0])
    assert cache_listing(cache)[0]["status"] == "ok"


def test_an_entry_built_for_other_versions_is_never_loaded(tmp_path):
    spec = EngineSpec(WEIGHTS, "onnxruntime", "fp32", cache=tmp_path)
    entry = export_engine(spec)
    meta = json.loads((entry.folder / "meta.json").read_text())
    meta["key"]["versions"]["onnxruntime"] = "0.0.1"  # as if built by another install
    (entry.folder / "meta.json").write_text(json.dumps(meta))
    rebuilt = export_engine(spec)
    assert rebuilt.meta["key"]["versions"]["onnxruntime"] != "0.0.1"


def test_the_key_separates_sizes_precisions_and_weights(tmp_path):
    spec = EngineSpec(WEIGHTS, "onnxruntime", "fp32", cache=tmp_path)
    a = export_engine(spec)
    b = export_engine(replace(spec, size=(128, 160)))
    c = export_engine(replace(spec, weights=ckpt.shipped("binary")))
    assert len({a.folder, b.folder, c.folder}) == 3
    assert open_engine(replace(spec, size=(128, 160))).input_size == (128, 160)


AVX2_ONLY = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
AVX512_VNNI = ("model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512bw avx512_vnni "
               "avx512_bf16\n")
ORIN = "processor\t: 0\nFeatures\t: fp asimd aes crc32 atomics asimddp\n"


def test_the_device_key_tells_apart_cpus_that_share_a_model_name(monkeypatch):
    """Two guests both called "AMD EPYC", one shown AVX-512 and VNNI by its hypervisor and one
    AVX2 only, run different kernels: an engine built on one must not be loaded on the other,
    and the AVX2-only one needs 7-bit INT8 weights."""
    from orstream.engines.backends import base

    assert base.parse_isa(AVX2_ONLY) == ("avx2",)
    assert base.parse_isa(AVX512_VNNI) == ("avx2", "avx512f", "avx512_vnni", "avx512_bf16")
    assert base.parse_isa(ORIN) == ("asimddp",)
    assert base.needs_reduced_int8_range(base.parse_isa(AVX2_ONLY))
    assert not base.needs_reduced_int8_range(base.parse_isa(AVX512_VNNI))
    assert not base.needs_reduced_int8_range(base.parse_isa(ORIN))
    keys = set()
    for text in (AVX2_ONLY, AVX512_VNNI):
        monkeypatch.setattr(base, "cpu_isa", lambda text=text: base.parse_isa(text))
        keys.add(base.device_name("cpu"))
    assert keys == {"cpu:" + base.cpu_name() + " (avx2)",
                    "cpu:" + base.cpu_name() + " (avx2 avx512f avx512_vnni avx512_bf16)"}


def test_checkpoint_metadata_comes_from_the_index_once_written(tmp_path):
    first = ckpt.load_info(WEIGHTS, tmp_path)  # not indexed yet: a full load writes the entry
    assert first.has_weights
    (entry,) = tmp_path.glob("*.json")
    again = ckpt.load_info(WEIGHTS, tmp_path)
    assert not again.has_weights
    assert (again.model_name, again.task, again.classes, again.input_size, again.config,
            again.mean, again.std) == (first.model_name, first.task, first.classes,
                                       first.input_size, first.config, first.mean, first.std)
    with pytest.raises(ckpt.CheckpointError, match="metadata only"):
        again.build()
    with pytest.raises(ckpt.CheckpointError, match="segments task 'types' but 'binary'"):
        ckpt.load_info(WEIGHTS, tmp_path, task="binary")
    entry.write_text("{not json")  # a damaged entry is never trusted: loaded and rewritten
    assert ckpt.load_info(WEIGHTS, tmp_path).has_weights
    assert json.loads(entry.read_text())["model_name"] == first.model_name


NO_TORCH_START = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch imported on the cached start-up path")

sys.meta_path.insert(0, NoTorch())
import numpy as np
from orstream.pipeline.config import load_config
from orstream.pipeline.frame import Frame
from orstream.pipeline.stages import SegmentStage

stage = SegmentStage(load_config(None, publish__endpoint=None))
stage.open()
frame = stage.process(Frame.capture("t", 0, np.zeros((1080, 1920, 3), np.uint8)))
print(stage.engine.describe()["backend"], frame.labels.shape)
"""


def test_a_cached_engine_starts_without_importing_torch():
    """Start-up: once the default engine and the weights' metadata are cached, the segment
    stage opens and segments without importing torch (2.5 s of a 5.4 s start on an AVX2
    EPYC). The first start, here in the test process, builds and indexes them."""
    import subprocess
    import sys

    from orstream.pipeline.stages import SegmentStage

    stage = SegmentStage(load_config(None, publish__endpoint=None))
    stage.open()
    backend = stage.engine.describe()["backend"]
    assert backend != "torch"  # the eager backend is torch itself
    done = subprocess.run([sys.executable, "-c", NO_TORCH_START], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == backend and "(256, 320)" in done.stdout


def test_unservable_requests_name_what_the_machine_can_do(tmp_path):
    def export(backend, precision, **kw):
        return export_engine(EngineSpec(WEIGHTS, backend, precision, cache=tmp_path, **kw))

    with pytest.raises(BackendError, match="bf16 is not served by the onnxruntime.*fp32"):
        export("onnxruntime", "bf16")
    with pytest.raises(OrstreamError, match="multiples of 32.*nearest is 320x256"):
        export("openvino", "fp32", size=(250, 320))
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="no CUDA device"):
            export("compile", "fp16", device="cuda")
    with pytest.raises(BackendError, match="tensorrt runs on cuda only"):
        export("tensorrt", "fp16")
    with pytest.raises(BackendError, match="unknown backend 'openvin'.*openvino"):
        export("openvin", "fp32")
    if not cpu_bf16_supported():
        with pytest.raises(BackendError, match="no native bf16"):
            export("compile", "bf16")
    assert issubclass(BackendError, OrstreamError) and BackendError.exit_code == 2


def test_auto_picks_a_servable_backend_and_says_why(tmp_path):
    chosen = resolve(EngineSpec(WEIGHTS, cache=tmp_path))
    assert chosen.backend == "openvino"  # installed with orstream; fastest measured on CPUs
    assert chosen.precision == ("bf16" if "bf16" in BACKENDS["openvino"].native_precisions(
        "cpu") else "fp32")
    assert "auto" in chosen.why and chosen.size == (256, 320)
    # A preference list whose first entry cannot run on the device moves on, and says so.
    chosen = resolve(EngineSpec(WEIGHTS, "auto", "fp32", cache=tmp_path,
                                auto_backends=("tensorrt", "onnxruntime")))
    assert chosen.backend == "onnxruntime" and "tensorrt" in chosen.why
    with pytest.raises(BackendError):  # named: an error, never a fallback
        resolve(EngineSpec(WEIGHTS, "onnxruntime", "bf16", cache=tmp_path))


def test_backend_names_come_from_the_registry():
    """The config, the CLI and `auto` all take their backend names from one registry."""
    from orstream.engines.backends import AUTO_ORDER, INT8_DEVICE
    from orstream.pipeline.cli import build_parser
    from orstream.pipeline.config import ConfigError

    assert load_config(None, []).segment.auto_backends == {d: list(n) for d, n in
                                                          AUTO_ORDER.items()}
    with pytest.raises(ConfigError,
                       match="openvin.*choose auto, triton .* or one of torch, compile"):
        load_config(None, ["segment.backend=openvin"])
    parser = build_parser()
    for argv in (["export", "--backend", "nope"],
                 ["calibrate", "build", "--backend", "torch", "--weights", "w", "--calib", "c"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    assert parser.parse_args(["export", "--backend", NAMES[-1]]).backend == NAMES[-1]
    assert set(INT8_DEVICE) <= set(NAMES)


def test_export_command_builds_lists_and_refuses(tmp_path, capsys):
    args = ["export", "--weights", str(WEIGHTS), "--backend", "openvino", "--precision",
            "fp32", "--size", "160x128", "--cache", str(tmp_path)]  # WxH
    assert main(args) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert (folder / "model.blob").is_file()
    assert main(["export", "--list", "--json", "--cache", str(tmp_path)]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [(e["backend"], e["input"], e["status"]) for e in listing["entries"]] == [
        ("openvino", "160x128", "ok")]
    assert main(args[:-4] + ["--precision", "fp16", "--backend", "onnxruntime",
                             "--cache", str(tmp_path)]) == 2


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_pipeline_runs_on_each_cpu_backend(backend):
    cfg = load_config(None, [f"segment.backend={backend}", "segment.precision=fp32",
                             "source.width=640", "source.height=360"],
                      publish__endpoint=None)
    result = Pipeline(cfg, max_frames=8, keep_traces=True).run()
    assert result.frames_out == 8
    assert all([s for s, *_ in t][:2] == ["capture", "segment"] for t in result.traces)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("backend", "precision"), [
    ("torch", "fp32"), ("torch", "fp16"), ("compile", "fp32"), ("compile", "fp16"),
    ("tensorrt", "fp16")])
def test_cuda_backend_segments_like_cpu_fp32(backend, precision, frames, reference):
    if backend == "tensorrt" and not _installed("torch_tensorrt"):
        pytest.skip("torch_tensorrt is not installed: pip install 'orstream[tensorrt]'")
    engine = open_engine(EngineSpec(WEIGHTS, backend, precision, device="cuda"))
    labels = np.stack([engine(f) for f in frames])
    agreement, dice = _agreement(reference, labels)
    assert agreement >= 0.995 and dice >= 0.99, (backend, precision, agreement, dice)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_crop_and_resize_match_the_cpu_path():
    from orstream.engines.preprocess import CudaFramePrep

    frame = SyntheticEndoscope(SynthConfig(seed=5)).render(30).image
    region = endovis_region(1080, 1920)
    y, x, h, w = region
    cpu = resize_image(frame[y:y + h, x:x + w], (256, 320)).astype(int)
    prep = CudaFramePrep((256, 320))
    gpu = prep(frame, region)[0].cpu().numpy().astype(int)
    assert gpu.shape == cpu.shape
    assert np.mean(np.abs(gpu - cpu) <= 1) > 0.99  # rounding differs, the filter does not


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["torch", "compile"])
def test_pipeline_runs_on_cuda(backend):
    cfg = load_config(None, [f"segment.backend={backend}", "segment.device=cuda",
                             "segment.precision=fp16"], publish__endpoint=None)
    result = Pipeline(cfg, max_frames=30, keep_traces=True).run()
    assert result.frames_out == 30
