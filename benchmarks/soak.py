"""Soak: the default pipeline for half an hour, watched for whatever grows.

    python -m orstream.benchmarks.soak [--minutes 30] [--out DIR] [--set KEY=VALUE ...]
                                       [--sample-s S]

What runs: the default config (synthetic 1080p30, segmentation, describe on) in this process,
recording to a temporary .mp4 (deleted at the end), and publishing on a free loopback port
to two displays, each its own process (benchmarks/soak_display.py: the public Receiver, as
`orstream view` uses it). The soak's clock starts when both displays have a frame; from
then, every --sample-s it reads, without touching the frame path:

- RSS and open file descriptors of every process: this one (the pipeline), the describe
  worker, the two displays (/proc/PID/status, /proc/PID/fd);
- shared-memory files: those in /dev/shm that any of these processes maps or holds open,
  and orstream's own files (/dev/shm rings, the describe worker's ipc folder) named with
  one of their pids; every /dev/shm entry is counted too, for reference (other programs
  add to that one);
- the frame counters: captured and dropped at capture, segmented, rendered, recorded and
  written to the file, published; each display's frames, and the end-to-end latency of
  every one (capture to receipt at the display, from the header's capture time).

The run is cut into sixths (5 minutes each of 30): the first is the warm-up. Criteria
(issue 23), each printed PASS or FAIL; the exit code is 1 if any fails:

- RSS growth < 5 % for every process: the median RSS of the last sixth against the median
  of the sixth after the warm-up;
- end-to-end p99 drift < 10 %: the p99 of the last sixth against that of the first, over
  both displays' frames. Beside it, the share of the host's CPU that processes outside the
  soak took in each window (/proc/stat less the soak's processes): a drift that comes with
  other jobs starting is the host's, and the run is to be repeated on a quiet host;
- 0 frames lost on lossless edges: segment->render (segmented = rendered),
  render->record (rendered = recorded) and the recorder's file (frames written = frames in
  the file, counted by demuxing it after the stop);
- file descriptors flat: no process holds more after the warm-up than at its end;
- shared-memory and orstream files flat the same way, and none of them left once the
  pipeline has stopped.

Drops on the latest edges (capture, displays) are counted and reported, not judged: a
live pipeline drops a stale frame by design. Output: a table, DIR/soak.json (every sample
and figure) and DIR/soak.png (RSS, fds, latency p50/p99 and files over time).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from loguru import logger

from orstream.benchmarks.common import machine, table, write_json
from orstream.benchmarks.procfs import children, cmdline, host_cpu_jiffies, process_cpu_jiffies
from orstream.benchmarks.soak_display import RECORD
from orstream.common.net import free_port

RSS_GROWTH_LIMIT = 0.05  # the issue's: < 5 % after warm-up
P99_DRIFT_LIMIT = 0.10  # the issue's: < 10 % first vs last window
START_TIMEOUT_S = 300.0  # launch to both displays receiving; a first engine build included
STOP_TIMEOUT_S = 120.0  # request_stop to the pipeline thread's end
DISPLAYS = 2
SHM = Path("/dev/shm")
# orstream's files that outlive a SIGKILL carry their maker's pid (pipeline/leftovers.py):
# orstream-PID-HEX in /dev/shm, orstream-describe-PID-XXXX in the temp folder.
_ORSTREAM_NAME = re.compile(r"orstream-(?:[a-z]+-)?([0-9]{1,10})-\w+")
_RECORD_DTYPE = np.dtype([("seq", "<i8"), ("t_capture", "<i8"), ("t_received", "<i8"),
                          ("segment_in", "<i8"), ("segment_out", "<i8"),
                          ("render_in", "<i8"), ("render_out", "<i8")])
# Where a frame's end-to-end latency went, from its trace: waiting for segment (capture's own
# work included), segment, waiting for render, render, and render to the display (publish,
# the socket, the display's receiver).
PARTS = {"to_segment": ("t_capture", "segment_in"), "segment": ("segment_in", "segment_out"),
         "to_render": ("segment_out", "render_in"), "render": ("render_in", "render_out"),
         "to_display": ("render_out", "t_received")}
assert _RECORD_DTYPE.itemsize == RECORD.size


# ---------------------------------------------------------------------- /proc readings


def rss_mb(pid: int) -> float | None:
    """Resident set size in MiB; None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def shm_in_use(pids: list[int]) -> set[str]:
    """/dev/shm files that any of `pids` maps or holds open."""
    paths: set[str] = set()
    prefix = f"{SHM}/"
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
                parts = line.split(maxsplit=5)  # address perms offset dev inode [path]
                path = parts[5] if len(parts) == 6 else ""
                if path.startswith(prefix):
                    paths.add(path.removesuffix(" (deleted)"))
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith(prefix):
                        paths.add(target.removesuffix(" (deleted)"))
        except OSError:
            continue  # the process ended between listing and reading
    return paths


