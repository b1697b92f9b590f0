"""Bench reports: report.json (schema in pipeline/bench/REPORT.md), report.md (the tables), and
three plots readable at a glance: latency CDF per stage, end-to-end latency over time with
drops marked, and the per-stage breakdown as stacked bars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

FIGURES = ("p50", "p90", "p95", "p99", "p99.9", "max", "mean")
# Notes that change what the figures mean: shown in bold under the title, not only at the end.
ALERTS = ("UNLIKE", "asked for")


def compare(report: dict[str, Any], baseline: dict[str, Any],
            threshold: float = 0.10) -> dict[str, Any]:
    """Ratio new / baseline per latency figure and for throughput; a latency ratio above
    1 + threshold (or a throughput ratio below 1 - threshold) is a regression."""
    rows = []

    def add(name: str, new: float | None, old: float | None, higher_is_worse: bool) -> None:
        if new is None or not old:
            return
        ratio = new / old
        worse = ratio > 1 + threshold if higher_is_worse else ratio < 1 - threshold
        rows.append({"figure": name, "baseline": old, "now": new, "ratio": ratio,
                     "regression": worse})

    for fig in ("p50", "p99"):
        add(f"end_to_end.{fig}", report["latency_ms"]["end_to_end"].get(fig),
            baseline["latency_ms"]["end_to_end"].get(fig), True)
        for stage, figs in report["latency_ms"]["stages"].items():
            old = baseline["latency_ms"]["stages"].get(stage, {}).get(fig)
            add(f"{stage}.{fig}", figs.get(fig), old, True)
    add("throughput_fps", report["throughput_fps"], baseline.get("throughput_fps"), False)
    return {"threshold": threshold, "rows": rows,
            "regressions": [r["figure"] for r in rows if r["regression"]]}


def _stage_order(report: dict[str, Any]) -> list[str]:
    return list(report["latency_ms"]["stages"])


def plot_cdf(report: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    series = report["series"]
    e2e = np.sort(series["end_to_end_ms"])
    ax.plot(e2e, np.linspace(0, 1, len(e2e)), lw=2.5, color="black", label="end to end")
    for stage in _stage_order(report):
        ms = np.sort(report["_stage_samples"][stage])
        ax.plot(ms, np.linspace(0, 1, len(ms)), lw=1.5, label=stage)
    budget = report["budget"]["budgets"]["end_to_end_p99_ms"]
    ax.axvline(budget, color="red", ls="--", lw=1, label=f"e2e p99 budget {budget:g} ms")
    ax.axhline(0.99, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of frames")
    ax.set_title("Latency CDF per stage")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_timeline(report: dict[str, Any], path: Path) -> None:
    series = report["series"]
    t, e2e, seqs = (np.asarray(series[k]) for k in ("t_s", "end_to_end_ms", "seq"))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(t, e2e, lw=1, color="tab:blue", label="end-to-end latency")
    budget = report["budget"]["budgets"]["end_to_end_p99_ms"]
    ax.axhline(budget, color="red", ls="--", lw=1, label=f"p99 budget {budget:g} ms")
    dropped = report["dropped_seqs_after_warmup"]
    if dropped:
        # A dropped frame has no time of its own: place it where its seq falls between the
        # rendered frames around it.
        dt = np.interp(dropped, seqs, t)
        ax.scatter(dt, np.full(len(dt), e2e.max() * 1.05), marker="v", color="red", s=18,
                   label=f"dropped frames ({len(dropped)})", zorder=3)
    ax.set_xlabel("time since the first measured frame (s)")
    ax.set_ylabel("ms")
    ax.set_title("End-to-end latency over time")
    # Below the axes: inside, it hid the drop markers along the top edge.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8,
              frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_breakdown(report: dict[str, Any], path: Path) -> None:
    stages = _stage_order(report)
    figs = ("p50", "p95", "p99")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bottom = np.zeros(len(figs))
    for stage in stages:
        values = np.array([report["latency_ms"]["stages"][stage][f] for f in figs])
        ax.bar(figs, values, bottom=bottom, label=stage)
        bottom += values
    e2e = [report["latency_ms"]["end_to_end"][f] for f in figs]
    ax.plot(figs, e2e, "ko-", label="end to end (measured)")
    ax.set_ylabel("ms")
    # Percentiles do not add: the stack is each stage's own figure, the line what frames
    # really took end to end (below the stack: stages' bad frames were different frames;
    # above it: time spent queueing and in hops).
    ax.set_title("Per-stage latency percentiles, stacked, against end to end")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    b = report["budget"]
    lines = [
        f"# orstream bench: {'PASS' if b['pass'] else 'FAIL'} ({b['profile']} profile)", "",
        *[f"**{n}**\n" for n in report.get("notes", []) if n.startswith(ALERTS)],
        f"Source `{report['source']['spec']}` ({report['source']['mode']}), "
        f"{report['frames']} frames after {report['warmup_frames']} warm-up; device "
        f"{report['device']['kind']} {report['device']['name']}"
        + (f" ({report['device']['cpu_isa']})" if report["device"].get("cpu_isa") else "")
        + "; engine "
        f"{report['engine'].get('backend')} {report['engine'].get('precision') or ''}.", "",
        f"Throughput {report['throughput_fps']:.2f} fps; dropped {report['dropped']} of "
        f"{report['captured']} captured ({100 * report['drop_rate']:.2f} %); output interval "
        f"jitter (std) {report['jitter_ms']['interval_std']:.2f} ms; startup (engine load "
        f"and warm-up, to the first frame) {report['startup_s']:.2f} s; peak RSS "
        f"{report['memory']['cpu_rss_mb']:.0f} MB.", "",
        "| stage | " + " | ".join(FIGURES) + " | budget p99 |",
        "|---|" + "---|" * (len(FIGURES) + 1),
    ]
    budgets = b["budgets"]
    unjudged = {x["stage"] for x in b.get("not_judged", [])}
    for stage, figs in [*report["latency_ms"]["stages"].items(),
                        ("end_to_end", report["latency_ms"]["end_to_end"])]:
        limit = budgets["end_to_end_p99_ms"] if stage == "end_to_end" else \
            budgets["stages_p99_ms"].get(stage)
        limit = "not judged" if stage in unjudged else limit
        lines.append(f"| {stage} | " + " | ".join(f"{figs[f]:.2f}" for f in FIGURES)
                     + f" | {limit if limit is not None else '-'} |")
    if b["broken"]:
        lines += ["", "Broken budgets:"] + [
            f"- {x['stage']} {x['figure']} = {x['value']:.4g} "
            f"{'<' if x['figure'] == 'fps' else '>'} {x['budget']:g}" for x in b["broken"]]
    lines += [f"\n{x['stage']} {x['figure']} not judged: {x['why']}."
              for x in b.get("not_judged", [])]
    if report.get("floors"):
        lines += ["", "Floors measured in the same run:"]
        for f in report["floors"]:
            ratio = (f" ({f['p99_over_p50']:.1f}x p50), max {f['max']:.3f} ms"
                     if "p99_over_p50" in f else "")
            lines.append(f"- {f['what']}: " + (f"skipped ({f['skipped']})" if "skipped" in f
                                                 else f"p50 {f['p50']:.3f} ms, p99 "
                                                      f"{f['p99']:.3f} ms{ratio}"))
    if report.get("baseline"):
        cmp = report["baseline"]
        kinds = "; ".join(f"{d['key']}: {d['baseline']} then, {d['now']} now"
                          for d in cmp.get("unlike", []))
        lines += ["", f"Against the baseline (regression: > {100 * cmp['threshold']:.0f} % "
                      f"worse)" + (f", an UNLIKE run ({kinds})" if kinds else "") + ":", "",
                  "| figure | baseline | now | ratio | |",
                  "|---|---|---|---|---|"]
        for r in cmp["rows"]:
            lines.append(f"| {r['figure']} | {r['baseline']:.2f} | {r['now']:.2f} | "
                         f"{r['ratio']:.2f} | {'REGRESSION' if r['regression'] else ''} |")
    if report.get("notes"):
        lines += ["", "Notes:"] + [f"- {n}" for n in report["notes"]]
    lines += ["", "Why these budgets: " + "; ".join(
        f"{k}: {v}" for k, v in b["why"].items() if k in budgets or k in
        budgets["stages_p99_ms"])]
    lines += ["", "![CDF](latency_cdf.png) ![timeline](latency_over_time.png) "
                  "![stages](stage_breakdown.png)"]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "md": out / "report.md",
             "cdf": out / "latency_cdf.png", "timeline": out / "latency_over_time.png",
             "breakdown": out / "stage_breakdown.png"}
    plot_cdf(report, paths["cdf"])
    plot_timeline(report, paths["timeline"])
    plot_breakdown(report, paths["breakdown"])
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    paths["json"].write_text(json.dumps(public, indent=2) + "\n")
    paths["md"].write_text(markdown(report))
    return paths
