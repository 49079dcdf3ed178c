"""Token-wise linear layers whose float32 CPU products run on oneDNN's kernels, as 1×1 convolutions.

PyTorch sends a float32 ``linear`` on the CPU to its BLAS (MKL), which runs at about half the AVX-512 rate of the
AMD CPUs it was measured on; the same product as a 1×1 convolution goes to oneDNN and runs at about twice that,
forward and backward (docs/benchmarks.md, ``bench/linear.py``). Weights, state dicts and float32 accumulation are
those of ``nn.Linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CPU_LINEAR_BACKENDS = ("onednn", "blas")
# below these sizes oneDNN's per-call overhead outweighs its faster kernel (python -m bench.linear --small)
ONEDNN_MIN_ROWS = 128
ONEDNN_MIN_MACS = 2**24


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``linear(x, weight)`` takes the oneDNN route: a plain float32 CPU tensor outside autocast and
    ``torch.compile``, with oneDNN enabled (``torch.backends.mkldnn``) and enough work to repay the call."""
    if type(x) is not torch.Tensor or x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    if weight.dtype != torch.float32 or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling():
        return False
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    rows = x.numel() // max(x.shape[-1], 1) if x.ndim else 0
    return rows >= ONEDNN_MIN_ROWS and rows * weight.shape[0] * weight.shape[1] >= ONEDNN_MIN_MACS


def linear_as_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` computed as a 1×1 convolution: the tokens of ``x`` ``(..., K)`` seen as a
    channels-last ``(1, K, tokens, 1)`` image, which is the same memory (no copy when ``x`` is contiguous), and
    the output read back the same way. Autograd goes through the convolution's own backward."""
    K, N = x.shape[-1], weight.shape[0]
    rows = x.numel() // K
    image = x.reshape(1, rows, 1, K).permute(0, 3, 1, 2)  # (1, K, rows, 1), channels-last
    y = F.conv2d(image, weight[:, :, None, None], bias)  # (1, N, rows, 1), channels-last
    return y.permute(0, 2, 3, 1).reshape(*x.shape[:-1], N)


class TokenLinear(nn.Linear):
    """``nn.Linear`` over the last dimension of a token tensor ``(..., in_features)``.

    Float32 products on the CPU with enough tokens (:func:`onednn_applies`) run as :func:`linear_as_conv`; everything
    else (GPU, bf16 autocast, ``torch.compile``, a handful of tokens) is ``F.linear``. ``cpu_backend = "blas"``
    keeps this layer on ``F.linear`` everywhere (``FlashDiTTransformer2DModel.set_cpu_linear_backend``).
    """

    cpu_backend = "onednn"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpu_backend == "onednn" and onednn_applies(x, self.weight):
            return linear_as_conv(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)
