"""`orstream bench`: the report a release gate reads, and the exit code it acts on."""

from __future__ import annotations

import json

import pytest
from orstream.benchmarks.harness import _jitter_note
from orstream.benchmarks.profiles import ProfileError, available, load_profile
from orstream.benchmarks.report import compare
from orstream.engines.backends.base import cpu_isa
from orstream.pipeline.cli import main
from orstream.training.synth.writers import write_video

SMALL = ["--set", "publish.endpoint=null", "--set", "source.width=640", "--set",
         "source.height=360"]
LOOSE = ["--set", "budgets.end_to_end_p99_ms=60000", "--set", "budgets.max_drop_rate=1",
         "--set", "budgets.stages_p99_ms={}"]


def test_a_run_within_budget_writes_the_report_and_exits_0(tmp_path, capsys):
    out = tmp_path / "r"
    code = main(["bench", "--source", "synthetic", "--frames", "40", "--warmup", "10",
                 "--profile", "cpu", "--out", str(out), *SMALL, *LOOSE])
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASS")
    report = json.loads((out / "report.json").read_text())
    assert report["frames"] == 40 and report["throughput_fps"] > 5
    assert report["captured"] >= 50 and report["dropped"] >= 0
    for figs in [report["latency_ms"]["end_to_end"],
                 *report["latency_ms"]["stages"].values()]:
        assert {"p50", "p95", "p99", "max"} <= set(figs) and figs["p50"] <= figs["p99"]
    assert set(report["latency_ms"]["stages"]) == {"capture", "segment", "render"}
    assert report["device"]["kind"] == "cpu" and report["engine"]["backend"]
    assert report["device"]["cpu_isa"] == " ".join(cpu_isa())  # one model name, many ISAs
    assert report["budget"]["profile"] == "cpu" and report["budget"]["pass"] is True
    assert report["budget"]["broken"] == []
    assert any(f["what"].startswith("memcpy") for f in report["floors"])
    jitter = next(f for f in report["floors"] if f["what"].startswith("machine jitter"))
    assert 0 < jitter["p50"] <= jitter["p99"] <= jitter["max"]
    assert jitter["p99_over_p50"] == pytest.approx(jitter["p99"] / jitter["p50"])
    assert "machine jitter" in (out / "report.md").read_text()
    for name in ("report.md", "latency_cdf.png", "latency_over_time.png",
                 "stage_breakdown.png"):
        assert (out / name).stat().st_size > 1000, name


def test_a_noisy_host_is_named_beside_the_tail_budgets_it_broke():
    broken = {"pass": False, "broken": [{"stage": "end_to_end", "figure": "p99"},
                                        {"stage": "capture", "figure": "drop_rate"}]}
    noisy = [{"what": "memcpy", "p50": 0.5, "p99": 0.6},
             {"what": "machine jitter", "p50": 3.0, "p99": 19.5, "max": 48.0,
              "p99_over_p50": 6.5}]
    note = _jitter_note(noisy, broken)
    assert note.startswith("noisy host") and "6.5x" in note and "(end_to_end)" in note
    quiet = [{**noisy[1], "p99": 4.5, "p99_over_p50": 1.5}]
    assert _jitter_note(quiet, broken) is None
    assert "broken tail" not in _jitter_note(noisy, {"pass": True, "broken": []})


def test_a_broken_budget_exits_1_and_names_stage_and_figure(tmp_path, capsys):
    code = main(["bench", "--source", "synthetic", "--frames", "20", "--warmup", "5",
                 "--profile", "cpu", "--out", str(tmp_path), "--no-peers", *SMALL,
                 "--set", "budgets.end_to_end_p99_ms=1"])
    assert code == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("FAIL: ") and "end_to_end p99" in last and "budget 1" in last
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["budget"]["pass"] is False
    assert {"stage": "end_to_end", "figure": "p99"}.items() <= report["budget"]["broken"][0].items()


def test_lossless_replay_benches_every_frame_of_a_clip(tmp_path):
    clip = write_video(tmp_path / "clip.mp4", seconds=2, width=320, height=256, fps=25)
    out = tmp_path / "r"
    assert main(["bench", "--source", str(clip), "--mode", "lossless", "--frames", "1000",
                 "--warmup", "5", "--profile", "cpu", "--out", str(out), "--no-peers",
                 "--set", "publish.endpoint=null", *LOOSE]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["captured"] == 50 and report["dropped"] == 0
    assert report["frames"] == 45 and report["series"]["seq"] == list(range(5, 50))


def test_profiles_load_with_their_reasons_and_bad_names_are_usage_errors(tmp_path):
    assert {"cpu", "t4", "h100", "jetson-orin-agx", "jetson-orin-nx",
            "jetson-orin-nano"} <= set(available())
    for name in available():
        profile = load_profile(name)
        assert "end_to_end_p99_ms" in profile.why  # every budget says why
    with pytest.raises(ProfileError, match="no such profile"):
        load_profile("pdp11")
    with pytest.raises(ProfileError, match="max_drop_rate"):
        load_profile("cpu", overrides=["budgets.max_drop_rate=7"])
    assert main(["bench", "--profile", "pdp11", "--out", str(tmp_path)]) == 2


def test_baseline_comparison_flags_regressions():
    def report(e2e_p99: float, fps: float) -> dict:
        return {"latency_ms": {"end_to_end": {"p50": 10.0, "p99": e2e_p99},
                               "stages": {"segment": {"p50": 5.0, "p99": 8.0}}},
                "throughput_fps": fps}

    result = compare(report(30.0, 25.0), report(20.0, 30.0), threshold=0.10)
    assert set(result["regressions"]) == {"end_to_end.p99", "throughput_fps"}
    ratios = {r["figure"]: r["ratio"] for r in result["rows"]}
    assert ratios["end_to_end.p99"] == pytest.approx(1.5) and ratios["segment.p50"] == 1.0
