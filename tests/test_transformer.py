"""FlashDiTTransformer2DModel: sizes, init, gradients, any grid, embeddings, save/load, bad input."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flashdit import FLASHDIT_SIZES, FlashDiTTransformer2DModel
from flashdit.models.embeddings import apply_rope, rope_tables_2d, sincos_pos_embed_2d, timestep_embedding
from flashdit.models.transformer import MIXERS, MODULATIONS, POS_EMBEDS

TINY = dict(sample_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=2, num_classes=10)


def tiny(**kwargs):
    torch.manual_seed(0)
    return FlashDiTTransformer2DModel(**{**TINY, **kwargs})


def randomize(model, scale=0.05):
    """Leave adaLN-Zero behind so every path carries signal."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


def inputs(B=2, C=3, H=8, W=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, H, W, generator=g), torch.rand(B, generator=g), torch.randint(0, 10, (B,), generator=g)


def expected_params(depth, hidden_size, patch_size, in_channels, mixer="iwin", kernel_size=3, mlp_ratio=4.0, **_):
    """Closed-form parameter count of the architecture, layer by layer."""
    D, C, p, n = hidden_size, in_channels, patch_size, 1000
    hidden = int(2 / 3 * int(D * mlp_ratio))
    block = (
        2 * D  # two RMSNorm weights
        + D * 6 * D
        + 6 * D  # adaLN
        + (D * 3 * D + 3 * D + D * D + D if mixer != "conv" else 0)  # qkv + proj
        + ((kernel_size**2 + 1) * D if kernel_size else 0)  # depthwise conv + bias
        + D * 2 * hidden
        + 2 * hidden
        + hidden * D
        + D  # SwiGLU
    )
    embed = C * p * p * D + D + (256 * D + D) + (D * D + D) + (n + 1) * D
    final = D + D * 2 * D + 2 * D + D * p * p * C + p * p * C
    return embed + depth * block + final


@pytest.mark.parametrize("name", sorted(FLASHDIT_SIZES))
def test_registry_parameter_counts(name):
    C = 32 if name.endswith("/1") else 4
    with torch.device("meta"):
        model = FlashDiTTransformer2DModel.from_size(name, in_channels=C)
    assert model.num_parameters() == expected_params(**FLASHDIT_SIZES[name], in_channels=C)


def test_flashdit_xl1_has_paper_size():
    with torch.device("meta"):
        model = FlashDiTTransformer2DModel.from_size("FlashDiT-XL/1", in_channels=32)
        lightning = FlashDiTTransformer2DModel.from_size(
            "FlashDiT-XL/1", in_channels=32, mixer="attention", kernel_size=None, pos_embed="sincos+rope"
        )
    assert abs(model.num_parameters() - 675.3e6) < 0.5e6
    # LightningDiT-XL/1 reports 675.26M with its 256x1152 sin-cos table stored as a parameter
    assert lightning.num_parameters() + 256 * 1152 == pytest.approx(675.26e6, abs=0.01e6)


def test_unknown_size_lists_choices():
    with pytest.raises(ValueError, match="FlashDiT-XL/1"):
        FlashDiTTransformer2DModel.from_size("FlashDiT-XXL/1")


