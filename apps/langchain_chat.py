"""LangChain integration: AnyGPT as a chat model, and as tools for any agent.

    from apps.langchain_chat import AnyGPTChatModel, anygpt_tools
    chat = AnyGPTChatModel(model="tiny", outputs=["image"])
    reply = chat.invoke([HumanMessage(content=[
        {"type": "text", "text": "what colour is the shape?"},
        {"type": "image", "base64": b64_png, "mime_type": "image/png"},
    ])])
    reply.content   # [{"type": "text", ...}, {"type": "image", "base64": ..., "mime_type": "image/png"}, ...]

Messages carry media as LangChain's standard content blocks (`image`, `audio`, `video` with
`base64` + `mime_type`, or a `url` that is a data: URL or a local file path; OpenAI-style
`image_url` blocks too). Replies carry the generated media the same way, each file written by
AnyGPT's own writers (PNG, 16-bit WAV, H.264 MP4, with provenance).
"""

from __future__ import annotations

import base64
import binascii
import os
import queue
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import ConfigDict, Field, PrivateAttr

from anygpt.config import paths_from_env
from anygpt.errors import InputError

_MIME = {"image": "image/png", "audio": "audio/wav", "video": "video/mp4"}
_MEDIA_BLOCKS = tuple(_MIME)  # the media content blocks, in and out
_LOADED: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def _load(preset: str, config: str | None, weights: str | None):
    """One AnyGPT per (preset, config, weights) in this process: chat models and tools share it. A
    preset's part paths come from the environment, read here (the application's edge)."""
    key = (preset, config, weights)
    with _LOCK:
        if key not in _LOADED:
            from anygpt.pipeline import AnyGPT

            _LOADED[key] = AnyGPT.load(preset, config, weights, paths=paths_from_env())
        return _LOADED[key]


def _block_media(block: dict) -> tuple[str, Any]:
    """(modality, bytes or path) of a standard or OpenAI-style media content block."""
    kind = block.get("type")
    if kind == "image_url":  # OpenAI's format
        url = block.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        return "image", _from_url(url, "image")
    if kind == "input_audio":  # OpenAI's format: {"input_audio": {"data": base64, "format": "wav"}}
        data = block.get("input_audio")
        return _block_media({"type": "audio", "base64": data.get("data") if isinstance(data, dict) else None})
    if block.get("base64") is not None or block.get("data") is not None:
        data = block.get("base64") if block.get("base64") is not None else block["data"]
        try:
            return kind, base64.b64decode(data, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise InputError(f"an {kind} content block's base64 data is not valid base64") from None
    if block.get("url"):
        return kind, _from_url(block["url"], kind)
    raise InputError(f"an {kind} content block needs `base64` data or a `url` (a data: URL or a local file)")


def _from_url(url: Any, kind: str) -> Any:
    if not isinstance(url, str) or not url:
        raise InputError(f"an {kind} content block has no url")
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        if ";base64" not in head:
            raise InputError(f"an {kind} data: URL must be base64-encoded")
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"an {kind} data: URL's base64 data is not valid base64") from None
    path = Path(url.removeprefix("file://"))
    if "://" in url and not url.startswith("file://"):
        raise InputError(f"{url}: AnyGPT reads local files and data: URLs only (it never downloads)")
    if not path.is_file():
        raise InputError(f"{kind} file not found: {path}")
    return str(path)


def _split(content: str | list) -> tuple[str, list[tuple[str, Any]]]:
    """A message's text and its media items, in order."""
    if isinstance(content, str):
        return content, []
    texts, media = [], []
    for block in content:
        if isinstance(block, str):
            texts.append(block)
        elif not isinstance(block, dict):
            raise InputError(f"content blocks are dicts or strings, got {type(block).__name__}")
        elif block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") in (*_MEDIA_BLOCKS, "image_url", "input_audio"):
            media.append(_block_media(block))
        else:
            raise InputError(f"unsupported content block type {block.get('type')!r}; "
                             "AnyGPT reads text, image, audio and video blocks")
    return " ".join(t for t in texts if t), media


