"""Diffusion decoders: conditioning embeddings in, media files out.

One file per output modality, each wrapping a diffusers pipeline behind the `Decoder` interface
(base.py): `conditioning` says what shape of `prompt_embeds` it takes, `decode` makes artifacts
(media.py) that `.save()` as PNG / WAV / MP4. This package knows nothing of the LLM or the
encoders; a new modality is one new file here plus an entry in DECODERS.
"""

from decoders.audio import AudioDecoder
from decoders.base import Conditioning, ConditioningError, Decoder, DecoderError
from decoders.image import ImageDecoder
from decoders.media import Artifact, AudioArtifact, ImageArtifact, VideoArtifact, read_provenance
from decoders.video import VideoDecoder

DECODERS: dict[str, type[Decoder]] = {"image": ImageDecoder, "audio": AudioDecoder, "video": VideoDecoder}

__all__ = [
    "DECODERS", "Artifact", "AudioArtifact", "AudioDecoder", "Conditioning", "ConditioningError", "Decoder",
    "DecoderError", "ImageArtifact", "ImageDecoder", "VideoArtifact", "VideoDecoder", "read_provenance",
]
