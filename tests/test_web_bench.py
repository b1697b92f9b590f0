"""The web benchmark's CPU accounting (benchmarks/web.py): each process's CPU over the
measured window goes to the part of the run it belongs to, children included."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from orstream.benchmarks.procfs import host_cpu_jiffies
from orstream.benchmarks.web import _cpu_jiffies, _cpu_use

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
