"""ImageBind for AnyGPT: one embedding per image, audio, video, depth, thermal or IMU input.

Knows nothing of the LLM or the decoders; third-party imports only.
"""

from encoders.errors import CheckpointError, MediaError
from encoders.imagebind import MODALITIES, ImageBindConfig, ImageBindEncoder
from encoders.preprocess import InputLimits, audio_loudness, audio_window, grey_video, middle_frame

__all__ = ["MODALITIES", "CheckpointError", "ImageBindConfig", "ImageBindEncoder", "InputLimits", "MediaError", "audio_loudness", "audio_window", "grey_video", "middle_frame"]