@pytest.mark.parametrize("mixer", MIXERS)
def test_zero_output_at_init(mixer):
    model = tiny(mixer=mixer)
    out = model(*inputs()).sample
    assert out.shape == (2, 3, 8, 8)
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("mixer,pos_embed", [("iwin", "none"), ("attention", "sincos+rope"), ("conv", "sincos")])
def test_every_parameter_gets_a_gradient(mixer, pos_embed):
    """adaLN-Zero blocks the signal at init; after a few steps every parameter must learn."""
    model = tiny(mixer=mixer, pos_embed=pos_embed, class_dropout_prob=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, t, y = inputs(B=8, H=8, W=12)
    for _ in range(3):
        opt.zero_grad()
        model(x, t, y).sample.sub(x).pow(2).mean().backward()
        opt.step()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0 and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("H,W", [(16, 16), (24, 24), (32, 32), (16, 24), (18, 18), (12, 36)])
@pytest.mark.parametrize("mixer", [m for m in MIXERS if m in ("iwin", "window")])  # the windowed ones
def test_runs_on_any_grid(H, W, mixer):
    model = randomize(tiny(mixer=mixer, sample_size=16)).eval()
    x, t, y = inputs(H=H, W=W)
    out = model(x, t, y).sample
    assert out.shape == (2, 3, H, W) and torch.isfinite(out).all()
    # each sample depends only on itself: the batch of one gives the same answer
    torch.testing.assert_close(model(x[1:], t[1:], y[1:]).sample, out[1:], rtol=1e-5, atol=1e-5)


def test_patchify_and_unpatchify_layout():
    """With blocks at identity, output = final linear of normed patch embedding; rebuild it with unfold/fold."""
    model = randomize(tiny(patch_size=2, in_channels=3)).eval()
    for block in model.blocks:
        torch.nn.init.zeros_(block.adaLN_modulation[-1].weight)
        torch.nn.init.zeros_(block.adaLN_modulation[-1].bias)
    x, t, y = inputs(H=6, W=10)
    out = model(x, t, y).sample

    c = model.t_embedder(t) + model.y_embedder.embedding_table(y)
    shift, scale = model.final_layer.adaLN_modulation(c).chunk(2, dim=-1)
    conv = model.x_embedder.proj
    patches = F.unfold(x, 2, stride=2)  # (B, C·2·2, L) ordered (c, dy, dx)
    tokens = (conv.weight.view(conv.weight.shape[0], -1) @ patches + conv.bias[:, None]).transpose(1, 2)
    normed = tokens / tokens.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * model.final_layer.norm_final.weight
    per_token = model.final_layer.linear(normed * (1 + scale[:, None]) + shift[:, None])  # (B, L, (dy, dx, c))
    per_token = per_token.view(2, -1, 2, 2, 3).permute(0, 4, 2, 3, 1).reshape(2, 12, -1)  # (B, (c, dy, dx), L)
    torch.testing.assert_close(out, F.fold(per_token, (6, 10), 2, stride=2), rtol=1e-5, atol=1e-5)


def test_iwin_with_window_over_the_grid_is_global_attention():
    model = randomize(tiny(mixer="iwin", window_size=16, kernel_size=None)).eval()
    glob = FlashDiTTransformer2DModel.from_config({**model.config, "mixer": "attention"}).eval()
    glob.load_state_dict(model.state_dict())
    x, t, y = inputs(H=8, W=12)
    torch.testing.assert_close(model(x, t, y).sample, glob(x, t, y).sample)


def test_attention_without_position_is_permutation_equivariant():
    """No pos-embed, no conv, patch 1: the model cannot tell where a token is."""
    model = randomize(tiny(mixer="attention", kernel_size=None, patch_size=1)).eval()
    x, t, y = inputs(H=4, W=6)
    perm = torch.randperm(24)
    shuffle = lambda z: z.flatten(2)[:, :, perm].view_as(z)  # noqa: E731
    torch.testing.assert_close(model(shuffle(x), t, y).sample, shuffle(model(x, t, y).sample), rtol=1e-5, atol=1e-5)
    with_pos = randomize(tiny(mixer="attention", kernel_size=None, patch_size=1, pos_embed="sincos")).eval()
    assert not torch.allclose(with_pos(shuffle(x), t, y).sample, shuffle(with_pos(x, t, y).sample), atol=1e-4)


def test_label_dropout_replaces_labels_by_null_class_in_training_only():
    model = randomize(tiny(class_dropout_prob=1.0))
    x, t, y = inputs()
    null = torch.full_like(y, 10)
    model.train()
    dropped = model(x, t, y).sample
    model.eval()
    torch.testing.assert_close(dropped, model(x, t, null).sample)
    assert not torch.allclose(model(x, t, y).sample, dropped)


def test_gradient_checkpointing_gives_identical_gradients():
    model = randomize(tiny())
    x, t, y = inputs()
    model(x, t, y).sample.square().sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.enable_gradient_checkpointing()
    assert model.is_gradient_checkpointing
    model(x, t, y).sample.square().sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], msg=n)


def test_save_and_load_round_trip_is_exact(tmp_path):
    model = randomize(tiny(mixer="window", pos_embed="rope", qk_norm=True, window_size=2)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = FlashDiTTransformer2DModel.from_pretrained(tmp_path).eval()
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(model.config)
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    x, t, y = inputs()
    assert torch.equal(model(x, t, y).sample, loaded(x, t, y).sample)


def test_return_dict_false_and_scalar_timestep():
    model = randomize(tiny()).eval()
    x, _, y = inputs()
    (out,) = model(x, 0.3, y, return_dict=False)
    torch.testing.assert_close(out, model(x, torch.full((2,), 0.3), y).sample)


def test_timestep_embedding_is_dit_sinusoid():
    t = torch.tensor([0.0, 0.25, 1.0])
    emb = timestep_embedding(t, 8)
    freqs = torch.tensor([10000 ** (-k / 4) for k in range(4)])
    torch.testing.assert_close(emb, torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], -1))


def dit_numpy_sincos(embed_dim, grid_size):
    """DiT/MAE's get_2d_sincos_pos_embed for a square grid."""

    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))
    grid = np.stack(grid, axis=0).reshape(2, 1, grid_size, grid_size)
    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


