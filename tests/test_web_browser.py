"""`orstream web` in a real browser: Debian's headless Chromium, driven by Playwright (its
own browser downloads are never used), on the page a real pipeline feeds."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

# A fixture: the TP-SIS checkpoint every TP-SIS pipeline test uses.
from test_tpsis_pipeline import tpsis_weights  # noqa: F401

# The live pipeline and the server in a thread, as tests/test_web.py starts them.
from test_web import LivePipeline, tpsis_pipeline, web_server

from orstream.common.net import free_port
from orstream.engines.tpsis_engine import DEFAULT_PROMPTS
from orstream.pipeline.web.hub import sent_size

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# What works here as root in a container: no sandbox, no GPU, nothing fetched in the
# background (updates, sync, QUIC probes), a fresh profile (Playwright makes one per launch).
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install "
                                       f"chromium; .ci/run installs it as root)")


def test_the_page_shows_live_frames_the_caption_answers_a_question_and_is_not_blank():
    from playwright.sync_api import sync_playwright

    with LivePipeline() as live, web_server(live.publish, ask=live.ask) as url, \
            sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            # The page's CSP forbids eval; the test's own probes (wait_for_function) need it.
            page = browser.new_page(viewport={"width": 1280, "height": 720}, bypass_csp=True)
            page.goto(url)
            page.wait_for_function("window.orstream && window.orstream.painted >= 15",
                                   timeout=60_000)
            seqs = page.evaluate("window.orstream.seqs")
            assert len(seqs) >= 15 and seqs == sorted(set(seqs)), seqs
            # The figures the page measured itself, on the page and back at the server.
            page.wait_for_function("document.getElementById('latency').textContent"
                                   ".startsWith('p50 ')", timeout=10_000)
            latencies = page.evaluate("window.orstream.latencies")
            assert all(0 < ms < 10_000 for ms in latencies), latencies
            # (urllib: Playwright's sync API holds this thread's event loop)
            with urllib.request.urlopen(url + "api/stats", timeout=10) as response:
                stats = json.load(response)
            (tab,) = stats["tabs"]  # what the page reported (a report may be on its way)
            assert 10 <= tab["painted"] <= page.evaluate("window.orstream.painted")
            assert tab["latency_ms"]["p50"] > 0 and tab["painted_seq"] >= seqs[0]
            # Arrival at the page comes before painting: decoding and the paint are the rest.
            assert 0 < tab["arrived_ms"]["p50"] <= tab["latency_ms"]["p50"]

            # The VLM's caption arrives in the frames' headers (describe at 0.5 s).
            page.wait_for_function("document.getElementById('caption').textContent !== "
                                   "'no caption yet'", timeout=90_000)
            caption = page.text_content("#caption")
            assert caption and caption != "no caption yet"
            assert "s old, frame" in page.text_content("#caption-age")

            page.fill("#question", "is there smoke?")
            page.click("#ask-button")
            page.wait_for_function("/\\(frame \\d+, \\d+ ms\\)/.test("
                                   "document.getElementById('answer').textContent)",
                                   timeout=60_000)
            assert page.is_hidden("#prompts-box")  # no text-prompt model in this pipeline

            shot = cv2.imdecode(np.frombuffer(page.screenshot(), np.uint8), cv2.IMREAD_COLOR)
            assert shot.shape[:2] == (720, 1280)
            video = page.locator("#video").bounding_box()
            x, y = int(video["x"]), int(video["y"])
            picture = shot[y:y + int(video["height"]), x:x + int(video["width"])]
            assert picture.std() > 20, "the video canvas is blank"

            # The area is wider than the 640x360 stream here: frames come at full size, and
            # fill it.
            shown = _shown(page)
            assert shown["sent"] == [640, 360] == shown["canvas"], shown
            assert shown["box"] == shown["area"] and shown["area"][0] > 640, shown
            # A narrow window: the page reports its smaller area (ResizeObserver) and the
            # frames it paints come scaled to fit it, one canvas pixel per frame pixel, and
            # are shown at their own pixels: the compositor scales nothing.
            page.set_viewport_size({"width": 480, "height": 600})
            shown = _settled(page, shown["size"])
            width, height = shown["size"]
            assert abs(width - shown["area"][0]) <= 1 and abs(height - shown["area"][1]) <= 1
            assert shown["sent"] == list(sent_size(640, 360, (width, height))) == \
                shown["canvas"] == shown["box"], shown
            assert shown["sent"][0] < 640 and shown["frame"] == [640, 360]
            with urllib.request.urlopen(url + "api/stats", timeout=10) as response:
                (tab,) = json.load(response)["tabs"]
            assert tab["box"] == shown["size"] and tab["sent_size"] == shown["sent"], tab
            painted = page.evaluate("window.orstream.painted")
            page.wait_for_function(f"window.orstream.painted >= {painted + 10}",
                                   timeout=30_000)  # and they keep coming
            shot = cv2.imdecode(np.frombuffer(page.screenshot(), np.uint8), cv2.IMREAD_COLOR)
            video = page.locator("#video").bounding_box()
            x, y = int(video["x"]), int(video["y"])
            picture = shot[y:y + int(video["height"]), x:x + int(video["width"])]
            assert picture.std() > 20, "the scaled video canvas is blank"
        finally:
            browser.close()


def test_a_typed_prompt_changes_what_the_page_lists(tpsis_weights):  # noqa: F811 - imported
    from playwright.sync_api import sync_playwright

    items = "[...document.querySelectorAll('#prompt-list li')].map((li) => li.textContent)"
    with tpsis_pipeline(tpsis_weights) as live, web_server(live.publish, ask=live.ask) as url, \
            sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720}, bypass_csp=True)
            page.goto(url)
            page.wait_for_function("window.orstream && window.orstream.painted >= 2",
                                   timeout=60_000)
            # A TP-SIS pipeline: the box shows, listing the painted frame's prompts.
            assert page.is_visible("#prompts-box")
            assert page.evaluate(items) == list(DEFAULT_PROMPTS)
            assert page.input_value("#prompts") == "\n".join(DEFAULT_PROMPTS)

            # A prompt never trained on: the list shows it as typed, the reply how it was read.
            page.fill("#prompts", "needle holder")
            page.press("#prompts", "Enter")
            page.wait_for_function(f"JSON.stringify({items}) === '[\"needle holder\"]'",
                                   timeout=30_000)
            reply = page.evaluate("window.orstream.promptsReply")
            assert reply["prompts"] == ["needle holder"] and type(reply["seq"]) is int, reply
            assert page.evaluate("window.orstream.header.classes.names") == \
                ["background", "needle holder"]
            assert page.evaluate("window.orstream.header.seq") >= reply["seq"]
            shown = page.text_content("#prompts-reply")
            assert f"from frame {reply['seq']}" in shown
            assert "“needle holder” read as “" in shown, shown
            # The swatch has the prompt's colour from the frame's table.
            color = page.evaluate("getComputedStyle(document.querySelector("
                                  "'#prompt-list .swatch')).backgroundColor")
            want = page.evaluate("window.orstream.header.classes.colors[1]")
            assert color == "rgb({}, {}, {})".format(*want), (color, want)

            # A prompt too long: the server's reason on the page, the prompts as they were.
            page.fill("#prompts", "needle holder, " + "x" * 101)
            page.click("#prompts-button")
            page.wait_for_function("document.getElementById('prompts-reply').className"
                                   ".includes('error')", timeout=10_000)
            assert "prompt 2 is 101 characters long" in page.text_content("#prompts-reply")
            painted = page.evaluate("window.orstream.painted")
            page.wait_for_function(f"window.orstream.painted >= {painted + 3}", timeout=30_000)
            assert page.evaluate(items) == ["needle holder"]
        finally:
            browser.close()


def test_the_page_picks_up_a_publisher_killed_and_started_again():
    """Issue 23's restarts, for the browser display: the page and `orstream web` stay up
    while the publisher is SIGKILLed and started again; the page says the frames stopped,
    then paints the new run's frames (seq from 0 again) without a reload."""
    from playwright.sync_api import sync_playwright
    from test_restarts import LIGHT, ORSTREAM, kill

    publish = f"tcp://127.0.0.1:{free_port()}"
    run = [*ORSTREAM, "run", "--publish", publish, *LIGHT]
    publishers: list[subprocess.Popen] = []
    with web_server(publish, stall_warn_s=0.5) as url, sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720}, bypass_csp=True)
            page.goto(url)
            publishers.append(subprocess.Popen(run, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
            page.wait_for_function("window.orstream.painted >= 120", timeout=60_000)
            kill(publishers[0])  # a crash: no goodbye
            before = page.evaluate("[window.orstream.painted, window.orstream.lastSeq]")
            page.wait_for_function("document.getElementById('status').textContent"
                                   ".includes('the publisher stopped or stalls')",
                                   timeout=15_000)
            publishers.append(subprocess.Popen(run, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
            # The new run's frames, painted: seq starts again, below where the first run was
            # (polled every animation frame, long before the new run's seq passes it).
            page.wait_for_function(f"window.orstream.painted >= {before[0] + 20} && "
                                   f"window.orstream.lastSeq < {before[1]}", timeout=60_000)
            page.wait_for_function("document.getElementById('status').textContent === ''",
                                   timeout=10_000)  # the warning went with the silence
            with urllib.request.urlopen(url + "api/stats", timeout=10) as response:
                stats = json.load(response)
            assert stats["server"]["rejected"] == 0, stats["server"]
        finally:
            browser.close()
            for proc in publishers:
                kill(proc)


# What the page shows now: the size it reported, the box of the area it shows the video in
# and of its canvas in device pixels, the canvas's own pixels, and the last painted frame's
# size and sent size (all in one go).
SHOWN = """() => {
  const video = document.getElementById("video");
  const device = (element) => {
    const rect = element.getBoundingClientRect();
    return [rect.width * devicePixelRatio, rect.height * devicePixelRatio];
  };
  const h = window.orstream.header, size = window.orstream.size;
  return {size: size && [size.w, size.h], canvas: [video.width, video.height],
          area: device(document.getElementById("screen")), box: device(video),
          sent: h && [h.sent_width, h.sent_height], frame: h && [h.width, h.height]};
}"""


def _shown(page) -> dict:
    return page.evaluate(SHOWN)


def _settled(page, before: list[int], timeout_s: float = 20.0) -> dict:
    """What the page shows once it reported a size other than `before` and painted a frame
    at it (the layout settles in a frame or two after a resize: the canvas's height follows
    its pixels' aspect)."""
    deadline = time.monotonic() + timeout_s
    while True:
        shown = _shown(page)
        if shown["size"] and shown["size"] != before and \
                shown["sent"] == list(sent_size(640, 360, tuple(shown["size"]))):
            return shown
        assert time.monotonic() < deadline, f"no frame at the reported size: {shown}"
        page.wait_for_timeout(100)
