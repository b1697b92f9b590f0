"""Capture to painted in a browser (`orstream web`) beside `orstream view`'s capture to receipt.

    python -m orstream.benchmarks.web [--seconds 30] [--warmup 10] [--settle 2] [--set KEY=VALUE]
                                      [--out ...] [--screenshot PNG] [--describe] [--full]
                                      [--viewport 1280x720] [--transport tcp|shm]
                                      [--browser-nice 0]

The default live pipeline (synthetic 1080p30, the shipped U-Net on the auto engine; the VLM
off unless `--describe`, which also asks a question on the page before the screenshot) runs
as `orstream run` in its own process, and `orstream web` in another, as they are deployed.
For the last 5 s of the `--warmup` s (at most half of it), `orstream view`'s receiver, in
this process, measures the pipeline alone: capture to receipt with no page open, what the
host gives the pipeline just then. Then headless Chromium (Debian's) opens the page as a
display would: Chromium on its own, with no DevTools client attached (Playwright's driver
would be sent every WebSocket frame of the page through the DevTools protocol, at a few ms
of CPU per frame on the same cores); Playwright attaches only after the window, for
`--screenshot` and `--describe`'s question. The page is given `--settle` s after its first
frame (its first second paints slower: layout, its script compiled; the tab's figures over
its whole life are reported beside), and, for `--seconds` s, the page measures
capture (the header's wall clock) to painted (the animation frame after drawImage) while
`orstream view`'s receiver, in this process, measures capture to receipt of the same
stream. Everything is on one host over loopback,
so the difference is what the browser display adds: JPEG encoding, the WebSocket, decoding
and painting. The page reports the size it shows the video at and gets frames scaled to it
(the default 1280x720 viewport: a canvas narrower than 1080p; `--viewport 1920x1080`: the
page full screen on an HD display); `--full` opens it as `?full=1`, which gets full
resolution whatever the canvas, for the comparison. `--transport shm` publishes over
`shm://` (a shared-memory ring) instead of tcp loopback, as a web server on the pipeline's
host would subscribe. Chromium runs at the pipeline's priority, as a user's browser would:
run as root (a container, CI), it would raise its compositor and IO threads to nice -8,
ahead of the pipeline, so as root it is started without CAP_SYS_NICE. `--browser-nice N`
starts it N lower, for comparison (10 was worse: the page waits on its own threads).

Beside the latencies, the CPU each part of the run used in the measured window (/proc: the
pipeline with its describe worker, `orstream web`, each kind of Chromium process,
Playwright's driver, this process), in cores and in CPU ms per painted frame, and how busy
the host's CPUs were. On two cores that all these share, the latencies follow what is left:
a run whose pipeline took more CPU per frame than another's ran on a slower host.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from orstream.benchmarks.common import machine, table, write_json
from orstream.benchmarks.procfs import (
    cmdline,
    descendants,
    host_cpu_jiffies,
    process_cpu_jiffies,
    thread_niceness,
)
from orstream.common.net import free_port
from orstream.pipeline.ports import free_port_pair
from orstream.pipeline.view import view

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
GOAL = {"p50": 60.0, "p99": 100.0}  # issue 21: capture to painted at 1080p30 on loopback
# The browser at the pipeline's priority. Lower, it paints late: in three runs each on a
# 2-core EPYC at the full-HD window, capture -> painted p99 114-135 ms at nice 10 against
# 82-87 ms at 0 (reports/2026-12-07-epyc-2core/web.md).
BROWSER_NICE = 0
ALONE_S = 5.0  # the end of the warm-up, before the page opens: the pipeline alone


def _start(args: list[str], ready: str, timeout_s: float = 180.0) -> subprocess.Popen:
    """`orstream ARGS` in its own process; returns once it printed a line starting `ready`."""
    proc = subprocess.Popen([sys.executable, "-m", "orstream.pipeline.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + timeout_s
    for line in proc.stdout:
        if line.startswith(ready):
            return proc
        if time.monotonic() > deadline:
            break
    _stop(proc)
    raise RuntimeError(f"`orstream {' '.join(args)}` never printed {ready!r}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stats(url: str, last_s: float | None = None) -> dict:
    """/api/stats: the tabs' figures over the last `last_s` seconds, else their whole life."""
    query = f"?last_s={last_s:g}" if last_s else ""
    with urllib.request.urlopen(url + "api/stats" + query, timeout=10) as response:
        return json.load(response)


