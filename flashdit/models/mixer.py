"""The Iwin token mixer: interleaved-window attention in parallel with a depthwise convolution.

Iwin Transformer, section III.B (Rearrange eq. 1, Restore eq. 5, Algorithm 1) and III.E (eq. 7).
All tensors are channels-last token grids ``(B, H, W, C)``.

Grids of any size. A window of M tokens per axis is clamped to the grid (``min(M, H)``); when the
axis is not a multiple of it, the grid is zero-padded at the bottom/right to ``Hg·M`` tokens with
``Hg = ceil(H / M)`` windows. Padded tokens are never attended to (they are masked out as keys)
and their outputs are cropped away, so every real token sees exactly the real tokens of its window:
plain windows hold the ``M×M`` block around it, interleaved windows the tokens with equal
``(i mod Hg, j mod Wg)``. Every window holds at least one real token, so no softmax row is empty.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn
from einops import rearrange
from torch import nn
from torch.nn.attention.flex_attention import create_block_mask

from .embeddings import apply_rope
from .linear import TokenLinear
from .norms import RMSNorm

# the paper's mixer on its 16x16 token grid: window M = 4, depthwise kernel K = 3 (every default below is these)
WINDOW_SIZE = 4
KERNEL_SIZE = 3


def _check_divisible(x: torch.Tensor, window_size: int) -> tuple[int, int, int, int]:
    if x.ndim != 4:
        raise ValueError(f"expected a (B, H, W, C) token grid, got shape {tuple(x.shape)}")
    B, H, W, C = x.shape
    if window_size <= 0 or H % window_size or W % window_size:
        raise ValueError(f"grid {H}x{W} is not divisible by window_size={window_size}")
    return B, H, W, C


def interleave(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Rearrange (eq. 1): the token at (i, j) moves to ``((i mod Hg)·M + i // Hg, (j mod Wg)·M + j // Wg)``.

    Writing ``i = a·Hg + b`` (``a < M``, ``b < Hg``), eq. 1 sends ``i`` to ``b·M + a``: it swaps the
    two factors of each axis (one view and one permute).

    Args:
        x: ``(B, H, W, C)`` with H and W multiples of ``window_size``.
    Returns:
        ``(B, H, W, C)``, the rearranged grid; its plain ``M×M`` windows are the interleaved windows.
    """
    _check_divisible(x, window_size)
    # row i = a·Hg + b moves to b·M + a (a < M, b < Hg): the two factors of each axis swap
    return rearrange(x, "B (a_h b_h) (a_w b_w) C -> B (b_h a_h) (b_w a_w) C", a_h=window_size, a_w=window_size)


