"""Opening engines: one `EngineSpec` says what to run, `open_engine(spec)` returns it.

`resolve` turns a spec that may say `auto` into a concrete backend, precision and input size
(and says why); `export_engine` builds the engine into the cache or finds it there (what
`orstream export` calls); `open_engine` does both and constructs the backend, which is what
the segment stage, the benchmarks and the INT8 gate call. The backend class is looked up once,
in `resolve`, from the registry in engines/backends/__init__.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from loguru import logger

from orstream.common.errors import OrstreamError
from orstream.common.sizes import check_unet_input, format_hw
from orstream.engines import checkpoint as ckpt
from orstream.engines import tpsis_checkpoint as tckpt
from orstream.engines.backends import AUTO_ORDER, BACKENDS, BackendError, Engine, backend_class
from orstream.engines.backends.base import device_name
from orstream.engines.cache import EngineCache, EngineKey, Entry, file_sha256
from orstream.engines.tpsis_checkpoint import TPSISCheckpoint

# The backends that run TP-SIS: its prompt state is an input of the engine, which these
# export (ONNX with dynamic prompts) or run eagerly; compile and tensorrt build U-Nets only.
PROMPTED_BACKENDS = ("torch", "onnxruntime", "openvino")


@dataclass(frozen=True)
class EngineSpec:
    """Everything that decides which engine is opened."""

    weights: Path
    backend: str = "auto"  # a registered backend (engines/backends), or auto
    precision: str = "auto"  # fp32 | bf16 | fp16 | int8, or auto: the fastest native float
    size: tuple[int, int] | None = None  # (H, W) model input; None: what it was trained at
    device: str = "cpu"
    threads: int | None = None  # inference threads; None: the backend's default
    cache: Path | None = None  # engine cache; None: $ORSTREAM_ENGINE_CACHE or ~/.cache/...
    auto_backends: tuple[str, ...] | None = None  # what auto tries; None: AUTO_ORDER[device]


@dataclass(frozen=True)
class Resolved:
    """A spec with nothing left on auto, the backend class that serves it, and why."""

    spec: EngineSpec  # backend, precision and size concrete
    cls: type[Engine]
    # metadata at least (engines.checkpoint.load_info); TP-SIS: the full checkpoint
    checkpoint: ckpt.Checkpoint | TPSISCheckpoint
    why: str  # how `auto` was decided, for the log

    @property
    def prompted(self) -> bool:
        """A TP-SIS engine: it takes the prompt state beside the frames."""
        return isinstance(self.checkpoint, TPSISCheckpoint)

    @property
    def backend(self) -> str:
        return self.spec.backend

    @property
    def precision(self) -> str:
        return self.spec.precision

    @property
    def size(self) -> tuple[int, int]:
        assert self.spec.size is not None, "a resolved spec has a size"
        return self.spec.size

    @property
    def cache(self) -> EngineCache:
        return EngineCache(self.spec.cache)

    def key(self, extra: dict[str, str] | None = None) -> EngineKey:
        """The engine cache's key: weights, model, size, precision, backend, device, versions
        (TP-SIS: and the graph's fixed token axis, which its prompt inputs are padded to)."""
        if self.prompted:
            from orstream.engines.tpsis_engine import ENGINE_GRAPH, PROMPT_TOKENS

            extra = {"graph": ENGINE_GRAPH, "prompt_tokens": str(PROMPT_TOKENS),
                     **(extra or {})}
        return EngineKey(weights_sha256=file_sha256(self.spec.weights),
                         model=self.checkpoint.model_name, input_size=self.size,
                         precision=self.precision, backend=self.backend,
                         device=device_name(self.spec.device), versions=self.cls.versions(),
                         extra=extra or {})


@dataclass(frozen=True)
class Origin:
    """Where an opened engine came from: set on it as `engine.origin` by open_engine."""

    resolved: Resolved
    entry: Entry | None  # its engine cache entry; None: eager torch, run from the weights
    ready_s: float  # resolving, building or finding, and loading it


def resolve(spec: EngineSpec) -> Resolved:
    """The concrete engine for a spec: `auto` picks the first backend in the preference list
    this machine can serve and its fastest native float precision. A named backend or
    precision that cannot be served raises BackendError, never a fallback."""
    weights = Path(spec.weights)
    checkpoint = _model_info(weights, EngineCache(spec.cache).checkpoint_index)
    size = check_unet_input(tuple(spec.size or checkpoint.input_size))
    if spec.backend == "auto":
        candidates = list(spec.auto_backends or AUTO_ORDER[spec.device])
    else:
        candidates = [spec.backend]
    prompted = isinstance(checkpoint, TPSISCheckpoint)
    if prompted and spec.precision == "int8":
        raise BackendError("precision int8: TP-SIS has no calibrated INT8 engines (the "
                           "calibration gate measures the types U-Net): use fp32 or auto")
    reasons: list[str] = []
    for name in candidates:
        if prompted and name not in PROMPTED_BACKENDS:
            why_not = (f"TP-SIS runs on the {', '.join(PROMPTED_BACKENDS)} backends; {name} "
                       f"builds U-Net engines only")
            if spec.backend != "auto":
                raise BackendError(f"backend {name} asked for, but {why_not}")
            reasons.append(f"{name}: TP-SIS not supported")
            continue
        cls = backend_class(name)
        if spec.backend == "auto" and spec.device not in cls.devices:
            reasons.append(f"{name}: not on {spec.device}")
            continue
        try:
            chosen = (cls.native_precisions(spec.device)[0] if spec.precision == "auto"
                      else spec.precision)
            cls.check(chosen, spec.device)
        except BackendError as exc:
            if spec.backend != "auto":
                raise
            reasons.append(f"{name}: {exc}")
            continue
        why = ("as configured" if spec.backend != "auto"
               else "auto: first servable of " + ", ".join(candidates))
        if spec.precision == "auto":
            why += f"; precision auto: {chosen} is this machine's fastest native for {name}"
        if reasons:
            why += " (skipped " + "; ".join(reasons) + ")"
        concrete = replace(spec, weights=weights, backend=name, precision=chosen, size=size)
        return Resolved(concrete, cls, checkpoint, why)
    raise BackendError(f"no backend among {', '.join(candidates)} can serve device "
                       f"{spec.device}: " + "; ".join(reasons))


def _model_info(weights: Path, index: Path) -> ckpt.Checkpoint | TPSISCheckpoint:
    """A U-Net's metadata (from the index, without torch, when it is there), or a TP-SIS
    checkpoint in full: TP-SIS encodes its prompts in torch anyway."""
    try:
        return ckpt.load_info(weights, index)
    except ckpt.CheckpointError as exc:
        if f"{tckpt.FORMAT!r}" not in str(exc):
            raise
    return tckpt.load(weights)


@contextmanager
def _heartbeat(what: str, every_s: float = 10.0) -> Iterator[None]:
    """A line every `every_s` while a long build runs (AOTInductor and TensorRT take
    minutes), so a quiet terminal never looks hung."""
    done = threading.Event()
    t0 = time.perf_counter()

    def beat() -> None:
        while not done.wait(every_s):
            logger.info("{}: {:.0f} s so far", what, time.perf_counter() - t0)

    thread = threading.Thread(target=beat, name="export-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def cache_listing(cache: EngineCache) -> list[dict]:
    """One row per cache entry, for `orstream export --list`."""
    rows = []
    for entry in cache.entries():
        key = entry.meta.get("key", {})
        size = key.get("input_size") or []
        rows.append({
            "entry": entry.folder.name,
            "backend": key.get("backend"), "precision": key.get("precision"),
            "input": format_hw(tuple(size)) if len(size) == 2 else "",
            "model": key.get("model"), "device": key.get("device"),
            "weights_sha256": (key.get("weights_sha256") or "")[:12],
            "mb": round(entry.meta.get("engine_bytes", 0) / 1e6, 1),
            "build_s": entry.meta.get("build_s"), "built_at": entry.meta.get("built_at"),
            "status": entry.problem or "ok",
        })
    return rows


def _build_or_find(plan: Resolved, rebuild: bool = False) -> Entry:
    """The float engine for a resolved spec, from the cache or built into it."""
    cache, key = plan.cache, plan.key()
    if not rebuild and (entry := cache.lookup(key)) is not None:
        logger.info("engine cache hit: {} (built {} in {:.1f} s)", entry.folder.name,
                    entry.meta["built_at"], entry.meta["build_s"])
        return entry
    weights, size = plan.spec.weights, plan.size
    logger.info("building {} {} engine for {} at {} on {} ...", plan.backend, plan.precision,
                weights.name, format_hw(size), key.device)
    t0 = time.perf_counter()

    def build(out: Path) -> None:
        full = plan.checkpoint if plan.checkpoint.has_weights else ckpt.load(weights)
        with _heartbeat(f"building {plan.backend} {plan.precision}"):
            plan.cls.build(full, size, plan.precision, plan.spec.device, out)

    entry = cache.store(key, plan.cls.artifact, build,
                        notes={"weights": str(weights), "note": None if plan.cls.artifact else
                               "eager torch runs from the weights: nothing to compile"})
    logger.info("built {} in {:.1f} s ({:.1f} MB) -> {}", plan.backend,
                time.perf_counter() - t0, entry.meta["engine_bytes"] / 1e6, entry.folder)
    return entry


def int8_howto(spec: EngineSpec) -> str:
    """The commands that make a gated INT8 engine for this (resolved) spec."""
    assert spec.size is not None, "int8_howto takes a resolved spec"
    cache = f" --cache {spec.cache}" if spec.cache is not None else ""
    return (f"orstream calibrate collect --source synthetic --frames 300 --size "
            f"{format_hw(spec.size)} --out calib.npz && orstream calibrate build --weights "
            f"{spec.weights} --backend {spec.backend} --calib calib.npz{cache}")


class NoInt8Engine(BackendError):
    """precision int8 asked for, and the cache has no gated INT8 engine for it."""


def calibrated_entry(plan: Resolved) -> Entry:
    """The gated INT8 engine for a resolved int8 spec, or an error that says how to make one
    (INT8 needs a calibration set, so it is never built on the fly)."""
    entry = plan.cache.calibrated(plan.key())
    if entry is None:
        raise NoInt8Engine(
            f"precision int8: no gated INT8 {plan.backend} engine for {plan.spec.weights.name} "
            f"at {format_hw(plan.size)} on this machine in {plan.cache.root}: make one with "
            f"`{int8_howto(plan.spec)}` (add --source RECORDING for your own video), or set "
            f"segment.precision to fp32 or auto")
    logger.info("INT8 engine {} (calibration {}, gate drop {:.2f} Dice points)",
                entry.folder.name, entry.meta["key"]["extra"]["calibration_sha256"][:12],
                entry.meta["gate"]["drop_dice_points"])
    return entry


def export_engine(spec: EngineSpec, rebuild: bool = False) -> Entry:
    """Build the engine for this spec into the cache, or find it there (INT8: the gated one
    `orstream calibrate build` stored)."""
    plan = resolve(spec)
    if plan.precision == "int8":
        return calibrated_entry(plan)
    return _build_or_find(plan, rebuild)


def needs_build(plan: Resolved) -> bool:
    """Whether open_engine(plan) builds the engine (seconds to minutes) rather than load it:
    eager torch and INT8 engines are never built there."""
    if plan.cls.artifact is None or plan.precision == "int8":
        return False
    return plan.cache.lookup(plan.key()) is None


def open_engine(spec: EngineSpec | Resolved) -> Engine:
    """The ready, callable engine for a spec (or one already resolved): found in the cache
    or built into it, and loaded. `engine.origin` says how it was chosen and where from."""
    t0 = time.perf_counter()
    plan = spec if isinstance(spec, Resolved) else resolve(spec)
    logger.info("engine: {} {} at {} ({})", plan.backend, plan.precision,
                format_hw(plan.size), plan.why)
    entry: Entry | None = None
    if plan.cls.artifact is None:  # eager torch runs from the weights themselves
        artifact = plan.spec.weights
    else:
        entry = calibrated_entry(plan) if plan.precision == "int8" else _build_or_find(plan)
        artifact = entry.engine_file
    try:
        engine = plan.cls(artifact, plan.size, plan.precision, plan.spec.device,
                          plan.spec.threads)
    except OrstreamError:
        raise
    except Exception as exc:  # a cache entry that hashes right but will not load
        if entry is None:
            raise
        raise BackendError(f"the cached {plan.backend} engine {entry.folder} does not load "
                           f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}): "
                           f"rebuild it with `orstream export --rebuild`") from exc
    engine.origin = Origin(plan, entry, time.perf_counter() - t0)
    return engine


def describe_origin(engine: Engine) -> dict[str, Any]:
    """What a benchmark reports about an opened engine's provenance."""
    origin: Origin = engine.origin
    info: dict[str, Any] = {"backend": origin.resolved.backend,
                            "precision": origin.resolved.precision, "why": origin.resolved.why,
                            "weights": str(origin.resolved.spec.weights),
                            "engine_ready_s": round(origin.ready_s, 3)}
    if origin.entry is None:
        info["weights_sha256"] = file_sha256(origin.resolved.spec.weights)
    else:
        info["weights_sha256"] = origin.entry.meta["key"]["weights_sha256"]
        info["engine_build_s"] = origin.entry.meta.get("build_s")
        info["engine_cached"] = not origin.entry.built_now
    return info


__all__ = ["BACKENDS", "EngineSpec", "NoInt8Engine", "Origin", "Resolved", "cache_listing",
           "calibrated_entry", "describe_origin", "export_engine", "int8_howto", "needs_build",
           "open_engine", "resolve"]