def orstream_files(pids: list[int]) -> int:
    """Files orstream made for any of `pids`: shared-memory rings in /dev/shm, the describe
    worker's folder (its ipc socket and log) in the temp folder; a folder counts itself and
    every file in it."""
    mine = {str(p) for p in pids}
    count = 0
    for folder in (SHM, Path(tempfile.gettempdir())):
        if not folder.is_dir():
            continue
        for entry in folder.glob("orstream-*"):
            match = _ORSTREAM_NAME.fullmatch(entry.name)
            if match is None or match.group(1) not in mine:
                continue
            count += 1
            with contextlib.suppress(OSError):
                if entry.is_dir():
                    count += sum(1 for _ in entry.rglob("*"))
    return count


# ---------------------------------------------------------------------- the displays


class Display:
    """A soak_display process and the per-frame records it writes."""

    def __init__(self, name: str, endpoint: str, folder: Path) -> None:
        self.name = name
        self.records = folder / f"{name}.bin"
        self.records.touch()
        self._log = (folder / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orstream.benchmarks.soak_display", endpoint,
             str(self.records)], stdout=subprocess.PIPE, stderr=self._log)
        self._offset = 0  # bytes of records already read
        self.summary: dict = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def frames(self) -> int:
        return self.records.stat().st_size // RECORD.size

    def read_new(self) -> np.ndarray:
        """Records written since the last call (whole ones only)."""
        size = self.records.stat().st_size
        whole = (size - self._offset) // RECORD.size * RECORD.size
        if whole <= 0:
            return np.empty(0, _RECORD_DTYPE)
        with self.records.open("rb") as f:
            f.seek(self._offset)
            data = np.frombuffer(f.read(whole), _RECORD_DTYPE)
        self._offset += whole
        return data

    def read_all(self) -> np.ndarray:
        size = self.records.stat().st_size // RECORD.size * RECORD.size
        return np.fromfile(self.records, _RECORD_DTYPE, count=size // RECORD.size)

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self._log.close()
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            self.summary = json.loads(lines[-1]) if lines else {}
        except json.JSONDecodeError:
            self.summary = {}
        self.summary["exit_code"] = self.proc.returncode


def latency_ms(records: np.ndarray) -> np.ndarray:
    return (records["t_received"] - records["t_capture"]) / 1e6


def parts_ms(records: np.ndarray) -> dict[str, dict[str, float | None]]:
    """p50/p99/max and mean of each of PARTS over `records` (frames whose trace has both
    stages), and of the `whole` capture -> display latency of those frames: the parts'
    means add up to its mean."""
    whole = records[(records["segment_in"] > 0) & (records["render_out"] > 0)]
    parts = {}
    for name, (a, b) in (*PARTS.items(), ("whole", ("t_capture", "t_received"))):
        ms = (whole[b] - whole[a]) / 1e6
        parts[name] = {**percentiles(ms), "mean": float(ms.mean()) if ms.size else None}
    return parts


def percentiles(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "max": float(values.max())}


# ---------------------------------------------------------------------- the run


@dataclass
class Soak:
    """One soak: the pipeline in this process, the displays beside it, and what was read."""

    minutes: float
    overrides: list[str]
    sample_s: float
    folder: Path
    samples: list[dict] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)  # process name -> pid (latest)
    describe_pids: list[int] = field(default_factory=list)  # every describe worker seen
    shm_seen: set[str] = field(default_factory=set)  # every /dev/shm file they used
    error: BaseException | None = None

    def run(self, interrupted: threading.Event) -> dict:
        from orstream.pipeline.capture import keep_frame_memory
        from orstream.pipeline.config import load_config
        from orstream.pipeline.runner import Pipeline

        keep_frame_memory()  # as `orstream run` does
        me = os.getpid()
        fds_before = fd_count(me)
        recording = self.folder / "soak.mp4"
        cfg = load_config(None, self.overrides, port_base=free_port(),
                          record__path=str(recording))
        assert cfg.publish.endpoint, "the soak needs the publisher (publish.endpoint)"
        self.pipeline = pipeline = Pipeline(cfg)
        displays = [Display(f"display-{i + 1}", cfg.publish.endpoint, self.folder)
                    for i in range(DISPLAYS)]
        self.pids = {"pipeline": me, **{d.name: d.pid for d in displays}}
        thread = threading.Thread(target=self._run_pipeline, name="soak-pipeline",
                                  daemon=True)
        launched = time.monotonic()
        thread.start()
        try:
            t0 = self._wait_for_frames(thread, displays, launched, interrupted)
            if t0 is not None:
                self._sample_until(t0, t0 + self.minutes * 60, thread, displays,
                                   interrupted)
            t_end = time.monotonic()
        finally:
            pipeline.request_stop()
            thread.join(STOP_TIMEOUT_S)
            for display in displays:
                display.stop()
        stopped_cleanly = not thread.is_alive() and self.error is None
        ours = [me, *self.describe_pids, *(d.pid for d in displays)]
        after = {"orstream_files": orstream_files(ours), "fds_pipeline": fd_count(me),
                 "fds_before_start": fds_before}
        in_file = frames_in(recording)
        report = self._report(t0, t_end, displays, in_file, after, stopped_cleanly,
                              launched)
        recording.unlink(missing_ok=True)
        return report

    def _run_pipeline(self) -> None:
        try:
            self.pipeline.run()
        except BaseException as exc:  # noqa: BLE001 - reported with the figures
            self.error = exc
            logger.error("soak: the pipeline stopped with an error: {}", exc)

    def _wait_for_frames(self, thread: threading.Thread, displays: list[Display],
                         launched: float, interrupted: threading.Event) -> float | None:
        """The moment the whole pipeline is up: both displays have a frame and the describe
        worker (when on) has made its first caption, so that its start (a process, a socket,
        a log file) is not taken for growth. None if that never came."""
        while time.monotonic() - launched < START_TIMEOUT_S:
            describe = self.pipeline.describe
            if all(d.frames() for d in displays) and (
                    not self.pipeline.cfg.describe.enabled
                    or (describe is not None and (describe.captions or describe.failed))):
                took = time.monotonic() - launched
                logger.info("soak: both displays receiving and captions coming {:.1f} s "
                            "after launch; {:g} minutes from now", took, self.minutes)
                return time.monotonic()
            if not thread.is_alive() or not all(d.alive() for d in displays):
                break
            if interrupted.wait(0.2):
                break
        logger.error("soak: the pipeline never came up (both displays receiving, captions)")
        return None

    def _sample_until(self, t0: float, end: float, thread: threading.Thread,
                      displays: list[Display], interrupted: threading.Event) -> None:
        next_t = t0
        sixth = (end - t0) / 6
        next_progress = t0 + sixth
        while True:
            now = time.monotonic()
            self.samples.append(self._sample(now - t0, displays))
            if now >= next_progress:
                self._progress(now - t0)
                next_progress += sixth
            if now >= end or not thread.is_alive() or not all(d.alive() for d in displays):
                break
            next_t += self.sample_s
            if interrupted.wait(max(0.0, min(next_t, end) - time.monotonic())):
                logger.warning("soak: interrupted; reporting what was measured")
                break

    def _sample(self, t_s: float, displays: list[Display]) -> dict:
        me = self.pids["pipeline"]
        for pid in children(me):
            if pid in self.describe_pids or pid in (d.pid for d in displays):
                continue
            if "describe_worker" in cmdline(pid):
                if self.describe_pids:
                    logger.warning("soak: a new describe worker (pid {}) replaced pid {}",
                                   pid, self.describe_pids[-1])
                self.describe_pids.append(pid)
                self.pids["describe"] = pid
        pids = list(self.pids.values())
        shm = shm_in_use(pids)
        self.shm_seen |= shm
        sample: dict = {"t_s": round(t_s, 3),
                        "rss_mb": {n: rss_mb(p) for n, p in self.pids.items()},
                        "fds": {n: fd_count(p) for n, p in self.pids.items()},
                        "shm_in_use": len(shm),
                        "orstream_files": orstream_files(pids),
                        "shm_total": sum(1 for _ in SHM.iterdir()) if SHM.is_dir() else None}
        sample.update(self._counters())
        sample["other_cpu"] = self._other_cpu(pids + self.describe_pids)
        fresh = [d.read_new() for d in displays]
        lat = np.concatenate([latency_ms(r) for r in fresh])
        sample["latency_ms"] = {k: v for k, v in percentiles(lat).items() if k != "max"}
        sample["display_frames"] = {d.name: d.frames() for d in displays}
        return sample

    def _other_cpu(self, pids: list[int]) -> float | None:
        """Share of the host's CPU (0-1, all cores) taken since the last sample by processes
        outside the soak: other jobs on the host, which a latency drift must be read against."""
        busy, total = host_cpu_jiffies()
        ours = sum(process_cpu_jiffies(p) for p in set(pids))
        last, self._cpu_last = getattr(self, "_cpu_last", None), (busy, total, ours)
        if last is None or total <= last[1]:
            return None
        others = (busy - last[0]) - (ours - last[2])
        return round(min(max(others / (total - last[1]), 0.0), 1.0), 4)

    def _counters(self) -> dict:
        """The pipeline's frame counters, read from its executor and metrics."""
        pipeline = self.pipeline
        executor, metrics = pipeline.executor, pipeline.metrics
        if executor is None or metrics is None:
            return {}
        nodes = executor.nodes

        def processed(name: str) -> int | None:
            return nodes[name].processed if name in nodes else None

        record = nodes.get("record")
        return {"dropped_at_capture": metrics.dropped(), "segmented": processed("segment"),
                "rendered": processed("render"), "recorded": processed("record"),
                "written": record.stage.recorder.frames_written if record else None,
                "published": processed("publish"),
                "captions": pipeline.describe.captions if pipeline.describe else None}

    def _progress(self, t_s: float) -> None:
        s = self.samples[-1]
        rss = ", ".join(f"{n} {v:.0f}" for n, v in s["rss_mb"].items() if v is not None)
        p99 = s["latency_ms"]["p99"]
        logger.info("soak {:.1f}/{:g} min: RSS MiB {} | fds {} | p99 {} | rendered {} "
                    "recorded {} dropped at capture {}", t_s / 60, self.minutes, rss,
                    s["fds"], "-" if p99 is None else f"{p99:.0f} ms", s.get("rendered"),
                    s.get("recorded"), s.get("dropped_at_capture"))

    # ------------------------------------------------------------------ the figures

    def _report(self, t0: float | None, t_end: float, displays: list[Display],
                in_file: int | None, after: dict, stopped_cleanly: bool,
                launched: float) -> dict:
        duration = (t_end - t0) if t0 is not None else 0.0
        window = duration / 6
        final = self._counters()
        report: dict = {
            "machine": machine(),
            "config": {"minutes": self.minutes, "measured_s": duration,
                       "window_s": window, "sample_s": self.sample_s,
                       "overrides": self.overrides, "displays": DISPLAYS,
                       "command": "default config, describe on, 2 displays, recorder",
                       "start_s": (t0 - launched) if t0 is not None else None},
            "error": _error_text(self.error),
            # The VLM's process failed to start or stopped: captions ended, frames went on.
            "describe_error": _error_text(self.pipeline.describe.failed
                                          if self.pipeline.describe is not None else None),
            "processes": {}, "latency": {}, "lossless": {}, "drops": {}, "files": {},
            "criteria": {}, "samples": self.samples,
        }
        samples = self.samples
        warm = [s for s in samples if window <= s["t_s"] < 2 * window]
        last = [s for s in samples if s["t_s"] >= duration - window]
        after_warm = [s for s in samples if s["t_s"] >= window]

        def median(rows: list[dict], key: str, name: str) -> float | None:
            values = [r[key][name] for r in rows if r[key].get(name) is not None]
            return float(np.median(values)) if values else None

        for name in self.pids:
            base, end = median(warm, "rss_mb", name), median(last, "rss_mb", name)
            fds = [s["fds"][name] for s in after_warm if s["fds"].get(name) is not None]
            report["processes"][name] = {
                "pid": self.pids[name],
                "rss_after_warmup_mb": base, "rss_end_mb": end,
                "rss_growth": (end / base - 1) if base and end else None,
                "fds_after_warmup": fds[0] if fds else None, "fds_max": max(fds, default=None),
                "fds_end": fds[-1] if fds else None}
        report["processes"]["describe"] = {**report["processes"].get("describe", {}),
                                           "pids": self.describe_pids} \
            if self.describe_pids else {"pids": []}

        # Latency over both displays, by when each frame was received.
        everything = [d.read_all() for d in displays]
        per_display = {}
        t0_ns = int(t0 * 1e9) if t0 is not None else 0
        end_ns = int(t_end * 1e9)
        first_lat, last_lat, first_recs, last_recs = [], [], [], []
        for d, rec in zip(displays, everything, strict=True):
            first = rec[(rec["t_received"] >= t0_ns)
                        & (rec["t_received"] < t0_ns + int(window * 1e9))]
            final_w = rec[(rec["t_received"] >= end_ns - int(window * 1e9))
                          & (rec["t_received"] < end_ns)]
            first_lat.append(latency_ms(first))
            last_lat.append(latency_ms(final_w))
            first_recs.append(first)
            last_recs.append(final_w)
            seqs = rec["seq"]
            gaps = int(np.clip(np.diff(seqs) - 1, 0, None).sum()) if seqs.size > 1 else 0
            per_display[d.name] = {"frames": int(rec.size), "seq_gaps": gaps,
                                   "all": percentiles(latency_ms(rec)), **d.summary}
        first_w = percentiles(np.concatenate(first_lat))
        last_w = percentiles(np.concatenate(last_lat))
        # Where a drift comes from: each part of the latency in the first and last sixth
        first_w["parts"] = parts_ms(np.concatenate(first_recs))
        last_w["parts"] = parts_ms(np.concatenate(last_recs))
        drift = (last_w["p99"] / first_w["p99"] - 1) if first_w["p99"] and last_w["p99"] \
            else None
        def other_cpu(rows: list[dict]) -> float | None:
            values = [r["other_cpu"] for r in rows if r.get("other_cpu") is not None]
            return round(float(np.mean(values)), 4) if values else None

        first_rows = [s for s in samples if s["t_s"] < window]
        report["latency"] = {"first_window": first_w, "last_window": last_w,
                             "p99_drift": drift, "displays": per_display,
                             # what other processes took of the host in each window
                             "other_cpu_first_window": other_cpu(first_rows),
                             "other_cpu_last_window": other_cpu(last),
                             "other_cpu_max": max((s["other_cpu"] for s in samples
                                                   if s.get("other_cpu") is not None),
                                                  default=None)}

        lost = {}
        if final:
            lost["segment->render"] = _diff(final.get("segmented"), final.get("rendered"))
            lost["render->record"] = _diff(final.get("rendered"), final.get("recorded"))
            lost["recorder->file"] = _diff(final.get("written"), in_file)
        report["lossless"] = {"counts": {**final, "in_file": in_file}, "lost": lost}
        report["drops"] = {
            "at_capture": final.get("dropped_at_capture"),
            "published": final.get("published"),
            "displays": {n: {"frames": v["frames"], "seq_gaps": v["seq_gaps"],
                             "superseded": v.get("superseded"), "rejected": v.get("rejected")}
                         for n, v in per_display.items()}}

        files = {key: {"after_warmup": after_warm[0][key] if after_warm else None,
                       "max": max((s[key] for s in after_warm), default=None),
                       "end": after_warm[-1][key] if after_warm else None}
                 for key in ("shm_in_use", "orstream_files", "shm_total")}
        files["shm_paths_seen"] = sorted(self.shm_seen)
        files["orstream_files_after_stop"] = after["orstream_files"]
        files["fds_pipeline_before_start"] = after["fds_before_start"]
        files["fds_pipeline_after_stop"] = after["fds_pipeline"]
        report["files"] = files

        report["stopped_cleanly"] = stopped_cleanly
        report["criteria"] = criteria(report)
        report["passed"] = all(c["pass"] for c in report["criteria"].values())
        return report


