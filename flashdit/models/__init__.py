from .mixer import IwinMixer, WindowAttention, interleave, restore
from .transformer import FLASHDIT_SIZES, FlashDiTTransformer2DModel

__all__ = ["FLASHDIT_SIZES", "FlashDiTTransformer2DModel", "IwinMixer", "WindowAttention", "interleave", "restore"]
