"""The command line, config files and the minimal demo page."""

from __future__ import annotations

import socket

import httpx
import pytest
from typer.testing import CliRunner

from apps.cli import app
from anygpt.config import AnyGPTConfig, ConfigError, preset, tiny_preset


def test_cli_chat_writes_files(media_dir, tmp_path):
    result = CliRunner().invoke(app, ["chat", "make a sound", "--image", str(media_dir / "red_square.png"),
                                      "--out", str(tmp_path), "--force", "audio", "--outputs", "audio",
                                      "--steps", "2", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "audio_0.wav").is_file() and (tmp_path / "response.json").is_file()


def test_cli_bad_file_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["chat", "hi", "--image", str(tmp_path / "nope.png"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "image file not found" in result.output and "Traceback" not in result.output


def test_config_file_round_trip_and_errors(tmp_path):
    cfg = tiny_preset()
    cfg.save(tmp_path / "c.json")
    assert AnyGPTConfig.load(tmp_path / "c.json") == cfg
    (tmp_path / "bad.yaml").write_text("llm: {path: x}\ndecoders: {smell: {conditioning: [1, 2]}}\n")
    with pytest.raises(ConfigError, match="unknown output modality"):
        AnyGPTConfig.load(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("gigantic")
    with pytest.raises(ConfigError, match="ANYGPT_VICUNA"):
        preset("nextgpt-7b")


def test_demo_page_serves(tiny):
    from apps.demo import build_demo

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_demo(tiny)
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    try:
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert page.status_code == 200 and "AnyGPT" in page.text
    finally:
        demo.close()