def _error_text(exc: BaseException | None) -> str | None:
    return None if exc is None else f"{type(exc).__name__}: {exc}"


def _diff(upstream: int | None, downstream: int | None) -> int | None:
    return None if upstream is None or downstream is None else upstream - downstream


def frames_in(path: Path) -> int | None:
    """Video packets in a recording, by demuxing it (no decode); None without a file."""
    import av

    if not path.exists():
        return None
    try:
        with av.open(str(path)) as container:
            return sum(1 for p in container.demux(video=0) if p.size)
    except (av.FFmpegError, OSError, IndexError):
        return None


def criteria(report: dict) -> dict:
    """Each criterion of the report: measured value, limit, pass."""
    out: dict[str, dict] = {}

    def put(name: str, value, limit: str, ok: bool) -> None:
        out[name] = {"value": value, "limit": limit, "pass": bool(ok)}

    exits = {n: d.get("exit_code") for n, d in report["latency"]["displays"].items()}
    put("ran to the end", report["error"] or report["describe_error"] or "yes",
        "no error, captions and every display to the end",
        report["stopped_cleanly"] and report["describe_error"] is None
        and report["config"]["measured_s"] > 0
        and bool(exits) and all(code == 0 for code in exits.values()))
    for name, proc in report["processes"].items():
        if "rss_growth" in proc:
            growth = proc["rss_growth"]
            put(f"RSS growth {name}", growth, f"< {RSS_GROWTH_LIMIT:.0%}",
                growth is not None and growth < RSS_GROWTH_LIMIT)
            put(f"fds flat {name}", f"{proc['fds_after_warmup']} -> max {proc['fds_max']}",
                "max <= after warm-up", proc["fds_max"] is not None
                and proc["fds_max"] <= proc["fds_after_warmup"])
    drift = report["latency"]["p99_drift"]
    put("end-to-end p99 drift", drift, f"< {P99_DRIFT_LIMIT:.0%}",
        drift is not None and drift < P99_DRIFT_LIMIT)
    lost = report["lossless"]["lost"]
    put("lost on lossless edges", lost, "0 each",
        bool(lost) and all(v == 0 for v in lost.values()))
    files = report["files"]
    for key in ("shm_in_use", "orstream_files"):
        f = files[key]
        put(f"{key} flat", f"{f['after_warmup']} -> max {f['max']}", "max <= after warm-up",
            f["max"] is not None and f["max"] <= f["after_warmup"])
    put("orstream files left after stop", files["orstream_files_after_stop"], "0",
        files["orstream_files_after_stop"] == 0)
    return out