def test_sincos_matches_dit_on_square_grid_and_extends_to_rectangles():
    ours = sincos_pos_embed_2d(64, 6, 6).reshape(36, 64)
    torch.testing.assert_close(ours, torch.from_numpy(dit_numpy_sincos(64, 6)).float())
    rect = sincos_pos_embed_2d(64, 3, 5)
    torch.testing.assert_close(rect, sincos_pos_embed_2d(64, 5, 5)[:3, :5])


def test_rope_scores_depend_only_on_relative_position():
    cos, sin = rope_tables_2d(16, 9, 9)
    torch.manual_seed(0)
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)
    cos, sin = cos.double(), sin.double()

    def score(a, b):
        return float(apply_rope(q, cos[a], sin[a]) @ apply_rope(k, cos[b], sin[b]))

    # the tables are float32, so equal up to float32 rounding
    assert score((2, 3), (4, 7)) == pytest.approx(score((5, 1), (7, 5)), rel=1e-6)
    assert score((0, 0), (0, 0)) == pytest.approx(float(q @ k), rel=1e-6)
    assert score((2, 3), (4, 7)) != pytest.approx(score((2, 3), (7, 4)), rel=1e-3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(hidden_size=30, num_heads=4), "multiple of num_heads"),
        (dict(window_size=0), "window_size"),
        (dict(kernel_size=2), "kernel_size"),
        (dict(kernel_size=-3), "kernel_size"),
        (dict(mixer="swin"), "mixer='swin' must be 'iwin', 'window', 'attention' or 'conv'"),
        (dict(pos_embed="learned"), "pos_embed='learned' must be"),
        (dict(mlp_ratio=float("nan")), "mlp_ratio=nan must be a finite number"),
        (dict(depth=0), "depth=0 must be greater than or equal to 1"),
        (dict(class_dropout_prob=1.5), "class_dropout_prob=1.5 must be less than or equal to 1"),
        (dict(mixer="conv", pos_embed="rope"), "rotates attention"),
        (dict(hidden_size=24, num_heads=4, pos_embed="rope"), "head_dim divisible by 4"),
    ],
)
def test_bad_configuration_is_a_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


def test_bad_input_is_a_value_error():
    model = tiny().eval()
    x, t, y = inputs()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(2, 4, 8, 8), t, y)
    with pytest.raises(ValueError, match="multiples of patch_size=2"):
        model(torch.randn(2, 3, 9, 8), t, y)
    with pytest.raises(ValueError, match=r"outside \[0, 10\]"):
        model(x, t, torch.tensor([3, 11]))
    with pytest.raises(ValueError, match=r"outside \[0, 10\]"):
        model(x, t, torch.tensor([-1, 2]))
    with pytest.raises(ValueError, match="integer tensor"):
        model(x, t, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="timestep"):
        model(x, torch.rand(3), y)
    model(x, t, torch.tensor([10, 10]))  # the null class is a valid label


@pytest.mark.parametrize("mixer,pos_embed", [("iwin", "none"), ("attention", "sincos"), ("conv", "none")])
def test_residual_stream_stays_dense_channels_last(mixer, pos_embed):
    """Every block sees and returns a contiguous (B, H, W, D) grid; strided streams slow every op."""
    model = randomize(tiny(mixer=mixer, pos_embed=pos_embed))
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda mod, args, out: seen.append((args[0], out)))
    model(*inputs(H=8, W=12)).sample.sum().backward()
    assert len(seen) == 2
    assert all(a.is_contiguous() and o.is_contiguous() and o.shape == (2, 4, 6, 32) for a, o in seen)


def test_conv_init_xavier_matches_the_official_bound():
    kw = dict(sample_size=8, patch_size=1, in_channels=4, hidden_size=64, depth=2, num_heads=2)
    torch.manual_seed(0)
    xavier = FlashDiTTransformer2DModel(**kw, conv_init="xavier")
    torch.manual_seed(0)
    default = FlashDiTTransformer2DModel(**kw)
    for block_x, block_d in zip(xavier.blocks, default.blocks):
        wx, wd = block_x.mixer.conv.conv.weight, block_d.mixer.conv.conv.weight
        # Xavier-uniform on (C, 1, K, K): fan_in = K², fan_out = C·K²; PyTorch's default: bound 1/sqrt(K²)
        bound = (6 / (9 + 64 * 9)) ** 0.5
        assert wx.abs().max() <= bound and wx.abs().max() > 0.9 * bound
        assert wd.abs().max() > 0.9 / 3 and wd.abs().max() <= 1 / 3
        assert torch.count_nonzero(block_x.mixer.conv.conv.bias) == 0
    with pytest.raises(ValueError, match="conv_init"):
        FlashDiTTransformer2DModel(**kw, conv_init="kaiming")


