"""What a request returns: the reply text, the artifacts in order, and a trace of how they were made."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from decoders.media import AudioArtifact, ImageArtifact, VideoArtifact

from anygpt.model import Turn

_EXT = {"image": "png", "audio": "wav", "video": "mp4"}


@dataclass
class Trace:
    """Which signal tokens fired, and the timings, seeds and model ids behind each artifact."""

    signal_runs: list[dict] = field(default_factory=list)  # {"modality", "tokens", "seed"} per artifact
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage: encode, llm, project, decode_<m>
    seed: int = 0
    model_ids: dict[str, str] = field(default_factory=dict)
    raw_reply: str = ""  # the LLM's reply with signal tokens, as it wrote it
    generated_tokens: int = 0  # tokens the LLM generated (its end token included; forced runs not)


@dataclass
class Response:
    text: str
    artifacts: list[ImageArtifact | AudioArtifact | VideoArtifact]
    trace: Trace
    history: list[Turn]

    @property
    def images(self) -> list[ImageArtifact]:
        return [a for a in self.artifacts if isinstance(a, ImageArtifact)]

    @property
    def audios(self) -> list[AudioArtifact]:
        return [a for a in self.artifacts if isinstance(a, AudioArtifact)]

    @property
    def videos(self) -> list[VideoArtifact]:
        return [a for a in self.artifacts if isinstance(a, VideoArtifact)]

    def save(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write image_0.png, audio_0.wav, video_0.mp4, ... and response.json (written last) into out_dir."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files, counts = [], {}
        for artifact in self.artifacts:
            m = artifact.meta["modality"]
            k = counts[m] = counts.get(m, -1) + 1
            files.append(artifact.save(out / f"{m}_{k}.{_EXT[m]}"))
        summary = {"text": self.text, "files": [f.name for f in files], "trace": asdict(self.trace)}
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".response-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(summary, f, indent=2)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes it private; the media files beside it are not
        os.replace(tmp, out / "response.json")
        return files + [out / "response.json"]
