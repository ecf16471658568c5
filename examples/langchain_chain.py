"""An example LangChain chain and agent tools over AnyGPT (the tiny preset; runs on a CPU).

    python examples/langchain_chain.py out/

1. A chain: a prompt template fills in a description, AnyGPT answers with words and a picture,
   and a small parser saves the picture's content block to a file.
2. The tools any agent can call: generate_image / generate_audio / generate_video / describe_media.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

from apps.langchain_chat import AnyGPTChatModel, anygpt_tools


def save_media(out: Path):
    """A runnable that writes each media block of a reply to `out` and returns the reply's words and files."""
    extension = {"image": "png", "audio": "wav", "video": "mp4"}

    def run(message) -> dict:
        out.mkdir(parents=True, exist_ok=True)
        files, words = [], ""
        for i, block in enumerate(message.content):
            if block["type"] == "text":
                words = block["text"]
            elif block["type"] in extension:
                path = out / f"{block['type']}_{i}.{extension[block['type']]}"
                path.write_bytes(base64.b64decode(block["base64"]))
                files.append(str(path))
        return {"text": words, "files": files}

    return RunnableLambda(run)


def main(out: str = "out/langchain") -> None:
    out_dir = Path(out)
    chat = AnyGPTChatModel(model="tiny", outputs=["image"])
    prompt = ChatPromptTemplate.from_messages([("human", "draw a {colour} {shape}")])
    chain = prompt | chat.bind(force=["image"]) | save_media(out_dir)
    print(chain.invoke({"colour": "red", "shape": "circle"}))

    tools = {t.name: t for t in anygpt_tools(chat, out_dir / "tools")}
    picture = tools["generate_image"].invoke({"description": "a blue square"})
    print("generate_image ->", picture)
    print("describe_media ->", tools["describe_media"].invoke({"path": picture, "question": "what colour is it?"}))


if __name__ == "__main__":
    main(*sys.argv[1:])