def test_attention_backends_go_through_diffusers_dispatch():
    """set_attention_backend routes every attention through diffusers' dispatch (math kernel here, the same
    function), an unusable backend fails at once, reset returns to SDPA."""
    model = randomize(tiny(sample_size=12, in_channels=4, window_size=4)).eval()
    x, t, y = inputs(C=4, H=12, W=12)  # 6x6 tokens: padded windows, so the key mask is exercised too
    want = model(x, t, y).sample
    calls = []
    import diffusers.models.attention_dispatch as dispatch

    real = dispatch._AttentionBackendRegistry._backends[dispatch.AttentionBackendName._NATIVE_MATH]
    dispatch._AttentionBackendRegistry._backends[dispatch.AttentionBackendName._NATIVE_MATH] = lambda *a, **k: (
        calls.append(1) or real(*a, **k)
    )
    try:
        model.set_attention_backend("_native_math")
        torch.testing.assert_close(model(x, t, y).sample, want, atol=1e-5, rtol=1e-5)
    finally:
        dispatch._AttentionBackendRegistry._backends[dispatch.AttentionBackendName._NATIVE_MATH] = real
    assert len(calls) == 2  # one per block
    with pytest.raises(ValueError, match="not one of"):
        model.set_attention_backend("warp-speed")
    if not dispatch._CAN_USE_FLASH_ATTN:
        with pytest.raises(RuntimeError, match="flash-attn"):
            model.set_attention_backend("flash")
    model.reset_attention_backend()
    calls.clear()
    torch.testing.assert_close(model(x, t, y).sample, want)


@pytest.mark.parametrize("sample_size", [8, 12])  # 4x4 tokens, and 6x6 with padded windows
@pytest.mark.parametrize("mixer", [m for m in MIXERS if m != "conv"])  # the mixers with attention
@pytest.mark.gpu  # its gradient half runs only on an accelerator
def test_flex_attention_path_equals_the_sdpa_path(sample_size, mixer):
    """set_attention_backend("flex"): every window of an image in one flex_attention call with a block-diagonal
    BlockMask over the windows laid end to end (the interleaved order for IW-MSA). PyTorch has no FlexAttention
    backward on CPU, so the gradients are compared only where a GPU is present."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kwargs = dict(sample_size=sample_size, window_size=4, mixer=mixer)
    if mixer == "attention":
        kwargs.update(kernel_size=None, pos_embed="sincos")
    model = randomize(tiny(**kwargs)).to(device).eval()  # no label dropout
    x, t, y = (v.to(device) for v in inputs(H=sample_size, W=sample_size))
    with torch.set_grad_enabled(device == "cuda"):
        want = model(x, t, y).sample
        model.set_attention_backend("flex")
        got = model(x, t, y).sample
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if device == "cuda":
        (g_flex,) = torch.autograd.grad(got.square().mean(), model.blocks[0].mixer.attn.qkv.weight)
        (g_sdpa,) = torch.autograd.grad(want.square().mean(), model.blocks[0].mixer.attn.qkv.weight)
        torch.testing.assert_close(g_flex, g_sdpa, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("modulation", MODULATIONS)
@pytest.mark.parametrize("pos_embed", POS_EMBEDS)
@pytest.mark.parametrize("mixer", MIXERS)
def test_every_declared_option_combination_builds_and_runs_or_says_why(mixer, pos_embed, modulation):
    """Every declared mixer × position embedding × modulation (as timm's tests iterate list_models()): a model that
    runs on a non-square grid and starts at zero output, or one of the two documented refusals."""
    refusal = None
    if modulation == "flashdit-official" and mixer == "conv":
        refusal = "needs both branches"
    elif mixer == "conv" and "rope" in pos_embed:
        refusal = "rotates attention"
    if refusal:
        with pytest.raises(ValueError, match=refusal):
            tiny(mixer=mixer, pos_embed=pos_embed, modulation=modulation)
        return
    model = tiny(mixer=mixer, pos_embed=pos_embed, modulation=modulation).eval()
    x, t, y = inputs(H=8, W=12)
    out = model(x, t, y).sample
    assert out.shape == x.shape and torch.count_nonzero(out) == 0  # adaLN-Zero / zero gates at init


def test_the_recipes_model_section_is_the_transformers_signature():
    """One declaration: the recipe's model: fields are the transformer's parameters (plus the registry size), with
    the same defaults, except the fields the size or the data fill."""
    import dataclasses
    import inspect

    from flashdit.config import MODEL_FROM_DATA, MODEL_FROM_SIZE, ModelConfig

    params = inspect.signature(inspect.unwrap(FlashDiTTransformer2DModel.__init__)).parameters
    fields = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    assert set(fields) == {"size"} | set(params) - {"self", "out_channels"}
    for name, default in fields.items():
        if name == "size":
            continue
        want = None if name in MODEL_FROM_SIZE + MODEL_FROM_DATA else params[name].default
        assert default == want, name
