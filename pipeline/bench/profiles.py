"""Device profiles (configs/devices/*.yaml): what a deployment target runs and the latency
budgets it must hold, each budget with the reason written beside it in the YAML."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orstream.common.errors import UsageError
from orstream.common.yamlio import load_mapping

PROFILES_DIR = Path(__file__).resolve().parents[2] / "configs" / "devices"


class ProfileError(UsageError):
    """An unknown profile or a malformed profile file; names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budgets(_Strict):
    end_to_end_p99_ms: float = Field(gt=0)
    stages_p99_ms: dict[str, float] = Field(default_factory=dict)
    max_drop_rate: float = Field(ge=0, le=1)


class Match(_Strict):
    kind: Literal["cpu", "cuda", "jetson"]
    name_contains: str | None = None


class Profile(_Strict):
    name: str
    description: str
    match: Match
    fps: float = Field(gt=0)
    input_size: tuple[int, int]
    backend: str
    precision: str
    budgets: Budgets
    why: dict[str, str] = Field(default_factory=dict)  # key -> the reason in the YAML


def detect_device() -> dict[str, Any]:
    """What this process runs on: a Jetson (its model), a CUDA GPU (its name), or the CPU."""
    from orstream.engines.backends.base import cpu_isa, cpu_name

    isa = " ".join(cpu_isa())  # what the CPU kernels can use: one model name hides several
    tegra = Path("/etc/nv_tegra_release")
    model = Path("/proc/device-tree/model")
    if tegra.exists():
        name = model.read_text(errors="ignore").strip("\x00 \n") if model.exists() else "Jetson"
        return {"kind": "jetson", "name": name, "cpu": cpu_name(), "cpu_isa": isa}
    try:
        import torch

        if torch.cuda.is_available():
            return {"kind": "cuda", "name": torch.cuda.get_device_name(0), "cpu": cpu_name(),
                    "cpu_isa": isa}
    except ImportError:
        pass
    return {"kind": "cpu", "name": cpu_name(), "cpu": cpu_name(), "cpu_isa": isa}


def matches(profile: Profile, device: dict[str, Any]) -> bool:
    m = profile.match
    return m.kind == device["kind"] and (m.name_contains is None
                                         or m.name_contains.lower() in device["name"].lower())


def _reasons(text: str) -> dict[str, str]:
    """`key: value   # why` lines -> {key: why}: the reasons stay where a reader edits."""
    return {m.group(1): m.group(2).strip() for m in
            re.finditer(r"^\s*([\w-]+):[^#\n]*#\s*(.+)$", text, re.MULTILINE)}


def available() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    node = data
    for part in path:
        if not isinstance(node.get(part), dict):
            raise ProfileError(f"--set {dotted}: {part!r} is not a section of the profile")
        node = node[part]
    node[last] = value


def load_profile(name: str, device: dict[str, Any] | None = None,
                 overrides: list[str] | None = None) -> Profile:
    """`name` or `auto` (the first profile matching the detected device, else cpu);
    `overrides` are `budgets.KEY=VALUE` strings applied before validation."""
    device = device or detect_device()
    if name == "auto":
        candidates = [load_profile(n, device) for n in available()]
        found = [p for p in candidates if p.name != "cpu" and matches(p, device)]
        name = found[0].name if found else "cpu"
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ProfileError(f"--profile {name}: no such profile; available: "
                           f"{', '.join(available())} or auto")
    data = load_mapping(path, ProfileError)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ProfileError(f"--set {item}: expected KEY=VALUE")
        _set(data, key, yaml.safe_load(value))
    try:
        return Profile(**data, why=_reasons(path.read_text()))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        given = {item.partition("=")[0]: item for item in overrides or []}
        # Blame the --set that brought the key in, not the profile file it was applied to.
        where = f"--set {given[key]}" if key in given else path.name
        hint = ""
        if err["type"] == "extra_forbidden" and key.startswith("budgets."):
            close = difflib.get_close_matches(key.split(".", 1)[1],
                                              list(Budgets.model_fields), n=1)
            hint = f"; did you mean budgets.{close[0]}?" if close else (
                f"; budgets are {', '.join(Budgets.model_fields)}")
        msg = "not a budget" if err["type"] == "extra_forbidden" else err["msg"]
        raise ProfileError(f"{where}: {key}: {msg}{hint}") from None
