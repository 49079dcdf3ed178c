"""FlashDiT: class-conditional diffusion transformers with the Iwin mixer."""

from .models import FLASHDIT_SIZES, FlashDiTTransformer2DModel, IwinMixer, interleave, restore
from .pipeline import FlashDiTPipeline
from .settings import NOT_GIVEN, SamplingSettings

__version__ = "0.1.0"
__all__ = [
    "FLASHDIT_SIZES",
    "FlashDiTPipeline",
    "FlashDiTTransformer2DModel",
    "IwinMixer",
    "NOT_GIVEN",
    "SamplingSettings",
    "interleave",
    "restore",
]
