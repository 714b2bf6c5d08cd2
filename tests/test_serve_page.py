"""The page of `diffgen serve` in a real browser: Debian's Chromium driven by Playwright types a
prompt, generates, sees the progress and the images, each with its recipe and a download link."""

from __future__ import annotations

import base64
import io
import json
import shutil

import pytest
from PIL import Image

from .serve_helpers import start_server, stop_server

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture()
def server(tiny_checkpoint, tmp_path):
    proc, url = start_server(tiny_checkpoint, tmp_path / "inputs")
    yield url
    code, stderr = stop_server(proc)
    assert code == 0 and "Traceback" not in stderr, stderr


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium; .ci/run does)")
def test_the_page_generates_with_progress_and_shows_each_recipe(server):
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: Chromium's sandbox refuses to run as root, as the tests do in CI
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server + "/")
            page.wait_for_selector("#sampler option", state="attached")  # the samplers and models came from the API
            page.fill("#prompt", "a red square")
            page.fill("#seed", "5")
            page.fill("#steps", "300")  # long enough (a few of the page's 250 ms polls) for the progress to be seen
            page.fill("#count", "4")
            page.select_option("#sampler", "euler")
            page.click("#generate")
            page.wait_for_function("() => /^[0-9]+% of the sampler's steps/.test("
                                   "document.getElementById('progress-text').textContent)", timeout=30_000)
            page.wait_for_function("() => document.querySelectorAll('#gallery figure').length === 4", timeout=60_000)
            assert page.text_content("#progress-text") == "done: 4 image(s)"
            recipes = page.locator("#gallery .recipe").all_text_contents()
            assert len(recipes) == 4
            assert all(text.startswith("a red square\nSteps: 300, Sampler: Euler") for text in recipes)
            assert sorted(int(text.split("Seed: ")[1].split(",")[0]) for text in recipes) == [5, 6, 7, 8]
            link = page.locator("#gallery figure a").first
            assert link.get_attribute("download") == "00003-8-a-red-square.png"  # the newest first, as the CLI names it
            png = base64.b64decode(link.get_attribute("href").split(",", 1)[1])
            with Image.open(io.BytesIO(png)) as image:
                assert json.loads(image.info["diffgen"])["seed"] == 8
            page.fill("#steps", "20000")  # past the CLI's limit: the server's one message, shown on the page
            page.click("#generate")
            page.wait_for_function("() => document.getElementById('error').textContent !== ''", timeout=30_000)
            assert page.text_content("#error") == "steps must be a whole number from 1 to 10000, got 20000"
            assert errors == []
        finally:
            browser.close()
