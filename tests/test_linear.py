"""Token-wise linear layers on oneDNN: the same values and gradients as ``F.linear``, and the route taken only where
it applies (float32 CPU, enough tokens, no autocast, oneDNN on)."""

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from flashdit import FlashDiTTransformer2DModel
from flashdit.models.linear import ONEDNN_MIN_ROWS, TokenLinear, linear_as_conv, onednn_applies

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")


def op_counts(fn) -> dict[str, int]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key: event.count for event in prof.key_averages()}


def ops_run(fn) -> set[str]:
    return set(op_counts(fn))


@pytest.mark.parametrize(
    "shape", [(2, 16, 16, 64), (3, 40, 64), (300, 64)], ids=["grid (B, H, W, C)", "windows (B·nW, L, C)", "rows"]
)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_as_conv_matches_f_linear_in_values_and_gradients(shape, bias):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    w = torch.randn(96, 64, requires_grad=True)
    b = torch.randn(96, requires_grad=True) if bias else None
    grad = torch.randn(*shape[:-1], 96)
    out = linear_as_conv(x, w, b)
    ref = F.linear(x, w, b)
    assert out.shape == ref.shape and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad(out, [x, w] + ([b] if bias else []), grad)
    want = torch.autograd.grad(ref, [x, w] + ([b] if bias else []), grad)
    for g, r in zip(got, want, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)


def test_linear_as_conv_reads_a_non_contiguous_input():
    torch.manual_seed(0)
    x = torch.randn(2, 64, 16, 16).permute(0, 2, 3, 1)  # channels-first memory seen as (B, H, W, C)
    w, b = torch.randn(32, 64), torch.randn(32)
    torch.testing.assert_close(linear_as_conv(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)


def test_token_linear_runs_large_float32_cpu_products_as_a_convolution():
    torch.manual_seed(0)
    layer = TokenLinear(256, 256)
    x = torch.randn(2, 16, 16, 256)  # 512 tokens · 256 · 256 = 2^25 multiply-adds
    assert onednn_applies(x, layer.weight)
    ops = ops_run(lambda: layer(x))
    assert "aten::convolution" in ops and not {"aten::addmm", "aten::mm"} & ops
    layer.cpu_backend = "blas"
    ops = ops_run(lambda: layer(x))
    assert "aten::convolution" not in ops and {"aten::addmm", "aten::mm"} & ops


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_token_linear_keeps_f_linear_where_onednn_does_not_apply():
    layer = TokenLinear(256, 256)
    small = torch.randn(ONEDNN_MIN_ROWS - 1, 256)
    large = torch.randn(2 * ONEDNN_MIN_ROWS, 256)
    assert not onednn_applies(small, layer.weight)  # too few tokens to repay the call
    assert not onednn_applies(torch.randn(4096, 8), torch.randn(8, 8))  # too little work
    assert not onednn_applies(large.double(), layer.weight.double())  # float32 only
    assert not onednn_applies(large.to(torch.bfloat16), layer.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn_applies(large, layer.weight)  # autocast's own bf16 kernels
        assert layer(large).dtype == torch.bfloat16
    with torch.backends.mkldnn.flags(enabled=False):
        assert not onednn_applies(large, layer.weight)  # PyTorch's switch for oneDNN is honoured
    assert onednn_applies(large, layer.weight)


def tiny_model(**overrides) -> FlashDiTTransformer2DModel:
    torch.manual_seed(0)
    model = FlashDiTTransformer2DModel(
        sample_size=16, patch_size=1, in_channels=4, hidden_size=128, depth=2, num_heads=2, num_classes=10, **overrides
    )
    for p in model.parameters():  # away from the zero init, so every layer carries signal
        torch.nn.init.normal_(p, std=0.05)
    return model


@pytest.mark.parametrize("mixer", ["iwin", "attention"])
def test_model_output_and_gradients_agree_on_both_cpu_linear_backends(mixer):
    x = torch.randn(2, 4, 16, 16)
    t, y = torch.rand(2), torch.tensor([1, 3])
    results = {}
    for backend in ("onednn", "blas"):
        model = tiny_model(mixer=mixer)
        model.set_cpu_linear_backend(backend)
        out = model(x, t, y).sample
        out.square().mean().backward()
        results[backend] = out.detach(), {n: p.grad for n, p in model.named_parameters()}
    (out_a, grads_a), (out_b, grads_b) = results["onednn"], results["blas"]
    torch.testing.assert_close(out_a, out_b, rtol=1e-4, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-3, atol=1e-5, msg=name)


def test_model_routes_its_token_linears_through_onednn_by_default():
    model = tiny_model(mixer="attention", kernel_size=None)  # no depthwise convolution: the patch embedding is the one
    x, t, y = torch.randn(2, 4, 16, 16), torch.rand(2), torch.tensor([1, 3])
    assert {m.cpu_backend for m in model.modules() if isinstance(m, TokenLinear)} == {"onednn"}
    # 512 tokens: qkv (128 -> 384), w12 (128 -> 2·340) and w3 (340 -> 128) qualify; proj and the output layer are
    # too small
    assert op_counts(lambda: model(x, t, y))["aten::convolution"] == 1 + 3 * 2
    state = model.state_dict()
    model.set_cpu_linear_backend("blas")
    assert {m.cpu_backend for m in model.modules() if isinstance(m, TokenLinear)} == {"blas"}
    assert op_counts(lambda: model(x, t, y))["aten::convolution"] == 1
    assert model.state_dict().keys() == state.keys()  # nn.Linear's parameters, nothing added
    with pytest.raises(ValueError, match=r"cpu linear backend 'mkl' is not one of \['onednn', 'blas'\]"):
        model.set_cpu_linear_backend("mkl")
