"""`orstream bench`: the real pipeline on a recording or the synthetic feed, every frame's
trace collected, figures per stage and end to end, judged against a device profile's budgets.

Latency is read off the traces (monotonic clock, the same one every stage stamps), so what
is measured is what the pipeline did, not a re-timing of it. The first `warmup` frames are
left out of every figure; engine build and warm-up (time to the first frame) are reported
apart.
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from orstream.common.errors import UsageError
from orstream.common.net import free_port
from orstream.common.sizes import format_hw
from orstream.pipeline.bench.profiles import Profile, detect_device, load_profile, matches
from orstream.pipeline.config import PipelineConfig, load_config

PERCENTILES = {"p50": 50, "p90": 90, "p95": 95, "p99": 99, "p99.9": 99.9}


class BenchError(UsageError):
    """A bench that cannot give trustworthy figures as asked (too few frames, a baseline
    of another kind of run); the message says what to change."""


@dataclass
class FrameRecord:
    seq: int
    trace: list[tuple[str, int, int]]
    t_done_ns: int


@dataclass
class BenchRun:
    records: list[FrameRecord] = field(default_factory=list)
    stages_processed: dict[str, int] = field(default_factory=dict)
    captured: int = 0
    dropped: int = 0
    startup_s: float = 0.0  # pipeline start -> first frame out (engine load, warm-up)
    engine: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0


def figures(ms: np.ndarray) -> dict[str, float]:
    if len(ms) == 0:
        return {}
    out = {k: float(np.percentile(ms, q)) for k, q in PERCENTILES.items()}
    out.update(max=float(ms.max()), mean=float(ms.mean()), n=int(len(ms)))
    return out


def _engine_info(cfg: PipelineConfig) -> dict[str, Any]:
    """Open (build or find, and load) the segment engine before the run, timed: a build is
    reported apart from the frames' latency, and an engine that cannot be had (no gated INT8
    engine, a backend this machine lacks) stops the bench before it starts."""
    if not cfg.segment.enabled:
        return {"backend": None, "note": "segmentation off"}
    if cfg.segment.backend == "triton":  # the server holds the engine: check it is there
        from orstream.engines.backends.triton_backend import TritonEngine

        engine = TritonEngine(cfg.segment.triton.target(), cfg.segment.size)
        try:
            return {**engine.describe(), "precision": "as the server's model repository says"}
        finally:
            engine.close()
    from orstream.engines.export import describe_origin, open_engine
    from orstream.pipeline.stages import segment_engine_spec

    return describe_origin(open_engine(segment_engine_spec(cfg.segment)))


def run(cfg: PipelineConfig, frames: int, warmup: int) -> BenchRun:
    from orstream.pipeline.runner import Pipeline

    bench = BenchRun(engine=_engine_info(cfg))
    lock = threading.Lock()

    def on_frame(frame) -> None:
        with lock:
            bench.records.append(FrameRecord(frame.seq, list(frame.trace), time.monotonic_ns()))
            done = len(bench.records)
        if done % 100 == 0:
            logger.info("bench: {} / {} frames", done, frames + warmup)

    pipeline = Pipeline(cfg, max_frames=frames + warmup, on_frame=on_frame)
    t0 = time.monotonic_ns()
    result = pipeline.run()
    bench.elapsed_s = (time.monotonic_ns() - t0) / 1e9
    bench.stages_processed = dict(result.stages)
    bench.dropped = result.dropped
    bench.captured = result.frames_out + result.dropped
    if bench.records:
        bench.startup_s = (bench.records[0].t_done_ns - t0) / 1e9
    return bench


def analyse(bench: BenchRun, warmup: int) -> dict[str, Any]:
    records = bench.records[warmup:]
    if len(records) < 2:
        raise BenchError(f"only {len(bench.records)} frames came out ({warmup} are warm-up): "
                         f"run more --frames or a longer source")
    stages: dict[str, list[float]] = {}
    e2e = []
    for r in records:
        for name, t_in, t_out in r.trace:
            stages.setdefault(name, []).append((t_out - t_in) / 1e6)
        e2e.append((r.trace[-1][2] - r.trace[0][1]) / 1e6)
    done = np.array([r.t_done_ns for r in records]) / 1e9
    intervals = np.diff(done) * 1e3
    seqs = np.array([r.seq for r in records])
    missing = sorted(set(range(int(seqs.min()), int(seqs.max()) + 1)) - set(seqs.tolist()))
    # A frame lost at a stage is one its upstream handed on and it never processed: the
    # latest-frame edges drop there, lossless edges never do.
    processed = bench.stages_processed
    drops, upstream_count = {}, bench.captured
    for name in ("segment", "render"):
        if name in processed:
            drops[name] = max(0, upstream_count - processed[name])
            upstream_count = processed[name]
    return {
        "frames": len(records),
        "warmup_frames": warmup,
        "captured": bench.captured,
        "dropped": bench.dropped,
        "drop_rate": bench.dropped / max(1, bench.captured),
        "drops_per_stage": drops,
        "dropped_seqs_after_warmup": missing,
        "throughput_fps": float((len(done) - 1) / (done[-1] - done[0])),
        "jitter_ms": {"interval_p50": float(np.percentile(intervals, 50)),
                      "interval_std": float(intervals.std()),
                      "interval_p99_minus_p50": float(np.percentile(intervals, 99)
                                                      - np.percentile(intervals, 50))},
        "latency_ms": {"end_to_end": figures(np.asarray(e2e)),
                       "stages": {k: figures(np.asarray(v)) for k, v in stages.items()}},
        "series": {"seq": seqs.tolist(), "t_s": (done - done[0]).round(4).tolist(),
                   "end_to_end_ms": np.round(e2e, 3).tolist()},
        "startup_s": bench.startup_s,
        "elapsed_s": bench.elapsed_s,
        "_stage_samples": stages,  # for the plots; not written to report.json
    }


def judge(report: dict[str, Any], profile: Profile) -> dict[str, Any]:
    """Which budget figures broke, worst overshoot first."""
    budgets = profile.budgets
    broken, not_judged = [], []
    e2e = report["latency_ms"]["end_to_end"]["p99"]
    if report["source"]["mode"] == "lossless":
        # Lossless feeds frames as fast as they decode, so end to end counts each frame's
        # wait behind the ones before it: a measure of the queue, not of the live lag the
        # budget is about. What a live feed needs of this run is that it keeps up.
        not_judged.append({"stage": "end_to_end", "figure": "p99",
                           "why": "lossless: frames queue as fast as they decode; judge "
                                  "end to end with --mode paced"})
        fps = report["throughput_fps"]
        if fps < profile.fps:
            broken.append({"stage": "throughput", "figure": "fps", "value": fps,
                           "budget": profile.fps, "overshoot": profile.fps / fps})
    elif e2e > budgets.end_to_end_p99_ms:
        broken.append({"stage": "end_to_end", "figure": "p99", "value": e2e,
                       "budget": budgets.end_to_end_p99_ms})
    for stage, limit in budgets.stages_p99_ms.items():
        got = report["latency_ms"]["stages"].get(stage, {}).get("p99")
        if got is not None and got > limit:
            broken.append({"stage": stage, "figure": "p99", "value": got, "budget": limit})
    if report["drop_rate"] > budgets.max_drop_rate:
        broken.append({"stage": "capture", "figure": "drop_rate",
                       "value": report["drop_rate"], "budget": budgets.max_drop_rate})
    broken.sort(key=lambda b: -b.pop("overshoot", b["value"] / b["budget"]))
    return {"profile": profile.name, "pass": not broken, "broken": broken,
            "not_judged": not_judged, "budgets": budgets.model_dump(), "why": profile.why}


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for dist in ("torch", "numpy", "opencv-python-headless", "av", "pyzmq", "onnxruntime",
                 "openvino", "torch-tensorrt"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def _peak_memory() -> dict[str, float | None]:
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    return {"cpu_rss_mb": round(rss_mb, 1), "gpu_mb": gpu}


@dataclass(frozen=True)
class BenchPlan:
    """What a bench will run, settled before anything runs: a baseline of another kind of run
    is refused before minutes are spent measuring."""

    cfg: PipelineConfig
    profile: Profile
    device: dict[str, Any]
    frames: int
    warmup: int

    def kind(self) -> dict[str, str]:
        """What a baseline must share for a ratio against it to mean anything."""
        return {"source": self.cfg.source.spec, "mode": self.cfg.source.mode,
                "profile": self.profile.name}


def report_kind(report: dict[str, Any]) -> dict[str, str]:
    """BenchPlan.kind() of the run an earlier report.json came from."""
    return {"source": report["source"]["spec"], "mode": report["source"]["mode"],
            "profile": report["budget"]["profile"]}


def unlike(now: dict[str, str], baseline: dict[str, str]) -> list[dict[str, str]]:
    """The keys where two runs differ, e.g. a lossless file against a paced synthetic feed."""
    return [{"key": k, "baseline": baseline.get(k), "now": v} for k, v in now.items()
            if baseline.get(k) != v]


def _private_endpoints(cfg: PipelineConfig) -> list[str]:
    """`--set` overrides that move every TCP endpoint the run would bind onto a free loopback
    port: a bench must neither take the live defaults (5600/5601) from a pipeline running on
    the same host nor fail because one holds them."""
    named = [("publish.endpoint", cfg.publish.endpoint), ("masks.endpoint", cfg.masks.endpoint),
             ("describe.ask_endpoint", cfg.describe.ask_endpoint)]
    named += [(f"edges.{k}.endpoint", e.endpoint) for k, e in cfg.edges.items()]
    return [f"{key}=tcp://127.0.0.1:{free_port()}" for key, endpoint in named
            if endpoint and endpoint.startswith("tcp://")]


def plan(source: str, config: Path | None = None, mode: str | None = None,
         profile_name: str = "auto", frames: int = 600, warmup: int = 30,
         sets: list[str] | None = None) -> BenchPlan:
    """The config and profile a bench runs with; usage errors raise here, before any run."""
    device = detect_device()
    budget_sets = [s for s in sets or [] if s.startswith("budgets.")]
    pipeline_sets = [s for s in sets or [] if not s.startswith("budgets.")]
    profile = load_profile(profile_name, device, budget_sets)
    derived = [f"source.spec={source}", f"segment.size={format_hw(profile.input_size)}"]
    if mode:
        derived.append(f"source.mode={mode}")
    if source == "synthetic":
        derived.append(f"source.fps={profile.fps:g}")
    cfg = load_config(config, derived + pipeline_sets)
    moved = _private_endpoints(cfg)
    if moved:
        cfg = load_config(config, derived + pipeline_sets + moved)
        logger.info("bench: binds free loopback ports only ({})",
                    ", ".join(m.replace("=", " ") for m in moved))
    return BenchPlan(cfg, profile, device, frames, warmup)


def shortfall_note(asked: int, warmup: int, source: str, delivered: int,
                   measured: int) -> str | None:
    """What to say when the source ended before `asked` frames were measured; None if not."""
    if measured >= asked:
        return None
    what = "the clip has" if Path(source).is_file() else "the source gave"
    return (f"asked for {asked} frames; {what} {delivered}: measured {measured} after "
            f"{warmup} warm-up")


def execute(bench_plan: BenchPlan, peers: bool = True) -> dict[str, Any]:
    """Run the planned bench and analyse it; returns the report (schema in REPORT.md)."""
    cfg, profile, device = bench_plan.cfg, bench_plan.profile, bench_plan.device
    frames, warmup = bench_plan.frames, bench_plan.warmup
    logger.info("bench: profile {} ({}), {} frames after {} warm-up, source {}",
                profile.name, profile.description, frames, warmup, cfg.source.spec)
    bench_run = run(cfg, frames, warmup)
    report = analyse(bench_run, warmup)
    engine = bench_run.engine
    notes = []
    short = shortfall_note(frames, warmup, cfg.source.spec, bench_run.captured,
                           report["frames"])
    if short:
        logger.warning("bench: {}", short)
        notes.append(short)
    if not matches(profile, device):
        notes.append(f"profile {profile.name} is for {profile.match.kind}"
                     f"{' ' + profile.match.name_contains if profile.match.name_contains else ''}"
                     f", but this runs on {device['kind']} {device['name']}: its budgets are "
                     f"a target, not this machine's")
    for key in ("backend", "precision"):
        expected = getattr(profile, key)
        if expected != "auto" and engine.get(key) not in (None, expected):
            notes.append(f"profile {profile.name} expects {key} {expected}; this run used "
                         f"{engine.get(key)}")
    report.update({
        "schema": "orstream.bench/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "frames_asked": frames,
        "source": {"spec": cfg.source.spec, "mode": cfg.source.mode},
        "device": device,
        "versions": _versions(),
        "engine": engine,
        "config_sha256": hashlib.sha256(cfg.model_dump_json().encode()).hexdigest(),
        "memory": _peak_memory(),
        "notes": notes,
    })
    report["budget"] = judge(report, profile)
    if peers:
        from orstream.pipeline.bench.floors import floors

        report["floors"] = floors(cfg.source.spec, (cfg.source.height, cfg.source.width),
                                  cfg.source.fps)
        note = noisy_host_note(report["floors"], report["budget"])
        if note:
            report["notes"].append(note)
    return report


def bench(source: str, config: Path | None = None, mode: str | None = None,
          profile_name: str = "auto", frames: int = 600, warmup: int = 30,
          sets: list[str] | None = None, peers: bool = True) -> dict[str, Any]:
    """Plan, run and analyse; returns the report (schema in pipeline/bench/REPORT.md)."""
    return execute(plan(source, config, mode, profile_name, frames, warmup, sets), peers)


def noisy_host_note(floor_rows: list[dict[str, Any]], budget: dict[str, Any]) -> str | None:
    from orstream.pipeline.bench.floors import NOISY_HOST_RATIO

    jitter = next((f for f in floor_rows if "p99_over_p50" in f), None)
    if jitter is None or jitter["p99_over_p50"] < NOISY_HOST_RATIO:
        return None
    tails = [b for b in budget["broken"] if b["figure"] in ("p99", "p99.9", "max")]
    return (f"noisy host: with the pipeline stopped, a fixed {jitter['p50']:.1f} ms task took "
            f"{jitter['p99_over_p50']:.1f}x that at p99 (max {jitter['max']:.0f} ms)"
            + (f"; the broken tail budgets ({', '.join(b['stage'] for b in tails)}) carry "
               f"that host tail: rerun on a quiet machine before blaming the pipeline"
               if tails else ""))


def _load_baseline(baseline: Path) -> dict[str, Any]:
    path = Path(baseline) / "report.json" if Path(baseline).is_dir() else Path(baseline)
    if not path.is_file():
        raise BenchError(f"--baseline {baseline}: no report.json there (give an earlier "
                         f"bench --out folder or its report.json)")
    return json.loads(path.read_text())


def _describe_unlike(differs: list[dict[str, str]]) -> str:
    return ", ".join(f"{d['key']} {d['baseline']} then, {d['now']} now" for d in differs)


def bench_command(source: str, out: Path, config: Path | None = None, mode: str | None = None,
                  profile: str = "auto", frames: int = 600, warmup: int = 30,
                  sets: list[str] | None = None, baseline: Path | None = None,
                  regression: float = 0.10, peers: bool = True,
                  allow_unlike: bool = False) -> int:
    """What `orstream bench` does: 0 when every budget holds, 1 when one breaks (the last
    line names the stage and figure); usage errors raise before anything runs.

    A baseline of another kind of run (source, replay mode or profile) is refused before the
    run: its ratios would read as a regression or a win that is neither. `allow_unlike`
    compares anyway, warns, and records the differences in report.json and report.md."""
    from orstream.pipeline.bench.report import ALERTS, compare, write

    bench_plan = plan(source, config, mode, profile, frames, warmup, sets)
    old, differs = None, []
    if baseline is not None:
        old = _load_baseline(baseline)
        differs = unlike(bench_plan.kind(), report_kind(old))
        if differs and not allow_unlike:
            raise BenchError(f"--baseline {baseline} is another kind of run ("
                             f"{_describe_unlike(differs)}): its ratios would mean nothing; "
                             f"bench like against like, or pass --allow-unlike")
    report = execute(bench_plan, peers)
    if old is not None:
        report["baseline"] = compare(report, old, regression)
        report["baseline"]["unlike"] = differs
        if differs:
            warning = (f"UNLIKE BASELINE: {_describe_unlike(differs)}; the ratios compare "
                       f"different kinds of run")
            logger.warning("bench: {}", warning)
            report["notes"].insert(0, warning)
    paths = write(report, Path(out))
    e2e = report["latency_ms"]["end_to_end"]
    print(f"{report['frames']} frames, {report['throughput_fps']:.2f} fps, end to end p50 "
          f"{e2e['p50']:.1f} ms p99 {e2e['p99']:.1f} ms, dropped {report['dropped']}; "
          f"report in {paths['md']}")
    for note in report["notes"]:
        if note.startswith(ALERTS):
            print(note)
    if report.get("baseline", {}).get("regressions"):
        print("regressions against the baseline: "
              + ", ".join(report["baseline"]["regressions"]))
    budget = report["budget"]
    for skipped in budget.get("not_judged", []):
        print(f"not judged: {skipped['stage']} {skipped['figure']} ({skipped['why']})")
    if budget["pass"]:
        print(f"PASS: every {budget['profile']} budget holds")
        return 0
    print("FAIL: " + "; ".join(
        f"{b['stage']} {b['figure']} {b['value']:.4g} {'<' if b['figure'] == 'fps' else '>'} "
        f"budget {b['budget']:g}" for b in budget["broken"]))
    return 1
