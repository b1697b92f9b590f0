"""`orstream bench`: the report a release gate reads, and the exit code it acts on."""

from __future__ import annotations

import json

import pytest

from orstream.engines.backends.base import cpu_isa
from orstream.pipeline.bench.harness import noisy_host_note, plan, unlike
from orstream.pipeline.bench.profiles import ProfileError, available, load_profile
from orstream.pipeline.bench.report import compare
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
    note = noisy_host_note(noisy, broken)
    assert note.startswith("noisy host") and "6.5x" in note and "(end_to_end)" in note
    quiet = [{**noisy[1], "p99": 4.5, "p99_over_p50": 1.5}]
    assert noisy_host_note(quiet, broken) is None
    assert "broken tail" not in noisy_host_note(noisy, {"pass": True, "broken": []})


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


def _baseline(folder, source: str, mode: str, profile: str = "cpu"):
    """An earlier run's report.json, as much of it as a comparison reads."""
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({
        "source": {"spec": source, "mode": mode}, "budget": {"profile": profile},
        "latency_ms": {"end_to_end": {"p50": 10.0, "p99": 20.0}, "stages": {}},
        "throughput_fps": 30.0}))
    return folder


def test_lossless_replay_benches_every_frame_and_says_the_clip_was_short(tmp_path, capsys):
    clip = write_video(tmp_path / "clip.mp4", seconds=2, width=320, height=256, fps=25)
    out = tmp_path / "r"
    # A synthetic paced baseline is another kind of run: compared only when asked, and marked.
    old = _baseline(tmp_path / "old", "synthetic", "paced")
    assert main(["bench", "--source", str(clip), "--mode", "lossless", "--frames", "1000",
                 "--warmup", "5", "--profile", "cpu", "--out", str(out), "--no-peers",
                 "--set", "publish.endpoint=null", "--baseline", str(old), "--allow-unlike",
                 *LOOSE]) == 0
    said = capsys.readouterr().out
    assert "asked for 1000 frames; the clip has 50: measured 45 after 5 warm-up" in said
    assert "UNLIKE BASELINE: source synthetic then" in said
    report = json.loads((out / "report.json").read_text())
    assert report["captured"] == 50 and report["dropped"] == 0
    assert report["frames"] == 45 and report["series"]["seq"] == list(range(5, 50))
    assert report["frames_asked"] == 1000
    assert report["notes"][0].startswith("UNLIKE BASELINE")
    assert {d["key"] for d in report["baseline"]["unlike"]} == {"source", "mode"}
    md = (out / "report.md").read_text()
    assert "**asked for 1000 frames" in md and "an UNLIKE run" in md
    # Lossless queues every frame behind the ones before it: end to end is the queue's
    # length, not live lag, so it is reported but not judged; keeping up is.
    assert report["budget"]["not_judged"][0]["stage"] == "end_to_end"
    assert "not judged: end_to_end p99 (lossless" in said
    assert "| not judged |" in md


def test_lossless_is_judged_on_keeping_up_with_the_feed_not_on_queueing():
    from orstream.pipeline.bench.harness import judge
    from orstream.pipeline.bench.profiles import load_profile

    profile = load_profile("cpu", {"kind": "cpu"}, [])
    figures = {"p99": 900.0}  # a long queue: far over the 66.7 ms live budget
    report = {"source": {"mode": "lossless"}, "throughput_fps": 24.0, "drop_rate": 0.0,
              "latency_ms": {"end_to_end": figures, "stages": {"segment": {"p99": 20.0}}}}
    verdict = judge(report, profile)
    assert verdict["broken"] == [{"stage": "throughput", "figure": "fps", "value": 24.0,
                                  "budget": 30}]
    assert judge({**report, "throughput_fps": 45.0}, profile)["pass"]
    paced = judge({**report, "source": {"mode": "paced"}, "throughput_fps": 45.0}, profile)
    assert [b["stage"] for b in paced["broken"]] == ["end_to_end"]


def test_a_baseline_of_another_kind_of_run_is_refused_before_running(tmp_path, capsys):
    old = _baseline(tmp_path / "old", "procedure.mp4", "lossless")
    out = tmp_path / "r"
    assert main(["bench", "--source", "synthetic", "--frames", "20", "--profile", "cpu",
                 "--out", str(out), "--no-peers", "--baseline", str(old), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "another kind of run" in err and "source procedure.mp4 then, synthetic now" in err
    assert "mode lossless then, paced now" in err and "--allow-unlike" in err
    assert not out.exists()  # refused before anything ran


def test_runs_are_alike_only_with_the_same_source_mode_and_profile():
    now = {"source": "synthetic", "mode": "paced", "profile": "cpu"}
    assert unlike(now, dict(now)) == []
    assert unlike(now, {**now, "profile": "t4"}) == [
        {"key": "profile", "baseline": "t4", "now": "cpu"}]


def test_bench_never_binds_the_live_default_ports(monkeypatch):
    monkeypatch.delenv("ORSTREAM_SET")  # the suite's own port move: the defaults here
    bench_plan = plan("synthetic", profile_name="cpu", frames=10, warmup=2)
    cfg = bench_plan.cfg
    for endpoint in (cfg.publish.endpoint, cfg.describe.ask_endpoint):
        assert endpoint.startswith("tcp://127.0.0.1:"), endpoint
        assert int(endpoint.rpartition(":")[2]) not in (5600, 5601), endpoint
    assert cfg.segment.size == (256, 320)  # the profile's (H, W) input, passed on as WxH


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