def _cpu_jiffies(pipeline: int, web: int) -> dict[str, int]:
    """CPU clock ticks so far of every process of the run, summed by what it is: the
    pipeline (its describe worker included), the web server, each kind of Chromium process,
    Playwright's driver if one runs, and this process (view's receiver)."""
    ticks = {"benchmark (view)": process_cpu_jiffies(os.getpid())}
    ours = {pid: "orstream run" for pid in (pipeline, *descendants(pipeline))}
    ours |= {pid: "orstream web" for pid in (web, *descendants(web))}
    for pid in descendants(os.getpid()):
        if pid in ours:
            continue
        command = cmdline(pid)
        if "chromium" in command:
            kind = next((arg.removeprefix("--type=") for arg in command.split()
                         if arg.startswith("--type=")), "browser")
            ours[pid] = f"Chromium {kind}"
        elif "playwright" in command:
            ours[pid] = "Playwright driver"
    for pid, name in ours.items():
        ticks[name] = ticks.get(name, 0) + process_cpu_jiffies(pid)
    return ticks


def _cpu_use(before: tuple[dict[str, int], tuple[int, int]],
             after: tuple[dict[str, int], tuple[int, int]], seconds: float,
             frames: int) -> dict:
    """Per process kind over the window: cores used and CPU ms per painted frame; and how
    busy the host's CPUs were (all of them, in %)."""
    tick = os.sysconf("SC_CLK_TCK")
    (ticks0, (busy0, total0)), (ticks1, (busy1, total1)) = before, after
    # a process that started during the window counts from 0; one that ended is lost
    used = {name: (ticks1[name] - ticks0.get(name, 0)) / tick for name in ticks1}
    rows = {name: {"cores": round(s / seconds, 3),
                   "ms_per_frame": round(s * 1e3 / frames, 2) if frames else None}
            for name, s in sorted(used.items(), key=lambda item: -item[1])}
    total = sum(used.values())
    return {"processes": rows, "total_cores": round(total / seconds, 3),
            "total_ms_per_frame": round(total * 1e3 / frames, 2) if frames else None,
            "host_busy_pct": round(100 * (busy1 - busy0) / max(1, total1 - total0), 1)}


@contextlib.contextmanager
def _viewed(publish: str) -> Iterator[dict]:
    """`orstream view`'s receiver on `publish`, in this process, while the block runs; the
    dict yielded gets its summary ("summary") when the block ends."""
    stop, out = threading.Event(), {}
    viewer = threading.Thread(target=lambda: out.update(summary=view(
        publish, window=False, stop=stop, quiet=True)), daemon=True)
    viewer.start()
    try:
        yield out
    finally:
        stop.set()
        viewer.join(10)


def _chromium(binary: str, url: str, viewport: tuple[int, int], profile: Path,
              nice: int = 0) -> subprocess.Popen:
    """Headless Chromium showing `url`, as a display runs it: no DevTools client attached
    (Playwright's driver would get every WebSocket frame of the page through the DevTools
    protocol, base64-encoded). It listens for one on a free port, for the screenshot and the
    question after the measured window.

    Nor as root: Chromium run as root (a container, a CI job) sets its compositor and IO
    threads to nice -8, ahead of the pipeline whose frames it waits for, and the rest to 0
    whatever it was started at; a display run by a user cannot. So, as root, it is started
    without CAP_SYS_NICE. `nice` > 0 starts it, and every process and thread it makes, at
    that lower priority."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            raise RuntimeError("running as root, and no setpriv (util-linux) to start "
                               "Chromium without CAP_SYS_NICE: run the benchmark as a user")
        prefix += ["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice"]
    if nice:
        prefix += ["nice", "-n", str(nice)]
    return subprocess.Popen(
        [*prefix, binary, *CHROMIUM_ARGS, "--headless",
         f"--window-size={viewport[0]},{viewport[1]}", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _thread_niceness(browser: subprocess.Popen) -> list[int]:
    """The lowest and highest niceness of any thread of Chromium, as it runs."""
    found = [n for pid in (browser.pid, *descendants(browser.pid))
             for n in thread_niceness(pid)]
    return [min(found), max(found)] if found else []


def _painting(url: str, browser: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Wait until the page has painted a frame."""
    deadline = time.monotonic() + timeout_s
    while not any(tab["painted"] for tab in _stats(url)["tabs"]):
        if browser.poll() is not None:
            started = " ".join(browser.args[:6])
            raise RuntimeError(f"Chromium exited with code {browser.returncode} before the "
                               f"page painted a frame (started as: {started} ...)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the page painted no frame within {timeout_s:.0f} s")
        time.sleep(0.2)


def _attached(profile: Path) -> str:
    """The DevTools endpoint of the Chromium using `profile` (it writes its port there)."""
    port = (profile / "DevToolsActivePort").read_text().split()[0]
    return f"http://127.0.0.1:{port}"


