"""Shared pieces of the benchmark scripts: machine description, table and JSON; the clocks
and percentiles live in common.timing (the INT8 gate times engines with them too)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np

from orstream.common.timing import stats, time_calls

__all__ = ["cpu_model", "machine", "stats", "table", "time_calls", "write_json"]


def cpu_model() -> str:
    from orstream.engines.backends.base import cpu_name

    return cpu_name()


def machine() -> dict:
    import cv2
    import torch

    from orstream.engines.backends.base import cpu_isa

    return {
        "cpu": cpu_model(),
        "cpu_isa": " ".join(cpu_isa()),
        "cores": __import__("os").cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table; columns are (key, header, format)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(format(r[k], f) if r.get(k) is not None else "-"
                              for k, _, f in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def write_json(path: Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    return path
