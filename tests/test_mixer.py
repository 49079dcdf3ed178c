"""The Iwin mixer against the paper's equations and naive masked-attention references."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from flashdit.models.embeddings import apply_rope, rope_tables_2d
from flashdit.models.mixer import (
    DepthwiseConv,
    IwinMixer,
    WindowAttention,
    interleave,
    interleaved_window_partition,
    restore,
    window_partition,
)

GRIDS = [(8, 8, 4), (8, 12, 4), (12, 8, 2), (6, 9, 3), (16, 16, 4), (16, 16, 8)]


def coords(B, H, W):
    """A grid whose channels are the token's own (row, col)."""
    i, j = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    return torch.stack([i, j], dim=-1)[None].expand(B, H, W, 2).float()


def paper_rearrange(x, H_num_win, W_num_win):
    """Algorithm 1 of the paper, typed as printed."""
    B, H, W, C = x.shape
    x = x.reshape(B, -1, H_num_win, W, C).transpose(1, 2)
    x = x.reshape(B, -1, W, C)
    x = x.reshape(B, H, -1, W_num_win, C).transpose(2, 3)
    x = x.reshape(B, H, -1, C)
    return x


def paper_restore(x, H_num_win, W_num_win):
    B, H, W, C = x.shape
    x = x.reshape(B, H, W_num_win, -1, C).transpose(2, 3)
    x = x.reshape(B, H, -1, C)
    x = x.reshape(B, H_num_win, -1, W, C).transpose(1, 2)
    x = x.reshape(B, -1, W, C)
    return x


@pytest.mark.parametrize("H,W,M", GRIDS)
def test_interleave_is_eq1_position_by_position(H, W, M):
    x = coords(2, H, W)
    y = interleave(x, M)
    Hg, Wg = H // M, W // M
    for i, j in itertools.product(range(H), range(W)):
        i2 = (i % Hg) * M + i // Hg
        j2 = (j % Wg) * M + j // Wg
        assert y[1, i2, j2].tolist() == [i, j]


@pytest.mark.parametrize("H,W,M", GRIDS)
def test_restore_is_eq5_and_inverts_interleave(H, W, M):
    x = torch.randn(2, H, W, 5)
    assert torch.equal(restore(interleave(x, M), M), x)
    assert torch.equal(interleave(restore(x, M), M), x)
    y = restore(coords(1, H, W), M)
    Hg, Wg = H // M, W // M
    for i2, j2 in itertools.product(range(H), range(W)):
        i = (i2 % M) * Hg + i2 // M
        j = (j2 % M) * Wg + j2 // M
        assert y[0, i, j].tolist() == [i2, j2]