def _measure(args: argparse.Namespace) -> dict:
    base = free_port_pair("127.0.0.1", 20000 + os.getpid() % 20000)
    publish, ask = f"tcp://127.0.0.1:{base}", f"tcp://127.0.0.1:{base + 1}"
    scratch = Path(tempfile.mkdtemp(prefix="orstream-web-bench-"))
    if args.transport == "shm":  # the frames in a shared-memory ring, not the socket
        publish = f"shm://{scratch}/publish.sock"
    pipeline = _start(["run", "--port-base", str(base), "--publish", publish, "--set",
                       f"describe.enabled={str(args.describe).lower()}",
                       *[f"--set={kv}" for kv in args.set]], "publishing on")
    web = browser = None
    try:
        port = free_port()
        web = _start(["web", publish, "--listen", f"127.0.0.1:{port}",
                      *(["--ask", ask] if args.describe else [])], "serving")
        url = f"http://127.0.0.1:{port}/"
        # The end of the warm-up: the pipeline and the web server without the page, for
        # what the host gives the pipeline alone just before the page opens.
        alone_s = min(ALONE_S, args.warmup / 2)
        time.sleep(args.warmup - alone_s)
        with _viewed(publish) as alone:
            time.sleep(alone_s)
        browser = _chromium(args.chromium, url + ("?full=1" if args.full else ""),
                            args.viewport, scratch / "chromium", args.browser_nice)
        _painting(url, browser)
        browser_nice = _thread_niceness(browser)  # as it runs, not as asked
        # The page's own start (layout, its script compiled, the first decodes) paints
        # slower for about a second: not the steady state the figures are about. It is
        # still reported, in the tab's figures over its whole life.
        time.sleep(args.settle)
        with _viewed(publish) as receipt:
            cpu_before = _cpu_jiffies(pipeline.pid, web.pid), host_cpu_jiffies()
            time.sleep(args.seconds)
            cpu_after = _cpu_jiffies(pipeline.pid, web.pid), host_cpu_jiffies()
        figures = _stats(url, args.seconds)
        whole = _stats(url)
        if args.describe or args.screenshot:
            _on_the_page(_attached(scratch / "chromium"), args)
    finally:
        if browser is not None:
            _stop(browser)
        if web is not None:
            _stop(web)
        _stop(pipeline)
        shutil.rmtree(scratch, ignore_errors=True)
    (tab,) = figures["tabs"]
    (life,) = whole["tabs"]
    return {"tab": tab, "tab_life": life, "server": figures["server"],
            "view": receipt["summary"], "view_alone": alone["summary"],
            "cpu": _cpu_use(cpu_before, cpu_after, args.seconds, tab["measured"]),
            "browser_nice": browser_nice}