def to_turns(messages: list[BaseMessage]):
    """LangChain messages -> (earlier turns, the last user message's text, its media)."""
    from anygpt.model import Turn

    if not messages or not isinstance(messages[-1], HumanMessage):
        raise InputError("the last message must be a human message: AnyGPT answers the user")
    turns, system = [], ""
    for message in messages:
        text, media = _split(message.content)
        if isinstance(message, SystemMessage):
            system = f"{system} {text}".strip()
        elif isinstance(message, HumanMessage):
            turns.append(Turn("user", f"{system}\n\n{text}".strip() if system else text, media))
            system = ""
        elif isinstance(message, AIMessage):
            turns.append(Turn("assistant", _split(message.content)[0]))
        else:
            raise InputError(f"AnyGPT does not take {type(message).__name__}s")
    last = turns.pop()
    return turns, last.text, last.media


def response_blocks(response) -> list[dict]:
    """A Response as content blocks: its text, then each artifact as base64 in its file format."""
    return [{"type": "text", "text": response.text}, *media_blocks(response)]


def media_blocks(response) -> list[dict]:
    """Each artifact of a Response as a content block, base64 in its file format (PNG, WAV, MP4)."""
    blocks: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="anygpt-lc-") as folder:
        for f in response.save(folder):
            modality = f.stem.split("_")[0]
            if modality in _MIME:
                blocks.append({"type": modality, "base64": base64.b64encode(f.read_bytes()).decode(),
                               "mime_type": _MIME[modality]})
    return blocks


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """The text up to the first of the stop sequences (AnyGPT has none of its own)."""
    cuts = [text.find(s) for s in stop or () if s in text]
    return text[:min(cuts)] if cuts else text


class _Words:
    """The reply's words as the LLM writes them, cut as the final text will be: white space at either
    end left off, nothing from a stop sequence on, and a tail that may be the start of one held back."""

    def __init__(self, stop: list[str] | None):
        self.stop, self.written, self.sent = stop or [], "", ""
        self.hold = max((len(s) - 1 for s in self.stop), default=0)

    def add(self, piece: str) -> str:
        """The words that are now certain and not yet sent."""
        self.written += piece
        text = self.written.lstrip()
        certain = cut_at_stop(text, self.stop)
        if len(certain) == len(text):  # no stop yet: hold back a possible start of one, and trailing space
            certain = certain[:len(certain) - self.hold].rstrip()
        return self._send(certain)

    def rest(self, final: str) -> str:
        """What remains to send of the final text (it starts with what was sent)."""
        return self._send(final)

    def _send(self, text: str) -> str:
        if len(text) <= len(self.sent):
            return ""
        new, self.sent = text[len(self.sent):], text
        return new