@pytest.mark.parametrize("H,W,M", GRIDS)
def test_interleave_matches_algorithm_1(H, W, M):
    x = torch.randn(2, H, W, 3)
    assert torch.equal(interleave(x, M), paper_rearrange(x, H // M, W // M))
    assert torch.equal(restore(x, M), paper_restore(x, H // M, W // M))


@pytest.mark.parametrize("H,W,M", GRIDS)
def test_interleaved_windows_group_equal_residues(H, W, M):
    x = coords(1, H, W)
    fused = interleaved_window_partition(x, M)
    assert torch.equal(fused, window_partition(interleave(x, M), M))
    Hg, Wg = H // M, W // M
    assert fused.shape == (1, Hg * Wg, M * M, 2)
    for w in range(Hg * Wg):
        tokens = fused[0, w].long()
        # eq. (3): one window = one residue class (i mod Hg, j mod Wg), every member present
        assert set(map(tuple, (tokens % torch.tensor([Hg, Wg])).tolist())) == {(w // Wg, w % Wg)}
        assert len(set(map(tuple, tokens.tolist()))) == M * M


def test_interleave_rejects_indivisible_grid():
    with pytest.raises(ValueError, match="not divisible"):
        interleave(torch.zeros(1, 10, 8, 2), 4)


def reference_attention(attn: WindowAttention, x, allowed, rope=None):
    """Naive global multi-head attention over all H·W tokens with a boolean pair mask."""
    B, H, W, C = x.shape
    nh, hd = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x.reshape(B, H * W, C)).view(B, H * W, 3, nh, hd).unbind(2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        cos, sin = (t.reshape(H * W, 1, hd) for t in rope)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    scores = scores.masked_fill(~allowed.view(1, 1, H * W, H * W), float("-inf"))
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(B, H, W, C)
    return attn.proj(out)


def pair_mask(H, W, M, interleaved):
    """Which token pairs share a window, per the module docstring's rule (padding included)."""
    Mh, Mw = min(M, H), min(M, W)
    Hg, Wg = math.ceil(H / Mh), math.ceil(W / Mw)
    i, j = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    i, j = i.reshape(-1), j.reshape(-1)
    if interleaved:
        gi, gj = i % Hg, j % Wg
    else:
        gi, gj = i // Mh, j // Mw
    return (gi[:, None] == gi[None]) & (gj[:, None] == gj[None])


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("H,W,M", [(8, 8, 4), (8, 12, 4), (16, 16, 4), (10, 7, 4), (9, 13, 3), (3, 6, 4), (5, 5, 8)])
@pytest.mark.parametrize("qk_norm,use_rope", [(False, False), (True, True)])
def test_window_attention_equals_masked_global_attention(interleaved, H, W, M, qk_norm, use_rope):
    torch.manual_seed(0)
    attn = WindowAttention(16, 2, window_size=M, interleaved=interleaved, qk_norm=qk_norm).double()
    if qk_norm:
        attn.q_norm.weight.data.uniform_(0.5, 1.5)
        attn.k_norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(3, H, W, 16, dtype=torch.float64)
    rope = tuple(t.double() for t in rope_tables_2d(8, H, W)) if use_rope else None
    ref = reference_attention(attn, x, pair_mask(H, W, M, interleaved), rope)
    torch.testing.assert_close(attn(x, rope), ref, rtol=1e-10, atol=1e-10)


def test_global_attention_and_clamped_window_equal_unmasked_reference():
    torch.manual_seed(0)
    attn = WindowAttention(16, 4, window_size=None).double()
    x = torch.randn(2, 5, 7, 16, dtype=torch.float64)
    everything = torch.ones(35, 35, dtype=torch.bool)
    torch.testing.assert_close(attn(x), reference_attention(attn, x, everything))
    attn.window_size = 8  # larger than the 5x7 grid: clamped to one window
    torch.testing.assert_close(attn(x), reference_attention(attn, x, everything))


def test_depthwise_conv_matches_functional_conv():
    torch.manual_seed(0)
    conv = DepthwiseConv(6, 3).double()
    x = torch.randn(2, 5, 9, 6, dtype=torch.float64)
    ref = F.conv2d(x.permute(0, 3, 1, 2), conv.conv.weight, conv.conv.bias, padding=1, groups=6)
    torch.testing.assert_close(conv(x), ref.permute(0, 2, 3, 1))


def test_mixer_is_sum_of_branches_and_ablation_rows():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 8, 16)
    full = IwinMixer(16, 2, window_size=4, kernel_size=3)
    torch.testing.assert_close(full(x), full.attn(x) + full.conv(x))
    assert IwinMixer(16, 2, kernel_size=None).conv is None
    assert IwinMixer(16, 2, attention=False).attn is None
    assert IwinMixer(16, 2, interleaved=False).attn.interleaved is False
    with pytest.raises(ValueError, match="at least one branch"):
        IwinMixer(16, 2, kernel_size=None, attention=False)


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("H,W,M", [(8, 12, 4), (16, 16, 8), (6, 10, 4), (4, 4, 4)])
def test_fused_scatter_and_sum_equals_the_branches_added(interleaved, H, W, M):
    """The mixer adds the attention windows straight into the convolution's output (one pass, no scatter
    buffer); forward and every gradient must equal the two public branches scattered and summed."""
    torch.manual_seed(0)
    mixer = IwinMixer(16, 2, window_size=M, kernel_size=3, interleaved=interleaved).double()
    rope = (torch.randn(H, W, 8, dtype=torch.float64), torch.randn(H, W, 8, dtype=torch.float64))
    x = torch.randn(2, H, W, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, H, W, 16, dtype=torch.float64)  # a loss that weighs every output differently

    def grads(out):
        return torch.autograd.grad((out * w).sum(), [x, *mixer.parameters()])

    want = mixer.attn(x, rope) + mixer.conv(x)
    got = mixer(x, rope)
    torch.testing.assert_close(got, want)
    for g, r in zip(grads(got), grads(want), strict=True):
        torch.testing.assert_close(g, r)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x, rope), want)


def input_support(module, H, W, i0, j0):
    """Grid positions whose input changes output token (i0, j0): the nonzero input gradient."""
    x = torch.randn(1, H, W, 8, dtype=torch.float64, requires_grad=True)
    module(x)[0, i0, j0].sum().backward()
    return {tuple(p) for p in (x.grad[0].abs().sum(-1) > 0).nonzero().tolist()}


@pytest.mark.parametrize("H,W,M,K,i0,j0", [(16, 16, 4, 3, 5, 9), (16, 16, 4, 3, 0, 15), (12, 8, 4, 5, 7, 2)])
def test_receptive_field_is_interleaved_group_union_conv_neighbourhood(H, W, M, K, i0, j0):
    torch.manual_seed(0)
    mixer = IwinMixer(8, 2, window_size=M, kernel_size=K).double()
    Hg, Wg, r = H // M, W // M, K // 2
    group = {(i, j) for i in range(H) for j in range(W) if i % Hg == i0 % Hg and j % Wg == j0 % Wg}
    box = {(i, j) for i in range(H) for j in range(W) if abs(i - i0) <= r and abs(j - j0) <= r}
    assert input_support(mixer, H, W, i0, j0) == group | box


@pytest.mark.parametrize("H,M,K", [(16, 4, 3), (16, 4, 5), (16, 8, 3), (12, 4, 3), (8, 4, 3), (24, 4, 5)])
def test_two_mixers_connect_all_pairs_iff_km_covers_grid(H, M, K):
    """Theorem 3, read with care: attention then convolution (two hops, so two stacked mixers)
    reaches every token exactly when K·M >= H; one mixer alone never does on these grids."""
    torch.manual_seed(0)
    one = IwinMixer(8, 2, window_size=M, kernel_size=K).double()
    two = torch.nn.Sequential(one, IwinMixer(8, 2, window_size=M, kernel_size=K).double())
    everything = {(i, j) for i in range(H) for j in range(H)}
    assert input_support(one, H, H, 1, 2) != everything
    assert (input_support(two, H, H, 1, 2) == everything) == (K * M >= H)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(dim=10, num_heads=3), "multiple of num_heads"),
        (dict(dim=16, num_heads=2, window_size=0), "window_size"),
        (dict(dim=16, num_heads=2, window_size=-4), "window_size"),
        (dict(dim=16, num_heads=2, kernel_size=4), "kernel_size"),
        (dict(dim=16, num_heads=2, kernel_size=0), "kernel_size"),
    ],
)
def test_mixer_rejects_bad_configuration(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IwinMixer(**kwargs)