def _on_the_page(endpoint: str, args: argparse.Namespace) -> None:
    """After the window, with Playwright attached: a question asked in the page's box
    (--describe), then the screenshot."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.connect_over_cdp(endpoint)
        (page,) = browser.contexts[0].pages
        if args.describe:  # the question box at work in the screenshot
            page.fill("#question", "is there smoke?")
            page.click("#ask-button")
            deadline = time.monotonic() + 30
            while not re.search(r"\(frame \d+", page.text_content("#answer") or ""):
                if time.monotonic() > deadline:
                    raise RuntimeError("the question on the page got no answer in 30 s")
                time.sleep(0.2)
        if args.screenshot:
            _screenshot(page.screenshot(), args.screenshot)
        browser.close()


def _screenshot(png: bytes, path: Path) -> None:
    """The page as a PNG small enough for the README (< 300 KB): 960 px wide, 64 colours
    per channel step are plenty for a picture of a page."""
    shot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    small = cv2.resize(shot, (960, 540), interpolation=cv2.INTER_AREA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), small // 8 * 8, (cv2.IMWRITE_PNG_COMPRESSION, 9))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=2.0,
                        help="s after the measured tab loads before its window starts")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="pipeline config override, e.g. source.width=1280")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/web.json"))
    parser.add_argument("--screenshot", type=Path, help="save the page as this PNG")
    parser.add_argument("--describe", action="store_true",
                        help="the VLM on (captions at 1 Hz) and the page's question box")
    parser.add_argument("--full", action="store_true",
                        help="the page as ?full=1: frames at full resolution, not scaled to "
                             "the canvas (the behaviour before frames were scaled)")
    parser.add_argument("--transport", choices=["tcp", "shm"], default="tcp",
                        help="how the pipeline publishes to `orstream web` and the viewer: "
                             "tcp loopback, or shm:// (a shared-memory ring, one host)")
    parser.add_argument("--browser-nice", type=_nice, default=BROWSER_NICE, metavar="N",
                        help="start Chromium N nicer than the pipeline (default %(default)s: "
                             "the same priority), every thread of it")
    parser.add_argument("--viewport", type=_size, default=(1280, 720), metavar="WxH",
                        help="the browser window, in CSS pixels (default 1280x720)")
    args = parser.parse_args(argv)
    if not Path(args.chromium).exists():
        print(f"no Chromium at {args.chromium} (Debian: apt-get install chromium)")
        return 2
    out = _measure(args)
    tab, server, summary = out["tab"], out["server"], out["view"]
    receipt = summary.latencies_ms.stats() if summary.latencies_ms.count else None
    alone = out["view_alone"].latencies_ms
    alone = alone.stats() if alone.count else None
    painted = {"n": tab["measured"], **tab["latency_ms"]}
    rows = [
        {"what": "the pipeline alone, before the page opened: view's capture -> receipt",
         **(alone or {})},
        {"what": "orstream view: capture -> receipt", **(receipt or {})},
        {"what": "orstream web: capture -> server receipt (whole run)",
         **server["receipt_ms"], "n": server["received"]},
        {"what": "orstream web: capture -> arrival at the page", **tab["arrived_ms"],
         "n": tab["measured"]},
        {"what": "orstream web: capture -> decoded on the page", **tab["decoded_ms"],
         "n": tab["measured"]},
        {"what": "orstream web: capture -> painted (Chromium)", **painted},
        {"what": "  the same tab over its whole life, its load included",
         **out["tab_life"]["latency_ms"], "n": out["tab_life"]["painted"]},
    ]
    sent = "x".join(map(str, tab["sent_size"])) if tab["sent_size"] else "-"
    shown = ("canvas " + "x".join(map(str, tab["box"])) + " device px" if tab["box"]
             else "canvas size not reported")
    print(f"\n1080p30 on loopback, {args.seconds:g} s measured after {args.warmup:g} s; "
          f"window {args.viewport[0]}x{args.viewport[1]}, {shown}, frames sent at {sent}; "
          f"Chromium's threads at nice {_span(out['browser_nice'])}")
    print(table(rows, [("what", "", "s"), ("n", "frames", "d"), ("p50", "p50 ms", ".1f"),
                       ("p95", "p95 ms", ".1f"), ("p99", "p99 ms", ".1f"),
                       ("max", "max ms", ".1f")]))
    fps = tab["measured"] / args.seconds
    print(f"painted {fps:.1f} fps; skipped for the tab {tab['skipped']}, superseded on the "
          f"page {tab['page_dropped']}; JPEG {tab['jpeg_bytes'] / 1024:.0f} KB, scale + "
          f"encode p50 {server['encode_ms']['p50']} ms")
    cpu = out["cpu"]
    print(f"\nCPU in the measured window (host busy {cpu['host_busy_pct']:.0f} %):")
    print(table([{"what": name, **use} for name, use in cpu["processes"].items()]
                + [{"what": "all of the above", "cores": cpu["total_cores"],
                    "ms_per_frame": cpu["total_ms_per_frame"]}],
                [("what", "", "s"), ("cores", "cores", ".2f"),
                 ("ms_per_frame", "CPU ms per frame painted", ".1f")]))
    met = (painted["p50"] is not None and painted["p50"] <= GOAL["p50"]
           and painted["p99"] <= GOAL["p99"])
    added = (painted["p50"] - receipt["p50"]) if receipt and painted["p50"] else None
    if added is not None:
        print(f"the browser adds {added:.1f} ms at p50 over view's receipt; goal p50 <= "
              f"{GOAL['p50']:.0f} ms, p99 <= {GOAL['p99']:.0f} ms: {'met' if met else 'NOT met'}")
    path = write_json(args.out, {
        "machine": machine(), "chromium": _chromium_version(args.chromium),
        "seconds": args.seconds, "warmup_s": args.warmup, "set": args.set,
        "describe": args.describe, "full": args.full, "viewport": list(args.viewport),
        "transport": args.transport, "browser_nice": out["browser_nice"],
        "view_alone_receipt_ms": alone, "alone_s": min(ALONE_S, args.warmup / 2),
        "view_receipt_ms": receipt, "web_painted_ms": painted, "web_painted_fps": fps,
        "web_server": server, "web_tab": tab, "web_tab_life": out["tab_life"],
        "settle_s": args.settle, "goal_ms": GOAL, "goal_met": met,
        "view_dropped": summary.dropped, "cpu": cpu})
    print(f"\n{path}")
    return 0


def _span(values: list[int]) -> str:
    if not values:
        return "(not read)"
    return str(values[0]) if values[0] == values[-1] else f"{values[0]}..{values[-1]}"


def _nice(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number 0-19") from None
    if not 0 <= value <= 19:  # below 0 needs privileges, and would starve the pipeline
        raise argparse.ArgumentTypeError(f"{value}: the niceness must be 0-19")
    return value


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 1920x1080") \
            from None
    if not (200 <= width <= 7680 and 200 <= height <= 4320):
        raise argparse.ArgumentTypeError(f"{text!r}: the width must be 200-7680 and the "
                                         "height 200-4320 pixels")
    return width, height


def _chromium_version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