class AnyGPTChatModel(BaseChatModel):
    """AnyGPT as a LangChain chat model: media in and out as content blocks.

    `model` names a preset ("tiny", "nextgpt-7b"); `config` (a YAML/JSON file) or `weights` (a
    save_pretrained folder) take precedence. The model loads on first use and is shared.
    """

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=())

    model: str = Field(default="tiny", alias="model_name")
    config: str | None = None
    weights: str | None = None
    outputs: list[str] = Field(default_factory=lambda: list(_MEDIA_BLOCKS))
    seed: int = 0
    temperature: float | None = None
    max_tokens: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")  # cut the words at the first of these

    _anygpt: Any = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "anygpt"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "config": self.config, "weights": self.weights, "outputs": self.outputs,
                "seed": self.seed, "temperature": self.temperature, "max_tokens": self.max_tokens}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="anygpt", ls_model_name=kwargs.get("model", self.model),
                                 ls_model_type="chat")
        if self.temperature is not None:
            params["ls_temperature"] = self.temperature
        if self.max_tokens is not None:
            params["ls_max_tokens"] = self.max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def anygpt(self):
        """The underlying AnyGPT (loaded on first use)."""
        if self._anygpt is None:
            self._anygpt = _load(self.model, self.config, self.weights)
        return self._anygpt

    def _chat(self, messages: list[BaseMessage], stop: list[str] | None, on_text, kwargs: dict):
        """One AnyGPT request for the messages; the reply's text is cut at the first stop sequence."""
        history, prompt, media = to_turns(messages)
        kwargs.pop("model", None)  # a per-call model name is for tracing; this instance's model answers
        options = {"outputs": tuple(kwargs.pop("outputs", self.outputs)), "seed": kwargs.pop("seed", self.seed),
                   "temperature": kwargs.pop("temperature", self.temperature),
                   "max_new_tokens": kwargs.pop("max_tokens", self.max_tokens),
                   "num_inference_steps": kwargs.pop("num_inference_steps", self.num_inference_steps),
                   "guidance_scale": kwargs.pop("guidance_scale", self.guidance_scale), **kwargs}
        response = self.anygpt().chat(prompt, media=media, history=history, on_text=on_text, **options)
        response.text = cut_at_stop(response.text, stop or self.stop)
        return response

    def _metadata(self, response) -> dict:
        return {"model_name": self.model, "signal_runs": response.trace.signal_runs,
                "timings": response.trace.timings, "model_ids": response.trace.model_ids}

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        on_text = (lambda piece: run_manager.on_llm_new_token(piece)) if run_manager else None
        response = self._chat(messages, stop, on_text, kwargs)
        message = AIMessage(content=response_blocks(response), response_metadata=self._metadata(response))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        """The reply's words as they come, one chunk per piece the LLM writes, then a last chunk with the
        rest of the words and the media blocks. Aggregated, the chunks give `invoke`'s message. (LangChain's
        `astream` runs this in a worker thread.) A model with a content filter sends its words only at
        the end: a withheld reply must not have been streamed."""
        model = self.anygpt()
        words, pieces, done = _Words(stop or self.stop), queue.Queue(), object()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["response"] = self._chat(messages, stop, None if model.content_filter else pieces.put, kwargs)
            except BaseException as e:  # re-raised below, in the caller's thread
                outcome["error"] = e
            finally:
                pieces.put(done)

        threading.Thread(target=work, daemon=True).start()
        while (piece := pieces.get()) is not done:
            if text := words.add(piece):
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=[{"type": "text", "text": text, "index": 0}]))
                if run_manager:
                    run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
        if "error" in outcome:
            raise outcome["error"]
        response = outcome["response"]
        rest = words.rest(response.text)
        blocks = [{"type": "text", "text": rest, "index": 0}] if rest or not words.sent else []
        blocks += [{**block, "index": i} for i, block in enumerate(media_blocks(response), 1)]
        yield ChatGenerationChunk(message=AIMessageChunk(content=blocks, response_metadata=self._metadata(response),
                                                         chunk_position="last"))


def anygpt_tools(chat: AnyGPTChatModel | None = None, out_dir: str | os.PathLike | None = None) -> list[BaseTool]:
    """`describe_media`, `generate_image`, `generate_audio`, `generate_video`, usable by any agent.

    The generators write their file into `out_dir` (default: a new temporary folder) and return its path.
    """
    chat = chat or AnyGPTChatModel()
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="anygpt-tools-"))
    out.mkdir(parents=True, exist_ok=True)
    counter = iter(range(10**9))

    def describe_media(path: str, question: str = "Describe this.") -> str:
        """Answer a question about a local image, audio or video file."""
        suffix = Path(path).suffix.lower()
        kind = ("image" if suffix in {".png", ".jpg", ".jpeg", ".webp", ".bmp"} else
                "audio" if suffix in {".wav", ".flac", ".mp3", ".ogg"} else
                "video" if suffix in {".mp4", ".webm", ".mov", ".mkv", ".avi"} else None)
        if kind is None:
            raise InputError(f"{path}: not an image, audio or video file")
        return chat.anygpt().chat(question, media=[(kind, path)], outputs=(), seed=chat.seed).text

    def make(modality: str):
        def generate(description: str) -> str:
            r = chat.anygpt().chat(description, outputs=(modality,), force=(modality,), seed=chat.seed,
                                   num_inference_steps=chat.num_inference_steps)
            folder = out / f"{modality}-{next(counter):04d}"
            files = r.save(folder)
            return str(next(f for f in files if f.suffix != ".json"))

        generate.__name__ = f"generate_{modality}"
        generate.__doc__ = f"Make {'a picture' if modality == 'image' else 'a sound' if modality == 'audio' else 'a video clip'} " \
                           f"of the description; returns the path of the {modality} file."
        return generate

    tools = [StructuredTool.from_function(describe_media)]
    tools += [StructuredTool.from_function(make(m)) for m in _MEDIA_BLOCKS]
    return tools
