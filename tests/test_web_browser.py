"""`orstream web` in a real browser: Debian's headless Chromium, driven by Playwright (its
own browser downloads are never used), on the page a real pipeline feeds."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

# The live pipeline and the server in a thread, as tests/test_web.py starts them.
from test_web import LivePipeline, web_server

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
        finally:
            browser.close()
