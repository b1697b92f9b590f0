"""Building engines into the cache and loading them: what `orstream export` and the segment
stage call.

`resolve` turns a request that may say `auto` into a concrete backend and precision, and
says why; `export_engine` builds (or finds) the cached engine; `load_engine` returns a
callable engine, building it first when the cache has none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from orstream.engines import checkpoint as ckpt
from orstream.engines.backends import BACKENDS, BackendError, Engine, backend_class
from orstream.engines.backends.base import device_name
from orstream.engines.cache import EngineCache, EngineKey, Entry, file_sha256

# Fastest first, as benchmarks/engines.py measured them (reports in benchmarks/reports/):
# what `backend: auto` walks when the config gives no list of its own.
DEFAULT_AUTO_BACKENDS: dict[str, tuple[str, ...]] = {
    "cpu": ("openvino", "onnxruntime", "compile", "torch"),
    "cuda": ("tensorrt", "compile", "torch"),
}


@dataclass(frozen=True)
class Resolved:
    backend: str
    precision: str
    why: str  # how `auto` was decided, for the log


def resolve(backend: str, precision: str, device: str,
            auto_backends: Sequence[str] | None = None) -> Resolved:
    """Concrete backend and precision for a request; `auto` picks the first backend in the
    preference list this machine can serve and its fastest native float precision. A named
    backend or precision that cannot be served raises BackendError, never a fallback."""
    reasons: list[str] = []
    if backend == "auto":
        candidates = list(auto_backends or DEFAULT_AUTO_BACKENDS[device])
    else:
        candidates = [backend]
    for name in candidates:
        cls = backend_class(name)
        if device not in cls.devices:
            reasons.append(f"{name}: not on {device}")
            continue
        try:
            chosen = cls.native_precisions(device)[0] if precision == "auto" else precision
            cls.check(chosen, device)
        except BackendError as exc:
            if backend != "auto":
                raise
            reasons.append(f"{name}: {exc}")
            continue
        why = "as configured" if backend != "auto" else "auto: first servable of " + ", ".join(
            candidates)
        if precision == "auto":
            why += f"; precision auto: {chosen} is this machine's fastest native for {name}"
        if reasons:
            why += " (skipped " + "; ".join(reasons) + ")"
        return Resolved(name, chosen, why)
    raise BackendError(f"no backend among {', '.join(candidates)} can serve device {device}: "
                       + "; ".join(reasons))


def engine_key(weights: Path, checkpoint: ckpt.Checkpoint, size: tuple[int, int],
               backend: str, precision: str, device: str,
               extra: dict[str, str] | None = None) -> EngineKey:
    return EngineKey(weights_sha256=file_sha256(weights), model=checkpoint.model_name,
                     input_size=tuple(size), precision=precision, backend=backend,
                     device=device_name(device), versions=backend_class(backend).versions(),
                     extra=extra or {})


def check_size(checkpoint: ckpt.Checkpoint, size: tuple[int, int]) -> None:
    multiple = checkpoint.config.multiple
    if size[0] % multiple or size[1] % multiple or min(size) <= 0:
        raise BackendError(f"input size {size[0]}x{size[1]} must be positive multiples of "
                           f"{multiple} for {checkpoint.model_name} (it downsamples "
                           f"{checkpoint.config.depth} times)")


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
        rows.append({
            "entry": entry.folder.name,
            "backend": key.get("backend"), "precision": key.get("precision"),
            "input": "x".join(str(v) for v in key.get("input_size", [])),
            "model": key.get("model"), "device": key.get("device"),
            "weights_sha256": (key.get("weights_sha256") or "")[:12],
            "mb": round(entry.meta.get("engine_bytes", 0) / 1e6, 1),
            "build_s": entry.meta.get("build_s"), "built_at": entry.meta.get("built_at"),
            "status": entry.problem or "ok",
        })
    return rows


def export_engine(weights: Path | str, backend: str, precision: str,
                  size: tuple[int, int] | None = None, device: str = "cpu",
                  cache: EngineCache | None = None, rebuild: bool = False,
                  checkpoint: ckpt.Checkpoint | None = None) -> Entry:
    """Build the engine for this request into the cache (or find it there)."""
    weights = Path(weights)
    checkpoint = checkpoint or ckpt.load(weights)
    size = tuple(size or checkpoint.input_size)
    check_size(checkpoint, size)
    cls = backend_class(backend)
    cls.check(precision, device)
    cache = cache or EngineCache()
    key = engine_key(weights, checkpoint, size, backend, precision, device)
    if not rebuild and (entry := cache.lookup(key)) is not None:
        logger.info("engine cache hit: {} (built {} in {:.1f} s)", entry.folder.name,
                    entry.meta["built_at"], entry.meta["build_s"])
        return entry
    logger.info("building {} {} engine for {} at {}x{} on {} ...", backend, precision,
                weights.name, size[0], size[1], key.device)
    t0 = time.perf_counter()

    def build(out: Path) -> None:
        full = checkpoint if checkpoint.has_weights else ckpt.load(weights)
        with _heartbeat(f"building {backend} {precision}"):
            cls.build(full, size, precision, device, out)

    entry = cache.store(key, cls.artifact, build,
                        notes={"weights": str(weights), "note": None if cls.artifact else
                               "eager torch runs from the weights: nothing to compile"})
    logger.info("built {} in {:.1f} s ({:.1f} MB) -> {}", backend, time.perf_counter() - t0,
                entry.meta["engine_bytes"] / 1e6, entry.folder)
    return entry


def calibrated_entry(weights: Path, checkpoint: ckpt.Checkpoint, size: tuple[int, int],
                     backend: str, device: str, cache: EngineCache | None) -> Entry:
    """The gated INT8 engine for these weights, size, backend and machine, or an error that
    says how to make one (INT8 needs a calibration set, so it is never built on the fly)."""
    backend_class(backend).check("int8", device)
    cache = cache or EngineCache()
    key = engine_key(weights, checkpoint, size, backend, "int8", device)
    entry = cache.calibrated(key)
    if entry is None:
        raise BackendError(
            f"no INT8 {backend} engine for {weights.name} at {size[0]}x{size[1]} on this "
            f"machine in {cache.root}: make one with `orstream calibrate collect --source "
            f"SPEC --out calib.npz` then `orstream calibrate build --weights {weights} "
            f"--backend {backend} --calib calib.npz`, or use precision fp32")
    logger.info("INT8 engine {} (calibration {}, gate drop {:.2f} Dice points)",
                entry.folder.name, entry.meta["key"]["extra"]["calibration_sha256"][:12],
                entry.meta["gate"]["drop_dice_points"])
    return entry


def load_engine(weights: Path | str, backend: str = "torch", precision: str = "fp32",
                size: tuple[int, int] | None = None, device: str = "cpu",
                threads: int | None = None, cache: EngineCache | None = None,
                checkpoint: ckpt.Checkpoint | None = None) -> Engine:
    """A ready engine for the request (concrete backend and precision; see `resolve`)."""
    weights = Path(weights)
    checkpoint = checkpoint or ckpt.load(weights)
    size = tuple(size or checkpoint.input_size)
    check_size(checkpoint, size)
    cls = backend_class(backend)
    if cls.artifact is None:  # eager torch runs from the weights themselves
        from orstream.engines.backends.torch_backend import TorchSegmenter

        if not checkpoint.has_weights:
            checkpoint = ckpt.load(weights)
        return TorchSegmenter(checkpoint, precision, device, threads, size)
    if precision == "int8":
        entry = calibrated_entry(weights, checkpoint, size, backend, device, cache)
    else:
        entry = export_engine(weights, backend, precision, size, device, cache,
                              checkpoint=checkpoint)
    try:
        return cls(entry.engine_file, size, precision, device, threads)
    except BackendError:
        raise
    except Exception as exc:  # a cache entry that hashes right but will not load
        raise BackendError(f"the cached {backend} engine {entry.folder} does not load "
                           f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}): "
                           f"rebuild it with `orstream export --rebuild`") from exc


__all__ = ["BACKENDS", "DEFAULT_AUTO_BACKENDS", "Resolved", "cache_listing", "export_engine",
           "load_engine", "resolve"]
