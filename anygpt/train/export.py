"""Copy trained tiny parts from run folders into the package (anygpt/weights/tiny), in half precision.

Half precision halves the size of what the repository carries; the loaders compute in float32.
`weights.json` records, for each part, the commands that made it (data and training), the seed,
the data generator's version and the files' sha256, so anyone can rebuild and compare.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from anygpt.config import weights_dir


def _sha256(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def export_part(part: str, source: Path, out: Path, *, commands: list[str], data: Path) -> dict:
    """Write one part (`encoder`, `image`, `video` or `audio` in float16; `model`, the LLM side of
    a stage-3 `save_pretrained` folder, as it is) to out/part."""
    target = out / part
    if target.exists():
        shutil.rmtree(target)
    if part == "model":
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("README.md"))
    elif part == "encoder":
        from encoders import ImageBindEncoder

        enc = ImageBindEncoder.from_pretrained(source)
        enc.model.half()
        enc.save_pretrained(target)
    else:
        from decoders import DECODERS

        dec = DECODERS[part].from_pretrained(source)
        dec.pipeline.to(torch.float16)
        dec.save_pretrained(target)
    dataset = json.loads((data / "dataset.json").read_text())
    record = {"commands": commands, "seed": dataset["seed"],
              "data": {k: dataset[k] for k in ("generator", "version", "seed", "split", "counts")},
              "dtype": "float32" if part == "model" else "float16", "files": _sha256(target)}
    manifest = out / "weights.json"
    records = json.loads(manifest.read_text()) if manifest.is_file() else {}
    records[part] = record
    manifest.write_text(json.dumps(records, indent=2) + "\n")
    return record


def default_out() -> Path:
    return weights_dir() / "tiny"
