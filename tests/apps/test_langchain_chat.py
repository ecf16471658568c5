"""LangChain: AnyGPTChatModel passes langchain-tests' standard unit and integration tests (streaming
included), carries media both ways as content blocks, and its tools work for an agent."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from PIL import Image

from anygpt.errors import InputError
from apps import langchain_chat
from apps.langchain_chat import AnyGPTChatModel, anygpt_tools, to_turns


class TestAnyGPTChatModelStandard(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[AnyGPTChatModel]:
        return AnyGPTChatModel

    @property
    def chat_model_params(self) -> dict:
        return {"model": "tiny", "temperature": 0.0, "outputs": ["image"]}


# Standard tests that download their input (an image, a sound) from wikimedia.org. They are skipped,
# not overridden: the suite refuses overridden tests that are not marked as expected failures.
NEEDS_THE_INTERNET = ("test_image_inputs", "test_audio_inputs")


class TestAnyGPTChatModelIntegration(ChatModelIntegrationTests):
    """The standard integration suite on the tiny model (the session's, shared through the loader)."""

    @pytest.fixture(autouse=True)
    def _shared_tiny(self, request, tiny, monkeypatch):
        if request.node.originalname in NEEDS_THE_INTERNET:
            pytest.skip("fetches its input from wikimedia.org; AnyGPT's tests run without the internet")
        monkeypatch.setitem(langchain_chat._LOADED, ("tiny", None, None), tiny)

    # The suite's settings (properties there; plain attributes shadow them here).
    chat_model_class = AnyGPTChatModel
    chat_model_params = {"model": "tiny", "max_tokens": 24, "num_inference_steps": 2}
    has_tool_calling = has_structured_output = False
    returns_usage_metadata = False  # AnyGPT does not count tokens for billing
    supports_image_inputs = supports_audio_inputs = supports_video_inputs = True


def test_stream_gives_the_words_as_they_come_and_the_media_last(tiny, monkeypatch):
    """Word chunks first, then one last chunk with the media; aggregated, they are `invoke`'s message."""
    monkeypatch.setitem(langchain_chat._LOADED, ("tiny", None, None), tiny)
    chat = AnyGPTChatModel(model="tiny", num_inference_steps=2, max_tokens=24)
    chunks = list(chat.stream("draw a red circle", outputs=["image"], force=["image"]))
    assert len(chunks) > 2 and all(c.chunk_position is None for c in chunks[:-1])
    assert chunks[-1].chunk_position == "last" and [b["type"] for b in chunks[-1].content] in (["image"], ["text", "image"])
    assert all(b["type"] == "text" for c in chunks[:-1] for b in c.content)
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    reply = chat.invoke("draw a red circle", outputs=["image"], force=["image"])
    assert full.text == reply.text and full.text
    assert [b["type"] for b in full.content] == [b["type"] for b in reply.content] == ["text", "image"]
    assert base64.b64decode(full.content[1]["base64"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert full.response_metadata["signal_runs"] == reply.response_metadata["signal_runs"]


def test_stream_cuts_at_a_stop_sequence_like_invoke(tiny, monkeypatch):
    monkeypatch.setitem(langchain_chat._LOADED, ("tiny", None, None), tiny)
    chat = AnyGPTChatModel(model="tiny", max_tokens=24, outputs=[])
    words = chat.invoke("What is the capital of France?").text
    stop = words.split()[2]  # a word in the middle of the reply
    pieces = [c.text for c in chat.stream("What is the capital of France?", stop=[stop])]
    assert "".join(pieces) == chat.invoke("What is the capital of France?", stop=[stop]).text == words[:words.find(stop)]


@pytest.fixture(scope="module")
def chat(tiny):
    model = AnyGPTChatModel(model="tiny", num_inference_steps=2, max_tokens=24)
    model._anygpt = tiny  # the session's already-loaded tiny model
    return model


def _b64(path) -> str:
    return base64.b64encode(open(path, "rb").read()).decode()


def test_media_in_and_out_as_content_blocks(chat, media_dir):
    message = HumanMessage(content=[
        {"type": "text", "text": "draw a red circle"},
        {"type": "image", "base64": _b64(media_dir / "red_square.png"), "mime_type": "image/png"},
        {"type": "audio", "url": str(media_dir / "tone.wav")},
    ])
    reply = chat.invoke([message], outputs=["image", "audio"], force=["image", "audio"])
    kinds = [b["type"] for b in reply.content]
    assert kinds[0] == "text" and sorted(kinds[1:]) == ["audio", "image"]
    blocks = {b["type"]: b for b in reply.content[1:]}
    png = Image.open(io.BytesIO(base64.b64decode(blocks["image"]["base64"])))
    assert png.size == (64, 64) and blocks["image"]["mime_type"] == "image/png"
    wave, rate = sf.read(io.BytesIO(base64.b64decode(blocks["audio"]["base64"])))
    assert rate == 16000 and len(wave) == 32000
    assert [r["modality"] for r in reply.response_metadata["signal_runs"]] in (["image", "audio"], ["audio", "image"])


def test_history_system_and_openai_style_blocks(chat, media_dir):
    data_url = "data:image/png;base64," + _b64(media_dir / "red_square.png")
    turns, prompt, media = to_turns([
        SystemMessage(content="Be brief."),
        HumanMessage(content=[{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": data_url}}]),
        AIMessage(content="Hello."),
        HumanMessage(content="What is the capital of France?"),
    ])
    assert [t.role for t in turns] == ["user", "assistant"] and turns[0].text.startswith("Be brief.")
    assert turns[0].media[0][0] == "image" and turns[0].media[0][1][:8] == b"\x89PNG\r\n\x1a\n"
    assert prompt == "What is the capital of France?" and media == []
    reply = chat.invoke("What is the capital of France?", outputs=[])
    assert reply.content[0]["type"] == "text" and "Paris" in reply.content[0]["text"] and len(reply.content) == 1


@pytest.mark.parametrize("content, message", [
    ([{"type": "image", "base64": "%%%not base64", "mime_type": "image/png"}], "not valid base64"),
    ([{"type": "video", "url": "https://example.com/a.mp4"}], "never downloads"),
    ([{"type": "audio", "url": "/no/such/file.wav"}], "file not found"),
    ([{"type": "spreadsheet"}], "unsupported content block"),
])
def test_bad_blocks_are_clear_errors(chat, content, message):
    with pytest.raises(InputError, match=message):
        chat.invoke([HumanMessage(content=content)])


def test_tools_generate_files_and_describe_media(chat, media_dir, tmp_path):
    tools = {t.name: t for t in anygpt_tools(chat, tmp_path)}
    assert set(tools) == {"describe_media", "generate_image", "generate_audio", "generate_video"}
    image = tools["generate_image"].invoke({"description": "a red circle"})
    assert Image.open(image).size == (64, 64) and str(tmp_path) in image
    clip = tools["generate_video"].invoke({"description": "a blue square moving left"})
    assert clip.endswith(".mp4")
    answer = tools["describe_media"].invoke({"path": str(media_dir / "red_square.png"), "question": "what is it?"})
    assert isinstance(answer, str) and answer
    with pytest.raises(InputError, match="not an image, audio or video"):
        tools["describe_media"].invoke({"path": str(tmp_path / "x.txt")})


def test_the_example_chain_runs(tmp_path, tiny, monkeypatch):
    import examples.langchain_chain as example
    from apps import langchain_chat

    monkeypatch.setitem(langchain_chat._LOADED, ("tiny", None, None), tiny)
    example.main(str(tmp_path))
    assert Image.open(next(tmp_path.glob("image_*.png"))).size == (64, 64)
    assert (tmp_path / "tools" / "image-0000" / "image_0.png").is_file()
