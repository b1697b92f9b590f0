"""Floors, measured alone: how fast the hardware and the simplest peer move or decode one
frame (pipeline/bench/floors.py, which `orstream bench` measures beside its run).

    python -m orstream.benchmarks.peers [--source PATH|synthetic] [--out benchmarks/results]

What each floor is and why: pipeline/bench/floors.py's docstring.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orstream.benchmarks.common import write_json
from orstream.common.sizes import parse_size
from orstream.pipeline.bench.floors import floors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="synthetic")
    parser.add_argument("--size", type=parse_size, default="1920x1080",
                        help="frame WxH for memcpy and hops")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    w, h = args.size
    rows = floors(args.source, (h, w))
    for r in rows:
        detail = r.get("skipped") or f"p50 {r['p50']:.3f} ms, p99 {r['p99']:.3f} ms"
        print(f"{r['what']}: {detail}")
    print(f"wrote {write_json(args.out / 'peers.json', {'floors': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
