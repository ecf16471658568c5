"""The command line, config files and the minimal demo page."""

from __future__ import annotations

import socket

import httpx
import pytest
from typer.testing import CliRunner

from apps.cli import app
from anygpt.config import AnyGPTConfig, ConfigError, audio_windows, paths_from_env, preset, tiny_preset


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
    windowed = AnyGPTConfig.parse({**cfg.model_dump(), "audio_windows": [[1.5, None], [0, 0.9]]})
    assert windowed.audio_windows == [(1.5, None), (0.0, 0.9)] == audio_windows("1.5:, 0:0.9")
    with pytest.raises(ConfigError, match="audio_windows.*0 <= start < end"):
        AnyGPTConfig.parse({**cfg.model_dump(), "audio_windows": [[1.0, 0.5]]})
    with pytest.raises(ValueError, match="START:END"):
        audio_windows("tail")
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("gigantic")
    with pytest.raises(ConfigError, match="ANYGPT_VICUNA"):
        preset("nextgpt-7b")


def test_presets_take_their_paths_as_arguments():
    """No hidden globals: a preset's paths are arguments; the environment is read by the applications."""
    env = {"ANYGPT_VICUNA": "/m/vicuna", "ANYGPT_IMAGEBIND": "/m/ib.pth", "ANYGPT_SD": "/m/sd",
           "ANYGPT_AUDIOLDM": "/m/aldm", "ANYGPT_ZEROSCOPE": "/m/zs", "HOME": "/root"}
    paths = paths_from_env(env)
    assert paths == {"vicuna": "/m/vicuna", "imagebind": "/m/ib.pth", "sd": "/m/sd", "audioldm": "/m/aldm",
                     "zeroscope": "/m/zs"}
    config = preset("nextgpt-7b", paths)
    assert config.llm.path == "/m/vicuna" and config.decoders["video"].path == "/m/zs"
    with pytest.raises(ConfigError, match="needs a local path for sd, zeroscope"):
        preset("nextgpt-7b", {k: v for k, v in paths.items() if k not in ("sd", "zeroscope")})
    assert preset("tiny", paths) == tiny_preset()


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


@pytest.mark.parametrize("command", ["tiny-encoder", "tiny-decoders", "tiny-audio"])
def test_cli_training_commands_name_a_missing_manifest(command, tmp_path):
    # Runs each command's body up to reading its data: an argument the body passes but the command
    # does not take fails here as a NameError.
    result = CliRunner().invoke(app, ["train", command, "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "no such manifest file" in result.output and "Traceback" not in result.output
