"""The manifest format the training commands read: JSONL, one example a line.

    {"modality": "image", "path": "images/000000.png", "caption": "a red circle", ...}

`modality`, `path` and `caption` are required; any other key (`id`, `attributes`, ...) is kept.
The toy world writes this format (`anygpt.data.toyworld.make_dataset`), and real data is given
to the trainers the same way. Reading a manifest loads no model code (no torch).
"""

from __future__ import annotations

import json
from pathlib import Path

from anygpt.config import INPUT_MODALITIES
from anygpt.errors import InputError


class ManifestError(InputError):
    """A manifest line that cannot be used; the message names the file and line number."""


def read_manifest(path: str | Path, *, check_files: bool = False) -> list[dict]:
    """Examples of a JSONL manifest; each needs `modality`, `path` and `caption` (other keys are kept).

    A relative `path` is resolved against the manifest's folder, so the returned paths can be opened
    from anywhere. Blank lines are skipped; with `check_files` a missing file is an error too.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    examples, ids = [], {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(record).__name__}")
        for key in ("modality", "path", "caption"):
            if not isinstance(record.get(key), str) or not record[key]:
                raise ManifestError(f"{where}: {key!r} must be a non-empty string")
        if record["modality"] not in INPUT_MODALITIES:
            raise ManifestError(f"{where}: unknown modality {record['modality']!r}; expected one of {INPUT_MODALITIES}")
        if "attributes" in record and not isinstance(record["attributes"], dict):
            raise ManifestError(f"{where}: 'attributes' must be an object")
        if "id" in record:
            if record["id"] in ids:
                raise ManifestError(f"{where}: id {record['id']!r} already used on line {ids[record['id']]}")
            ids[record["id"]] = number
        record["path"] = str((path.parent / record["path"]).resolve())
        if check_files and not Path(record["path"]).is_file():
            raise ManifestError(f"{where}: file {record['path']} does not exist")
        examples.append(record)
    if not examples:
        raise ManifestError(f"{path}: the manifest has no examples")
    return examples