def restore(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Restore (eq. 5), the inverse of :func:`interleave`: ``i = (i' mod M)·Hg + i' // M``."""
    _check_divisible(x, window_size)
    return rearrange(x, "B (b_h a_h) (b_w a_w) C -> B (a_h b_h) (a_w b_w) C", a_h=window_size, a_w=window_size)


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Split a grid into non-overlapping ``M×M`` windows, row-major: ``(B, H, W, C) -> (B, Hg·Wg, M·M, C)``."""
    B, H, W, C = _check_divisible(x, window_size)
    return WindowGrid(H, W, window_size, window_size, interleaved=False).to_windows(x)


def interleaved_window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """``window_partition(interleave(x))`` in one view+permute: window ``(i mod Hg, j mod Wg)``,
    position ``(i // Hg, j // Wg)`` inside it. ``(B, H, W, C) -> (B, Hg·Wg, M·M, C)``."""
    B, H, W, C = _check_divisible(x, window_size)
    return WindowGrid(H, W, window_size, window_size, interleaved=True).to_windows(x)


@dataclass(frozen=True)
class WindowGrid:
    """How an ``H×W`` grid splits into ``Mh×Mw`` windows (plain or interleaved), padding included.

    ``partition``/``merge`` move between the padded grid ``(B, Hp, Wp, *rest)`` and the window view
    ``(B, Hg, Wg, Mh, Mw, *rest)`` with one view+permute each way.
    """

    H: int
    W: int
    Mh: int
    Mw: int
    interleaved: bool

    @classmethod
    def for_grid(cls, H: int, W: int, window_size: int | None, interleaved: bool) -> WindowGrid:
        """The layout of an ``H×W`` grid; ``window_size=None`` is one window over the whole grid."""
        if window_size is None:
            return cls(H, W, H, W, interleaved)
        return cls(H, W, min(window_size, H), min(window_size, W), interleaved)

    @property
    def Hg(self) -> int:
        return math.ceil(self.H / self.Mh)

    @property
    def Wg(self) -> int:
        return math.ceil(self.W / self.Mw)

    @property
    def padded(self) -> bool:
        return self.Hg * self.Mh != self.H or self.Wg * self.Mw != self.W

    @property
    def num_windows(self) -> int:
        return self.Hg * self.Wg

    @property
    def window_len(self) -> int:
        return self.Mh * self.Mw

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad ``(B, H, W, C)`` at the bottom/right to ``(B, Hg·Mh, Wg·Mw, C)``."""
        if not self.padded:
            return x
        return F.pad(x, (0, 0, 0, self.Wg * self.Mw - self.W, 0, self.Hg * self.Mh - self.H))

    def partition(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Hp, Wp, *rest) -> (B, Hg, Wg, Mh, Mw, *rest)`` as a view (no copy)."""
        return rearrange(x, f"{self._grid} ... -> B b_h b_w a_h a_w ...", a_h=self.Mh, a_w=self.Mw)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Hg, Wg, Mh, Mw, *rest) -> (B, Hp, Wp, *rest)``, the inverse of :meth:`partition`."""
        return rearrange(x, f"B b_h b_w a_h a_w ... -> {self._grid} ...")

    @property
    def _grid(self) -> str:
        """The padded grid's axes, ``b`` the window and ``a`` the position in it: row ``i = a·Hg + b`` for interleaved
        windows (eq. 2 and 3), ``i = b·Mh + a`` for plain ones."""
        return "B (a_h b_h) (a_w b_w)" if self.interleaved else "B (b_h a_h) (b_w a_w)"

    def to_windows(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Hp, Wp, C) -> (B, Hg·Wg, Mh·Mw, C)``."""
        B, C = x.shape[0], x.shape[-1]
        return self.partition(x).reshape(B, self.num_windows, self.window_len, C)

    def from_windows(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Hg·Wg, Mh·Mw, C) -> (B, Hp, Wp, C)``, the inverse of :meth:`to_windows`."""
        B, C = x.shape[0], x.shape[-1]
        return self.merge(x.view(B, self.Hg, self.Wg, self.Mh, self.Mw, C))

    def scatter(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Hg·Wg, Mh·Mw, C) -> (B, H, W, C)``: the windows back on the grid, the padding cropped."""
        x = self.from_windows(x)
        return x[:, : self.H, : self.W] if self.padded else x

    def key_mask(self, device: torch.device) -> torch.Tensor | None:
        """``(Hg·Wg, Mh·Mw)`` bool, True for real tokens; None when nothing is padded."""
        if not self.padded:
            return None
        valid = torch.zeros(1, self.Hg * self.Mh, self.Wg * self.Mw, 1, dtype=torch.bool, device=device)
        valid[:, : self.H, : self.W] = True
        return self.to_windows(valid).view(self.num_windows, self.window_len)


def window_block_mask(num_windows: int, window_len: int, key_mask: torch.Tensor | None, device: torch.device):
    """flex_attention's ``BlockMask`` for windows laid end to end in one sequence of ``num_windows·window_len``
    tokens: query and key in the same window, and the key a real (not padded) token. Cached per layout."""
    valid = None if key_mask is None else tuple(key_mask.flatten().tolist())
    return _window_block_mask(num_windows, window_len, valid, str(device))


@functools.lru_cache(maxsize=64)
def _window_block_mask(num_windows: int, window_len: int, valid: tuple[bool, ...] | None, device: str):
    keep = None if valid is None else torch.tensor(valid, device=device)

    def same_window(batch, head, q_idx, kv_idx):
        allowed = q_idx // window_len == kv_idx // window_len
        return allowed if keep is None else allowed & keep[kv_idx]

    n = num_windows * window_len
    return create_block_mask(same_window, None, None, n, n, device=device)


class WindowAttnProcessor:
    """How a :class:`WindowAttention` computes: windows gathered, the fused qkv projection, rotary embedding,
    attention, the output projection. The one attention processor FlashDiT runs (diffusers' attention-processor API,
    ``FlashDiTTransformer2DModel.attn_processors``); subclass it to change or observe the computation.

    The attention kernel is the module's ``attention_backend``: PyTorch's SDPA when None, else diffusers' attention
    dispatch with that backend (``FlashDiTTransformer2DModel.set_attention_backend``).
    """

    def __call__(
        self, attn: WindowAttention, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, WindowGrid]:
        """
        Args:
            attn: the attention module, whose layers and settings this runs.
            x: ``(B, H, W, C)``.
            rope: optional ``(cos, sin)`` tables of shape ``(H, W, head_dim)``.
        Returns:
            The output in window order, ``(B, Hg·Wg, Mh·Mw, C)``, and the layout that scatters it back.
        """
        B, H, W, C = x.shape
        grid = WindowGrid.for_grid(H, W, attn.window_size, attn.interleaved)
        nW, L, nh, hd = grid.num_windows, grid.window_len, attn.num_heads, attn.head_dim

        # 1. gather windows once, on the C-wide input (cheaper than on the 3C-wide qkv); a free view
        #    for global attention
        x = grid.to_windows(grid.pad(x)).reshape(B * nW, L, C)
        q, k, v = attn.qkv(x).view(B * nW, L, 3, nh, hd).unbind(2)  # each (B·nW, L, nh, hd)
        q, k = attn.q_norm(q), attn.k_norm(k)

        # 2. rotary embedding, its tables laid out like the windows
        if rope is not None:
            cos, sin = (grid.to_windows(grid.pad(t[None])).reshape(nW, L, 1, hd) for t in rope)
            q = apply_rope(q.view(B, nW, L, nh, hd), cos, sin).view(B * nW, L, nh, hd)
            k = apply_rope(k.view(B, nW, L, nh, hd), cos, sin).view(B * nW, L, nh, hd)

        # 3. attention over (B·nW, nh, L, hd) strided views; padded tokens are masked out as keys
        mask = grid.key_mask(x.device)
        if mask is not None:
            mask = mask.view(1, nW, 1, 1, L).expand(B, nW, 1, 1, L).reshape(B * nW, 1, 1, L)
        backend = attn.attention_backend
        if backend is None:  # PyTorch's SDPA (flash / memory-efficient kernels where they apply)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
        elif backend == AttentionBackendName.FLEX:
            # one sequence per image, the windows laid end to end (already the interleaved order), and a
            # block-diagonal BlockMask: one flex_attention call instead of B·nW tiny ones
            seq = [t.reshape(B, nW * L, nh, hd) for t in (q, k, v)]
            block_mask = window_block_mask(nW, L, grid.key_mask(x.device), x.device)
            out = dispatch_attention_fn(*seq, attn_mask=block_mask, backend=backend)
        else:  # diffusers' attention dispatch, (batch, tokens, heads, head_dim) in and out
            out = dispatch_attention_fn(q, k, v, attn_mask=mask, backend=backend)

        # 4. project per token, still in window order
        return attn.proj(out.reshape(B, nW, L, C)), grid


class WindowAttention(nn.Module):
    """Multi-head self-attention inside plain or interleaved windows, or over the whole grid.

    Its computation is its ``processor``, a :class:`WindowAttnProcessor` (``get_processor`` / ``set_processor``, as
    diffusers' attention modules). Diffusers' own processors work on its ``Attention`` layers (separate or fused
    ``to_q``/``to_k``/``to_v`` over a token sequence, optional cross-attention) and cannot run these windows.

    Args:
        dim: channels C.
        num_heads: heads; ``dim`` must be a multiple.
        window_size: tokens per window side M; ``None`` attends over the whole grid (global attention).
        interleaved: IW-MSA (windows of tokens spaced Hg apart) instead of plain W-MSA.
        qkv_bias: bias on the fused qkv projection.
        qk_norm: RMSNorm on queries and keys per head.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int | None = WINDOW_SIZE,
        interleaved: bool = True,
        qkv_bias: bool = True,
        qk_norm: bool = False,
    ):
        super().__init__()
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f"dim={dim} must be a positive multiple of num_heads={num_heads}")
        if window_size is not None and window_size <= 0:
            raise ValueError(f"window_size must be a positive integer or None (global), got {window_size}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.interleaved = interleaved
        self.qkv = TokenLinear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = TokenLinear(dim, dim)
        # None: SDPA; else a diffusers AttentionBackendName (FlashDiTTransformer2DModel.set_attention_backend)
        self.attention_backend = None
        self.processor = WindowAttnProcessor()

    def get_processor(self) -> WindowAttnProcessor:
        """The attention processor in use."""
        return self.processor

    def set_processor(self, processor: WindowAttnProcessor) -> None:
        """Run this attention with ``processor``, a :class:`WindowAttnProcessor` (or a subclass of it).

        Raises:
            ValueError: for any other processor, e.g. one of diffusers' ``AttnProcessor`` classes.
        """
        check_window_processor(processor, "processor")
        self.processor = processor

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """
        Args:
            x: ``(B, H, W, C)``.
            rope: optional ``(cos, sin)`` tables of shape ``(H, W, head_dim)`` (2-D rotary embedding).
        Returns:
            ``(B, H, W, C)``.
        """
        out, grid = self.windows(x, rope)
        return grid.scatter(out)

    def windows(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, WindowGrid]:
        """The output still in window order, ``(B, Hg·Wg, Mh·Mw, C)``, and the layout that scatters it back
        (:meth:`WindowGrid.from_windows`); :meth:`forward` is the two together. The processor computes it."""
        return self.processor(self, x, rope)


def check_window_processor(processor: object, name: str) -> None:
    """Refuse anything but a :class:`WindowAttnProcessor` as FlashDiT's attention processor, in one line."""
    if not isinstance(processor, WindowAttnProcessor):
        raise ValueError(
            f"{name} {type(processor).__name__} cannot run FlashDiT's window attention (diffusers' processors work on "
            "its Attention layers); pass a flashdit.models.mixer.WindowAttnProcessor or a subclass, and choose the "
            "attention kernel with set_attention_backend"
        )


class DepthwiseConv(nn.Module):
    """Depthwise ``K×K`` convolution (same padding, bias) on a channels-last grid ``(B, H, W, C)``."""

    def __init__(self, dim: int, kernel_size: int = KERNEL_SIZE):
        super().__init__()
        if kernel_size <= 0 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer (same padding), got {kernel_size}")
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a permuted contiguous (B, H, W, C) tensor is already channels_last: no copy either way
        return self.conv_nchw(x).permute(0, 2, 3, 1)

    def conv_nchw(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of a ``(B, H, W, C)`` grid as the ``(B, C, H, W)`` tensor it computes (channels-last
        memory), not a view: an in-place update of it needs no view bookkeeping in autograd."""
        return self.conv(x.permute(0, 3, 1, 2))


class _AddWindows(torch.autograd.Function):
    """``y += scatter(windows)`` in place, for ``y`` a ``(B, C, H, W)`` tensor with channels-last memory and
    ``windows`` ``(B, Hg·Wg, Mh·Mw, C)`` in the window order of an unpadded :class:`WindowGrid`.

    The scatter is read through a strided view, so the sum costs one pass over memory and no new buffer,
    where ``from_windows(windows) + y`` copies the windows into a fresh grid first. Neither the
    convolution nor the projection that made the two inputs keeps its output for backward, so updating
    ``y`` in place is safe.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, windows: torch.Tensor, grid: WindowGrid) -> torch.Tensor:
        ctx.grid = grid
        ctx.mark_dirty(y)
        B, C = windows.shape[0], windows.shape[-1]
        # partition() is a view: y seen as (B, Hg, Wg, Mh, Mw, C), the windows' own layout
        grid.partition(y.permute(0, 2, 3, 1)).add_(windows.view(B, grid.Hg, grid.Wg, grid.Mh, grid.Mw, C))
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, ctx.grid.to_windows(grad.permute(0, 2, 3, 1)), None


class IwinMixer(nn.Module):
    """IW-MSA(x) + DWConv(x) (paper eq. 7): the position-free replacement for self-attention.

    The two branches see the same input; either can be dropped, which gives the paper's ablation rows
    (Table VII): DWConv (``attention=False``), W-MSA (``interleaved=False, kernel_size=None``),
    IW-MSA (``kernel_size=None``), DWConv+W-MSA (``interleaved=False``) and DWConv+IW-MSA (default).

    Args:
        dim: channels C.
        num_heads: attention heads.
        window_size: window side M, clamped to the grid; ``None`` gives global attention.
        kernel_size: depthwise kernel K (odd); ``None`` drops the convolution.
        qkv_bias: bias on the qkv projection.
        qk_norm: RMSNorm on queries and keys.
        interleaved: interleaved windows (IW-MSA) or plain ones (W-MSA).
        attention: keep the attention branch; ``False`` leaves the depthwise convolution alone.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int | None = WINDOW_SIZE,
        kernel_size: int | None = KERNEL_SIZE,
        qkv_bias: bool = True,
        qk_norm: bool = False,
        interleaved: bool = True,
        attention: bool = True,
    ):
        super().__init__()
        if not attention and kernel_size is None:
            raise ValueError("IwinMixer needs at least one branch: attention=False requires a kernel_size")
        self.attn = WindowAttention(dim, num_heads, window_size, interleaved, qkv_bias, qk_norm) if attention else None
        self.conv = DepthwiseConv(dim, kernel_size) if kernel_size is not None else None

    def branches(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The attention and convolution outputs separately (None for a dropped branch)."""
        attn = self.attn(x, rope) if self.attn is not None else None
        conv = self.conv(x) if self.conv is not None else None
        return attn, conv

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """
        Args:
            x: ``(B, H, W, C)``, any H and W.
            rope: optional rotary tables ``(H, W, head_dim)`` for the attention branch.
        Returns:
            ``(B, H, W, C)``.
        """
        if self.attn is None:
            return self.conv(x)
        if self.conv is None:
            return self.attn(x, rope)
        windows, grid = self.attn.windows(x, rope)
        if grid.padded or torch.compiler.is_compiling():
            # under torch.compile the compiler fuses the scatter into the sum itself, and Dynamo cannot trace the
            # in-place autograd.Function without gradients (ctx.mark_dirty outside apply): the functional sum keeps
            # the graph whole
            return grid.scatter(windows) + self.conv(x)
        # the window scatter and the branch sum in one pass, into the convolution's output
        return _AddWindows.apply(self.conv.conv_nchw(x), windows, grid).permute(0, 2, 3, 1)
