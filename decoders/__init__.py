"""Diffusion decoders: conditioning embeddings in, media files out.

One file per output modality, each wrapping a diffusers pipeline behind the `Decoder` interface
(base.py): `conditioning` says what shape of `prompt_embeds` it takes, `decode` makes artifacts
(media.py) that `.save()` as PNG / WAV / MP4. This package knows nothing of the LLM or the
encoders; a new modality is one new file here plus an entry in DECODERS.

Names are imported on first use: importing diffusers costs about a second, which a text-only
request (decoders load lazily) should not pay at start-up.
"""

from importlib import import_module

_EXPORTS = {
    "AudioDecoder": "decoders.audio", "ImageDecoder": "decoders.image", "VideoDecoder": "decoders.video",
    "Conditioning": "decoders.base", "ConditioningError": "decoders.errors", "Decoder": "decoders.base",
    "DecoderError": "decoders.errors",
    "Artifact": "decoders.media", "AudioArtifact": "decoders.media", "ImageArtifact": "decoders.media",
    "VideoArtifact": "decoders.media", "read_provenance": "decoders.media",
}
_MODALITIES = {"image": "ImageDecoder", "audio": "AudioDecoder", "video": "VideoDecoder"}

__all__ = sorted([*_EXPORTS, "DECODERS"])


def __getattr__(name: str):
    if name == "DECODERS":  # modality -> Decoder class
        return {m: getattr(import_module(_EXPORTS[cls]), cls) for m, cls in _MODALITIES.items()}
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'decoders' has no attribute {name!r}")
