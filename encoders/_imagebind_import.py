"""The one place that imports ImageBind's model code (PyPI `imagebind-unofficial`).

Why a shim: the package's `__init__` runs `from imagebind import data`, and `data.py`
imports an old `pytorchvideo` (whose code imports torchvision modules that no longer
exist) and `decord`. The model modules themselves need only torch, timm and einops.
So we register a bare module object as the `imagebind` package, with `__path__`
pointing at the installed folder: `import imagebind.models...` then works without
running the package `__init__`. If `imagebind` is already imported (say, a machine
with a working pytorchvideo), that module is used as is.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path


def _register_bare_package() -> None:
    if "imagebind" in sys.modules:
        return
    spec = importlib.util.find_spec("imagebind")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "ImageBind's model code is missing: install it with "
            "`pip install --no-deps imagebind-unofficial==0.1.1`"
        )
    package = types.ModuleType("imagebind")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__, package.__loader__, package.__file__ = spec, spec.loader, spec.origin  # as if imported
    sys.modules["imagebind"] = package


_register_bare_package()

from imagebind.models.imagebind_model import ImageBindModel, ModalityType  # noqa: E402
from imagebind.models.multimodal_preprocessors import SimpleTokenizer  # noqa: E402

PACKAGE_DIR = Path(sys.modules["imagebind"].__path__[0])
BPE_PATH = PACKAGE_DIR / "bpe" / "bpe_simple_vocab_16e6.txt.gz"

__all__ = ["BPE_PATH", "PACKAGE_DIR", "ImageBindModel", "ModalityType", "SimpleTokenizer"]
