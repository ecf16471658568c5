"""Fixtures for the decoder tests: each tiny pipeline built in code, saved to disk once per session,
and loaded back through `from_pretrained` (the path real checkpoints take)."""

from __future__ import annotations

import pytest
import torch

from decoder_cases import MODALITIES
from decoders import DECODERS, Decoder


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run no faster on two threads, and when other processes load the CPU, OpenMP's
    two threads wait on each other: a 20 ms UNet call was seen taking 2 s. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_decoders() -> dict[str, Decoder]:
    """The in-code tiny decoders (seed 0)."""
    return {m: DECODERS[m].tiny(seed=0) for m in MODALITIES}


@pytest.fixture(scope="session")
def saved_folders(tiny_decoders, tmp_path_factory) -> dict[str, Path]:
    """Each tiny decoder written as a diffusers folder."""
    root = tmp_path_factory.mktemp("checkpoints")
    folders = {}
    for m, decoder in tiny_decoders.items():
        folders[m] = root / f"tiny-{m}-checkpoint"
        decoder.save_pretrained(folders[m])
    return folders


@pytest.fixture(scope="session")
def loaded(saved_folders) -> dict[str, Decoder]:
    """The decoders as loaded back from disk by `from_pretrained`."""
    return {m: DECODERS[m].from_pretrained(folder) for m, folder in saved_folders.items()}
