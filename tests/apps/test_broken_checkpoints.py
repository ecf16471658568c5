"""A missing or corrupt checkpoint, at every entry point: the command line, the web demo, scripted
runs and LangChain each give one clear message (exit status 2, an error toast, a failed job, a
ConfigError), never a library's raw error or a traceback."""

from __future__ import annotations

import os
import shutil

import gradio as gr
import pytest
from typer.testing import CliRunner

from anygpt import AnyGPT
from anygpt.config import resolve_path, tiny_preset
from anygpt.errors import ConfigError
from apps.cli import app as cli


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """Config files naming a missing ImageBind checkpoint, a corrupt one, and a decoder folder whose
    UNet weights are corrupt; keys: the config files and the paths they name."""
    d = tmp_path_factory.mktemp("broken")
    (d / "corrupt.pth").write_bytes(os.urandom(4096))
    decoder = d / "image-decoder"
    shutil.copytree(resolve_path("anygpt:tiny/image"), decoder)
    for weights in decoder.glob("unet/*.safetensors"):
        weights.write_bytes(b"not safetensors" * 10)
    base = tiny_preset()
    files = {}
    for name, checkpoint in (("missing", d / "missing.pth"), ("corrupt", d / "corrupt.pth")):
        config = base.model_copy(update={"encoder": base.encoder.model_copy(update={"checkpoint": str(checkpoint)})})
        config.save(d / f"{name}.json")
        files[name] = d / f"{name}.json"
    decoders = {**base.decoders, "image": base.decoders["image"].model_copy(update={"path": str(decoder)})}
    base.model_copy(update={"decoders": decoders}).save(d / "decoder.json")
    files["decoder"] = d / "decoder.json"
    return files | {"decoder_folder": decoder}


@pytest.fixture(scope="module")
def broken_decoder(tiny, broken):
    """The session's tiny model, with the corrupt image decoder folder in its config (decoders load lazily)."""
    from anygpt.config import AnyGPTConfig

    return AnyGPT(tiny.model, AnyGPTConfig.load(broken["decoder"]), trained=tiny.trained)


ENCODER_MESSAGES = {"missing": "error: encoder: ImageBind checkpoint not found",
                    "corrupt": "error: encoder: .*corrupt.pth: not a readable PyTorch checkpoint"}


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize("which", ["missing", "corrupt"])
@pytest.mark.parametrize("command", [["chat", "hi"], ["demo", "--port", "1"], ["run", "{script}", "--out", "{out}"]])
def test_cli_one_line_and_exit_2(broken, tmp_path, which, command):
    import re

    script = tmp_path / "s.jsonl"
    script.write_text('{"id": "a", "prompt": "hi", "outputs": []}\n')
    args = [a.format(script=script, out=tmp_path / "out") for a in command] + ["--config", str(broken[which])]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    (line,) = _lines(result.output)
    assert re.match(ENCODER_MESSAGES[which], line), line


def test_cli_corrupt_decoder_folder(broken, tmp_path):
    result = CliRunner().invoke(cli, ["chat", "draw a red circle", "--force", "image", "--outputs", "image",
                                      "--steps", "1", "--max-new-tokens", "4", "--config", str(broken["decoder"]),
                                      "--out", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert _lines(result.output)[-1].startswith(f"error: image decoder: cannot load the image pipeline from "
                                                f"{broken['decoder_folder']}")


def test_demo_error_toast(broken_decoder):
    from apps.demo import build_demo

    demo = build_demo(broken_decoder)
    respond = next(f.fn for f in demo.fns.values() if f.api_name == "respond")
    replies = respond({"text": "draw a red circle", "files": []}, [], None, ["image"], ["image"], 0, 1, 1.0, 8, None)
    with pytest.raises(gr.Error, match="image decoder: cannot load the image pipeline"):
        list(replies)


def test_batch_jobs_fail_with_the_message_and_the_run_goes_on(broken_decoder, tmp_path):
    from apps.batch import Job, run_script

    jobs = [Job(id=f"j{i}", prompt="draw a red circle", outputs=["image"], options={"max_new_tokens": 4,
                                                                                      "num_inference_steps": 1})
            for i in range(2)]
    summary = run_script(broken_decoder, jobs, tmp_path / "out", progress=False)
    assert not summary.ok and summary.done == [] and [job for job, _ in summary.failed] == ["j0", "j1"]
    assert all(error.startswith("image decoder: cannot load the image pipeline") for _, error in summary.failed)


def test_langchain_config_error(broken, broken_decoder):
    from apps.langchain_chat import AnyGPTChatModel

    with pytest.raises(ConfigError, match="encoder: ImageBind checkpoint not found"):
        AnyGPTChatModel(config=str(broken["missing"])).invoke("hi")
    chat = AnyGPTChatModel(max_tokens=4, num_inference_steps=1)
    chat._anygpt = broken_decoder
    with pytest.raises(ConfigError, match="image decoder: cannot load the image pipeline"):
        chat.invoke("draw a red circle", outputs=["image"], force=["image"])
