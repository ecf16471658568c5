"""Shared constants of the decoder tests (a plain module: test files import it by name)."""

MODALITIES = ("image", "audio", "video")
# Small sizes for every test decode: a 64×64 image, 1 s of audio, 8 frames of 64×64.
SIZES = {
    "image": {"height": 64, "width": 64},
    "audio": {"audio_length_in_s": 1.0},
    "video": {"num_frames": 8, "height": 64, "width": 64},
}
FAST = {"num_inference_steps": 2, "guidance_scale": 3.0}
