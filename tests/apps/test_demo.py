"""The web demo as people and scripts use it: a real browser (Debian's chromium driven by
Playwright) and gradio_client, against the demo served on a free local port."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]
REPLY_TIMEOUT_MS = 120_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    from apps.demo import DemoSettings, launch

    port = _free_port()
    root = tmp_path_factory.mktemp("demo-sessions")
    demo = launch(tiny, port=port, block=False, settings=DemoSettings(max_upload_mb=1, concurrency=1, root=root))
    yield f"http://127.0.0.1:{port}/", root
    demo.close()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (the Makefile's `browser` step does)")
        pytest.skip("chromium is not installed (make test installs it with apt-get)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, served):
    page = browser.new_page()
    page.goto(served[0])
    page.wait_for_selector("#message textarea")
    yield page
    page.close()


def _always_make(page, modality: str) -> None:
    page.locator("#settings").get_by_text("Settings").first.click()
    page.locator("#force").get_by_label(modality).check()


def _send(page, text: str, files: list | None = None) -> None:
    if files:
        page.set_input_files("#message input[type=file]", [str(f) for f in files])
        page.wait_for_selector("#message img, #message .thumbnail-item", timeout=10_000)
    page.fill("#message textarea", text)
    page.press("#message textarea", "Enter")


def test_browser_picture_reply(page, media_dir, tmp_path):
    _always_make(page, "image")
    _send(page, "draw a red circle", [media_dir / "red_square.png"])
    picture = page.wait_for_selector(".bot-row img", timeout=REPLY_TIMEOUT_MS)
    words = page.locator(".bot-row .md").first.inner_text()
    assert words.strip(), "the reply has text"
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=picture)
    assert picture.evaluate("img => img.naturalWidth") == 64  # the tiny decoder's 64×64 picture, loaded
    assert page.locator(".user-row img").count() == 1  # the uploaded picture shows in the user's turn
    shot = tmp_path / "demo-picture.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] > 0


def test_browser_sound_reply_is_playable(page, tmp_path):
    _always_make(page, "audio")
    _send(page, "play a rising sweep")
    audio = page.wait_for_selector(".bot-row audio", state="attached", timeout=REPLY_TIMEOUT_MS)
    page.wait_for_function("a => a.src && a.readyState >= 1 && a.duration > 0", arg=audio, timeout=30_000)
    # The bytes the browser plays (a blob: URL Gradio made from the served file) are a WAV file.
    head = bytes(audio.evaluate("a => fetch(a.src).then(r => r.arrayBuffer())"
                                ".then(b => Array.from(new Uint8Array(b).slice(0, 12)))"))
    assert head[:4] == b"RIFF" and head[8:12] == b"WAVE"
    assert audio.evaluate("a => a.duration") == pytest.approx(2.0, abs=0.05)  # the tiny preset's 2 s clips
    page.screenshot(path=str(tmp_path / "demo-sound.png"), full_page=True)


def test_browser_bad_uploads_show_an_error_and_the_app_keeps_serving(page, media_dir, tmp_path):
    _send(page, "what is this?", [media_dir / "not_an_image.png"])
    error = page.wait_for_selector(".toast-body", timeout=REPLY_TIMEOUT_MS)
    assert "not_an_image.png" in error.inner_text() or "image" in error.inner_text().lower()
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 2**20
    page.set_input_files("#message input[type=file]", str(big))
    page.wait_for_function(
        "() => [...document.querySelectorAll('.toast-body')].some(t => /size|large|MB/i.test(t.innerText))",
        timeout=30_000)
    page.reload()
    page.wait_for_selector("#message textarea")
    _send(page, "What is the capital of France?")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.bot-row .md')].some(m => m.innerText.trim().length > 0)",
        timeout=REPLY_TIMEOUT_MS)


def test_gradio_client_two_concurrent_requests(served, media_dir):
    from gradio_client import Client, handle_file

    client = Client(served[0], verbose=False)
    results: dict[int, tuple] = {}

    def ask(i: int, prompt: str) -> None:
        results[i] = client.predict(prompt, handle_file(str(media_dir / "red_square.png")), None, None,
                                    ["image", "audio", "video"], i, api_name="/chat")

    threads = [threading.Thread(target=ask, args=(i, p)) for i, p in
               enumerate(["What is the capital of France?", "describe this picture."])]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert set(results) == {0, 1}, f"both requests answered in {time.perf_counter() - t0:.0f} s"
    for text, images, audio, video, trace in results.values():
        assert isinstance(text, str) and text.strip()
        assert set(trace) == {"signal_runs", "timings_s"}
    assert "Paris" in results[0][0]


def test_session_files_are_removed_with_the_session(served, tiny):
    from apps.demo import DemoSession, _close_session

    session = DemoSession(served[1])
    (session.folder / "image_0.png").write_bytes(b"x")
    _close_session(session)
    assert not session.folder.exists()
