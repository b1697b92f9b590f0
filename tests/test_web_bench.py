"""The web benchmark (benchmarks/web.py): its CPU accounting (each process's CPU over the
measured window goes to the part of the run it belongs to, children included) and the
priority it runs the browser at."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from orstream.benchmarks.procfs import children, descendants, host_cpu_jiffies, thread_niceness
from orstream.benchmarks.web import _chromium, _cpu_jiffies, _cpu_use, main

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

BUSY = "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end: pass"
# A parent that only waits, with a busy child: as the pipeline with its describe worker.
PARENT = ("import subprocess, sys\n"
          f"subprocess.run([sys.executable, '-c', {BUSY!r}])")
IDLE = "import time\ntime.sleep(30)"


def test_cpu_goes_to_the_process_tree_it_belongs_to():
    pipeline = subprocess.Popen([sys.executable, "-c", PARENT])
    web = subprocess.Popen([sys.executable, "-c", IDLE])
    try:
        time.sleep(1.0)  # the child started and is spinning
        before = _cpu_jiffies(pipeline.pid, web.pid), host_cpu_jiffies()
        time.sleep(2.0)
        after = _cpu_jiffies(pipeline.pid, web.pid), host_cpu_jiffies()
    finally:
        for proc in (pipeline, web):
            proc.kill()
            proc.wait()
    use = _cpu_use(before, after, seconds=2.0, frames=60)
    run, display = use["processes"]["orstream run"], use["processes"]["orstream web"]
    # The busy grandchild is the pipeline's: about one core (a loaded CI host gives less).
    assert 0.5 <= run["cores"] <= 1.1, use
    assert run["ms_per_frame"] == pytest.approx(run["cores"] * 2.0 * 1e3 / 60, abs=0.5)
    assert display["cores"] < 0.05, use
    assert use["total_cores"] >= run["cores"] and 0 < use["host_busy_pct"] <= 100


def test_chromium_runs_at_the_niceness_asked_and_cannot_raise_itself_above_it(tmp_path):
    """The benchmark runs the browser as a user's display runs: at the niceness asked (the
    pipeline's by default), its forks (Chromium's renderer and GPU processes) too, and, as
    root, unable to raise its threads above the pipeline as Chromium does (to nice -8)."""
    stand_in = tmp_path / "chromium"  # raises its priority as Chromium's threads do, then forks
    stand_in.write_text("#!/bin/sh\nrenice -n -8 -p $$ >/dev/null 2>&1\nsleep 30 &\nwait\n")
    stand_in.chmod(0o755)
    (ours,) = set(thread_niceness(os.getpid()))
    for asked in (10, 0):
        expected = min(ours + asked, 19)
        browser = _chromium(str(stand_in), "http://127.0.0.1:9/", (1280, 720),
                            tmp_path / "profile", asked)
        try:
            deadline = time.monotonic() + 10
            while not children(browser.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            (fork,) = children(browser.pid)
            assert thread_niceness(browser.pid) == [expected]
            assert thread_niceness(fork) == [expected]
        finally:
            for pid in descendants(browser.pid):
                os.kill(pid, signal.SIGKILL)
            browser.kill()
            browser.wait()


@pytest.mark.parametrize("value", ["-5", "20", "ten"])
def test_a_niceness_out_of_range_is_refused_naming_the_option(value, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--browser-nice", value])
    assert stopped.value.code == 2
    assert "--browser-nice" in capsys.readouterr().err