# ---------------------------------------------------------------------- output


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    t = np.array([s["t_s"] for s in samples]) / 60
    window = report["config"]["window_s"] / 60
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
    (ax_rss, ax_fd), (ax_lat, ax_files) = axes
    for name in report["processes"]:
        if "rss_growth" not in report["processes"][name]:
            continue
        ax_rss.plot(t, [s["rss_mb"].get(name) or np.nan for s in samples], label=name)
        ax_fd.plot(t, [s["fds"].get(name) or np.nan for s in samples], label=name)
    ax_rss.set_ylabel("RSS MiB")
    ax_fd.set_ylabel("open file descriptors")
    for q in ("p50", "p99"):
        ax_lat.plot(t, [s["latency_ms"][q] if s["latency_ms"][q] is not None else np.nan
                        for s in samples], label=f"{q} per sample")
    ax_lat.set_ylabel("capture -> display ms")
    other = [s.get("other_cpu") for s in samples]
    if any(v is not None for v in other):  # other jobs on the host, against the latency
        ax_other = ax_lat.twinx()
        ax_other.plot(t, [100 * v if v is not None else np.nan for v in other], color="0.5",
                      lw=0.8, label="other processes' CPU %")
        ax_other.set_ylabel("other processes, % of host CPU", color="0.4")
        ax_other.set_ylim(0, 100)
        ax_other.legend(fontsize=8, loc="upper right")
    for key in ("shm_in_use", "orstream_files"):
        ax_files.plot(t, [s[key] for s in samples], label=key, drawstyle="steps-post")
    ax_files.set_ylabel("files")
    for ax in axes.flat:
        ax.axvspan(0, window, color="0.9", zorder=0)  # the warm-up / first window
        if t.size:
            ax.axvspan(max(t[-1] - window, 0), t[-1], color="0.95", zorder=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("minutes since both displays received")
    verdict = "PASS" if report["passed"] else "FAIL"
    fig.suptitle(f"orstream soak, {report['config']['measured_s'] / 60:.1f} min, "
                 f"{report['machine']['cpu']}: {verdict} (shaded: first and last sixth)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def print_report(report: dict) -> None:
    rows = [{"process": n, **p} for n, p in report["processes"].items() if "rss_growth" in p]
    for row in rows:
        if row["rss_growth"] is not None:
            row["rss_growth"] = row["rss_growth"] * 100
    print(table(rows, [("process", "process", "s"),
                       ("rss_after_warmup_mb", "RSS after warm-up MiB", ".1f"),
                       ("rss_end_mb", "RSS last sixth MiB", ".1f"),
                       ("rss_growth", "growth %", "+.2f"),
                       ("fds_after_warmup", "fds after warm-up", "d"),
                       ("fds_max", "fds max", "d"), ("fds_end", "fds end", "d")]))
    lat = report["latency"]
    print()
    def pct(v: float | None) -> float | None:
        return None if v is None else 100 * v

    print(table([{"window": "first sixth", **lat["first_window"],
                  "other": pct(lat.get("other_cpu_first_window"))},
                 {"window": "last sixth", **lat["last_window"],
                  "other": pct(lat.get("other_cpu_last_window"))}],
                [("window", "capture -> display", "s"), ("p50", "p50 ms", ".1f"),
                 ("p99", "p99 ms", ".1f"), ("max", "max ms", ".1f"),
                 ("other", "other processes' CPU %", ".1f")]))
    first_parts, last_parts = (lat[w].get("parts") or {} for w in ("first_window",
                                                                   "last_window"))
    if first_parts and last_parts:
        print()  # where the latency went, first vs last sixth: a drift's source
        print(table([{"part": name, "p50_first": first_parts[name]["p50"],
                      "p50_last": last_parts[name]["p50"], "p99_first": first_parts[name]["p99"],
                      "p99_last": last_parts[name]["p99"]} for name in (*PARTS, "whole")],
                    [("part", "part of the latency", "s"), ("p50_first", "p50 first ms", ".1f"),
                     ("p50_last", "p50 last ms", ".1f"), ("p99_first", "p99 first ms", ".1f"),
                     ("p99_last", "p99 last ms", ".1f")]))
    counts = report["lossless"]["counts"]
    drops = report["drops"]
    print(f"\nframes: rendered {counts.get('rendered')}, recorded {counts.get('recorded')}, "
          f"written {counts.get('written')}, in the file {counts.get('in_file')}; dropped at "
          f"capture {drops['at_capture']} (latest edge); captions {counts.get('captions')}")
    for name, d in drops["displays"].items():
        print(f"{name}: {d['frames']} frames, {d['seq_gaps']} seq gaps (latest: newer "
              f"frame shown), {d['rejected']} rejected")
    print()
    print(table([{"criterion": n, "value": _shown(c["value"]), "limit": c["limit"],
                  "result": "PASS" if c["pass"] else "FAIL"}
                 for n, c in report["criteria"].items()],
                [("criterion", "criterion", "s"), ("value", "measured", "s"),
                 ("limit", "limit", "s"), ("result", "", "s")]))


def _shown(value) -> str:
    if isinstance(value, float):
        return f"{value:+.2%}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def default_sample_s(minutes: float) -> float:
    """Every few seconds: 360 samples in 30 minutes, at least 1 s apart in short runs."""
    return min(5.0, max(1.0, minutes * 60 / 360))


def run(minutes: float, out: Path, overrides: list[str] | None = None,
        sample_s: float | None = None, interrupted: threading.Event | None = None) -> dict:
    """Soak for `minutes`; writes out/soak.json and out/soak.png and returns the report."""
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        soak = Soak(minutes, list(overrides or []), sample_s or default_sample_s(minutes),
                    Path(tmp))
        report = soak.run(interrupted or threading.Event())
    report["json"] = str(write_json(out / "soak.json", report))
    report["png"] = str(plot(report, out / "soak.png"))
    return report


def _minutes(text: str) -> float:
    value = float(text)
    if not 0.1 <= value <= 24 * 60:
        raise argparse.ArgumentTypeError(f"expected 0.1 to 1440 minutes, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=_minutes, default=30.0,
                        help="soak length from the first frame at both displays")
    parser.add_argument("--sample-s", type=float, default=None,
                        help="seconds between samples (default: 1-5, 360 in a long run)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override on top of the default config")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    interrupted = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    report = run(args.minutes, args.out, args.set, args.sample_s, interrupted)
    print()
    print_report(report)
    failed = [n for n, c in report["criteria"].items() if not c["pass"]]
    print(f"\n{report['json']}\n{report['png']}")
    if failed:
        print(f"FAILED: {'; '.join(failed)}")
        return 1
    print("every criterion met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
