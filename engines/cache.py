"""The on-disk engine cache.

An engine is only valid for the exact weights, input shape, precision, backend and library
versions, and device it was built for: all of these make up its key, and the key's digest
names its folder. Each folder holds the engine file and `meta.json` (the key, the engine
file's SHA-256, when and how long it took to build). Metadata lives beside the engine, never
inside it, so `--list` reads no engine and a foreign engine file cannot pass for ours.

An entry is used only if its metadata parses, its key equals the one asked for, and the
engine file's hash matches: a truncated, corrupted or stale entry is reported and rebuilt.
Writes go to a temporary folder renamed into place, so a crash mid-build leaves nothing
that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

META = "meta.json"
META_FORMAT = "orstream.engine/1"


def user_cache_dir(name: str, env_var: str) -> Path:
    """$env_var if set, else $XDG_CACHE_HOME/orstream/<name> (~/.cache/orstream/<name>): the
    folder of one of orstream's caches (engines, synthetic textures)."""
    if os.environ.get(env_var):
        return Path(os.environ[env_var])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "orstream" / name


def default_cache_dir() -> Path:
    """ORSTREAM_ENGINE_CACHE, else $XDG_CACHE_HOME/orstream/engines (~/.cache/...)."""
    return user_cache_dir("engines", "ORSTREAM_ENGINE_CACHE")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineKey:
    weights_sha256: str
    model: str
    input_size: tuple[int, int]
    precision: str
    backend: str
    device: str  # "cpu:<CPU model>" or "cuda:<GPU name>"
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)  # e.g. the calibration set's hash

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        return data

    def digest(self) -> str:
        canonical = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def folder_name(self) -> str:
        h, w = self.input_size
        return f"{self.model}-{self.backend}-{self.precision}-{h}x{w}-{self.digest()}"


@dataclass
class Entry:
    folder: Path
    meta: dict[str, Any]
    problem: str | None = None  # why the entry cannot be used; None when it can
    built_now: bool = False  # made by this process's store(), not found in the cache

    @property
    def engine_file(self) -> Path | None:
        name = self.meta.get("engine_file")
        return self.folder / name if name else None


class EngineCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    @property
    def checkpoint_index(self) -> Path:
        """Where engines.checkpoint.load_info keeps checkpoints' metadata (a dot folder: not
        an engine entry)."""
        return self.root / ".checkpoints"

    def folder(self, key: EngineKey) -> Path:
        return self.root / key.folder_name()

    @staticmethod
    def inspect(folder: Path, key: EngineKey | None = None) -> Entry:
        """Read an entry and say what, if anything, is wrong with it."""
        try:
            meta = json.loads((folder / META).read_text())
        except (OSError, ValueError) as exc:
            return Entry(folder, {}, f"unreadable {META} ({exc.__class__.__name__})")
        if meta.get("format") != META_FORMAT:
            return Entry(folder, meta, f"metadata format {meta.get('format')!r}")
        if key is not None and meta.get("key") != key.as_dict():
            return Entry(folder, meta, "built for a different key (stale)")
        entry = Entry(folder, meta)
        if entry.engine_file is not None:
            if not entry.engine_file.is_file():
                entry.problem = f"engine file {entry.engine_file.name} is missing"
            elif file_sha256(entry.engine_file) != meta.get("engine_sha256"):
                entry.problem = f"engine file {entry.engine_file.name} is corrupted (hash)"
        return entry

    def lookup(self, key: EngineKey) -> Entry | None:
        """The valid entry for `key`, or None; an invalid one is reported and removed."""
        folder = self.folder(key)
        if not folder.exists():
            return None
        entry = self.inspect(folder, key)
        if entry.problem is None:
            return entry
        logger.warning("engine cache: {} is unusable ({}): rebuilding it", folder.name,
                       entry.problem)
        shutil.rmtree(folder, ignore_errors=True)
        return None

    def store(self, key: EngineKey, engine_file: str | None,
              build: Callable[[Path], None], notes: dict[str, Any] | None = None,
              build_s: float | None = None) -> Entry:
        """Run `build(path)` into a temporary folder, then move the entry into place.

        `build_s`: how long the engine took to make, for an engine made before this call
        (an INT8 engine is quantised and gated first, then only copied in); None: the time
        `build` takes."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=self.root))
        try:
            t0 = time.perf_counter()
            if engine_file is not None:
                build(tmp / engine_file)
            if build_s is None:
                build_s = time.perf_counter() - t0
            meta = {
                "format": META_FORMAT,
                "key": key.as_dict(),
                "engine_file": engine_file,
                "engine_sha256": file_sha256(tmp / engine_file) if engine_file else None,
                "engine_bytes": (tmp / engine_file).stat().st_size if engine_file else 0,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "build_s": round(build_s, 3),
                **(notes or {}),
            }
            (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
            final = self.folder(key)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Entry(final, meta, built_now=True)

    def calibrated(self, key: EngineKey) -> Entry | None:
        """The newest valid INT8 entry that matches `key` in everything but its calibration
        set and passed its accuracy gate: which calibration set made it is a property of the
        engine, not something a pipeline asking for int8 can know."""
        want = {k: v for k, v in key.as_dict().items() if k != "extra"}
        found = []
        for entry in self.entries():
            have = entry.meta.get("key", {})
            if (entry.problem is None and "calibration_sha256" in have.get("extra", {})
                    and entry.meta.get("gate", {}).get("passed")
                    and {k: v for k, v in have.items() if k != "extra"} == want):
                found.append(entry)
        return max(found, key=lambda e: e.meta.get("built_at", ""), default=None)

    def entries(self) -> list[Entry]:
        if not self.root.is_dir():
            return []
        return [self.inspect(p) for p in sorted(self.root.iterdir())
                if p.is_dir() and not p.name.startswith(".")]
