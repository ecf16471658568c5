"""ImageBind's own `data.py`, imported so tests can compare our preprocessing with it.

data.py needs pytorchvideo (a clip sampler, two transforms, and `EncodedVideo` over
decord) and `torchaudio.load`. Where the real pytorchvideo imports, it is used. Where it
cannot (pytorchvideo 0.1.5 imports torchvision modules removed years ago, and decord is
not installed), `install_pytorchvideo_stand_ins` registers the few pieces data.py uses,
re-stated from pytorchvideo 0.1.5 with the same arithmetic:

- `ConstantClipsPerVideoSampler`: stateful, exact `Fraction`s, `clips_per_video` clips;
- `UniformTemporalSubsample`: `linspace(0, T-1, n)` indices along dim -3;
- `ShortSideScale`: bilinear `interpolate`, long side `floor(long / short * size)`;
- `EncodedVideo.from_path(..., decoder="decord")`: decord's reader semantics, i.e.
  fps = the stream's average rate, duration = frames / fps, `get_clip(a, b)` = frames
  `ceil(fps*a) .. ceil(fps*b)-1` as float32 [C, T, H, W]. Frames are decoded with PyAV
  here (decord is not installed), straight from the container, independently of
  `encoders/`.

`torchaudio.load` needs torchcodec and system FFmpeg in torchaudio 2.11, so the tests
patch it with a soundfile reader (what is compared is everything after decoding).
"""

from __future__ import annotations

import importlib
import math
import sys
import types
from fractions import Fraction

import av
import numpy as np
import soundfile
import torch

import encoders._imagebind_import  # noqa: F401  (registers the bare `imagebind` package)


class ConstantClipsPerVideoSampler:
    def __init__(self, clip_duration, clips_per_video, augs_per_clip=1):
        self._clip_duration = Fraction(clip_duration)
        self._clips_per_video = clips_per_video
        self._augs_per_clip = augs_per_clip
        self._current_clip_index = 0
        self._current_aug_index = 0

    def __call__(self, last_clip_time, video_duration, annotation):
        max_start = Fraction(max(video_duration - self._clip_duration, 0))
        step = Fraction(max_start, self._clips_per_video)
        start = step * self._current_clip_index
        clip_index, aug_index = self._current_clip_index, self._current_aug_index
        self._current_aug_index += 1
        if self._current_aug_index >= self._augs_per_clip:
            self._current_clip_index += 1
            self._current_aug_index = 0
        is_last = (self._current_clip_index >= self._clips_per_video
                   or step * self._current_clip_index > max_start)
        if is_last:
            self._current_clip_index = 0
            self._current_aug_index = 0
        return start, start + self._clip_duration, clip_index, aug_index, is_last


class UniformTemporalSubsample(torch.nn.Module):
    def __init__(self, num_samples):
        super().__init__()
        self.num_samples = num_samples

    def forward(self, x):
        t = x.shape[-3]
        assert self.num_samples > 0 and t > 0
        idx = torch.clamp(torch.linspace(0, t - 1, self.num_samples), 0, t - 1).long()
        return torch.index_select(x, -3, idx)


class ShortSideScale(torch.nn.Module):
    def __init__(self, size):
        super().__init__()
        self.size = size

    def forward(self, x):
        assert x.ndim == 4 and x.dtype == torch.float32
        _, _, h, w = x.shape
        if w < h:
            new_h, new_w = int(math.floor((float(h) / w) * self.size)), self.size
        else:
            new_h, new_w = self.size, int(math.floor((float(w) / h) * self.size))
        return torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)


class EncodedVideo:
    """decord's VideoReader as pytorchvideo's EncodedVideoDecord uses it."""

    def __init__(self, path):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            self._fps = float(stream.average_rate)
            self._frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        self._duration = float(len(self._frames)) / float(self._fps)

    @classmethod
    def from_path(cls, file_path, decode_video=True, decode_audio=True, decoder="pyav", **other_args):
        assert decoder == "decord" and not decode_audio
        return cls(file_path)

    @property
    def duration(self):
        return self._duration

    def get_clip(self, start_sec, end_sec):
        if start_sec > end_sec or start_sec > self._duration:
            raise RuntimeError("Incorrect time window")
        start_idx = math.ceil(self._fps * start_sec)
        end_idx = min(math.ceil(self._fps * end_sec), len(self._frames))
        video = torch.from_numpy(np.stack([self._frames[i] for i in range(start_idx, end_idx)]))
        return {"video": video.to(torch.float32).permute(3, 0, 1, 2), "audio": None}


def install_pytorchvideo_stand_ins() -> None:
    modules = {name: types.ModuleType(name) for name in (
        "pytorchvideo", "pytorchvideo.transforms", "pytorchvideo.data",
        "pytorchvideo.data.clip_sampling", "pytorchvideo.data.encoded_video")}
    modules["pytorchvideo.transforms"].ShortSideScale = ShortSideScale
    modules["pytorchvideo.transforms"].UniformTemporalSubsample = UniformTemporalSubsample
    modules["pytorchvideo.data.clip_sampling"].ConstantClipsPerVideoSampler = ConstantClipsPerVideoSampler
    modules["pytorchvideo.data.encoded_video"].EncodedVideo = EncodedVideo
    modules["pytorchvideo"].transforms = modules["pytorchvideo.transforms"]
    modules["pytorchvideo"].data = modules["pytorchvideo.data"]
    modules["pytorchvideo.data"].clip_sampling = modules["pytorchvideo.data.clip_sampling"]
    modules["pytorchvideo.data"].encoded_video = modules["pytorchvideo.data.encoded_video"]
    sys.modules.update(modules)


def soundfile_load(path, *args, **kwargs):
    """Stand-in for torchaudio.load(path): float32 [channels, samples] scaled like torchaudio."""
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(data.T)), rate


def reference_data_module() -> types.ModuleType:
    """`imagebind.data`, with the real pytorchvideo if it imports, else the stand-ins."""
    if "imagebind.data" in sys.modules:
        return sys.modules["imagebind.data"]
    try:
        import decord  # noqa: F401  (data.py decodes video with decord)
        import pytorchvideo.data.clip_sampling  # noqa: F401
        import pytorchvideo.data.encoded_video  # noqa: F401
        import pytorchvideo.transforms  # noqa: F401
    except Exception:  # ImportError, or old torchvision paths failing inside it
        for name in [n for n in sys.modules if n == "pytorchvideo" or n.startswith("pytorchvideo.")]:
            del sys.modules[name]
        install_pytorchvideo_stand_ins()
    return importlib.import_module("imagebind.data")
