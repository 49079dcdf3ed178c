"""Conditioning and position embeddings: DiT's timestep sinusoid and label table, 2-D sin-cos
(MAE/DiT layout) and 2-D rotary embeddings (EVA/LightningDiT layout), for any grid size."""

from __future__ import annotations

import math

import torch
from diffusers.models.modeling_utils import get_parameter_dtype
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """DiT/GLIDE sinusoid ``[cos(t·f), sin(t·f)]`` with ``f_k = max_period^(-k / (dim/2))``.

    Args:
        t: ``(B,)`` float, used as given (FlashDiT feeds t in [0, 1], as SiT and LightningDiT do).
    Returns:
        ``(B, dim)`` float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Sinusoid then a two-layer SiLU MLP (DiT): ``(B,) -> (B, hidden_size)``."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_embedding(t, self.frequency_embedding_size)
        # the dtype the MLP computes in: under diffusers' layerwise casting its stored weights are in the storage
        # dtype (e.g. float8) and become the compute dtype only inside the layer's forward
        return self.mlp(freq.to(get_parameter_dtype(self.mlp)))


class LabelEmbedder(nn.Module):
    """Class embedding table with one extra row, the null class ``num_classes``, for guidance.

    In training, each label is replaced by the null class with probability ``dropout_prob``.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.double().reshape(-1)[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_pos_embed_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding, ``(height, width, dim)`` float32.

    MAE/DiT channel layout: the first half encodes the column index, the second the row index,
    each as ``[sin, cos]``, so a square grid reproduces DiT's ``pos_embed`` exactly.
    """
    if dim % 4:
        raise ValueError(f"sincos position embedding needs hidden_size divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    emb = torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1)
    return emb.view(height, width, dim).float()


def rope_tables_2d(
    head_dim: int, height: int, width: int, theta: float = 10000.0, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D rotary tables (EVA ``VisionRotaryEmbeddingFast``, as LightningDiT uses).

    The first half of each head's channels rotates with the row index, the second half with the
    column index; within a half, channel pairs ``(2k, 2k+1)`` share frequency ``theta^(-2k/half)``.

    Returns:
        ``(cos, sin)``, each ``(height, width, head_dim)`` float32.
    """
    if head_dim % 4:
        raise ValueError(f"2-D rotary embedding needs head_dim divisible by 4, got {head_dim}")
    half = head_dim // 2
    freqs = 1.0 / theta ** (torch.arange(0, half, 2, dtype=torch.float32, device=device) / half)
    freqs = freqs.repeat_interleave(2)  # (half,), pairs share a frequency
    f_rows = torch.arange(height, dtype=torch.float32, device=device)[:, None] * freqs  # (H, half)
    f_cols = torch.arange(width, dtype=torch.float32, device=device)[:, None] * freqs  # (W, half)
    angles = torch.cat(
        [f_rows[:, None, :].expand(height, width, half), f_cols[None, :, :].expand(height, width, half)], dim=-1
    )
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Pairwise rotation ``(x0, x1) -> (-x1, x0)`` over interleaved channel pairs."""
    x = x.unflatten(-1, (-1, 2))
    x0, x1 = x.unbind(-1)
    return torch.stack((-x1, x0), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``(..., L, head_dim)``) by broadcastable tables; computed in the tables' dtype."""
    return (x.to(cos.dtype) * cos + rotate_half(x.to(cos.dtype)) * sin).to(x.dtype)
