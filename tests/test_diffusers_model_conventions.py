"""FlashDiTTransformer2DModel under diffusers' model conventions, used as a diffusers user would: layerwise casting,
``torch.compile`` (whole model and regional), the attention-processor API."""

import copy

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from flashdit import FlashDiTTransformer2DModel
from flashdit.models.mixer import WindowAttnProcessor
from flashdit.models.norms import RMSNorm

TINY = dict(sample_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=2, num_heads=2, num_classes=10)


def tiny(**kwargs):
    torch.manual_seed(0)
    model = FlashDiTTransformer2DModel(**{**TINY, **kwargs}).eval()
    # leave adaLN-Zero's all-zero start behind, so every layer carries signal
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def inputs(B=2, H=8, W=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, H, W, generator=g), torch.rand(B, generator=g), torch.randint(0, 11, (B,), generator=g)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


# ---------------------------------------------------------------------------------------- layerwise casting


def kept_in_model_dtype(model: torch.nn.Module) -> set[str]:
    """The parameters layerwise casting must leave alone: the patch, timestep and label embeddings and the norms."""
    kept = set()
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}"
            if isinstance(module, RMSNorm) or full.split(".")[0] in ("x_embedder", "t_embedder", "y_embedder"):
                kept.add(full)
    return kept


def rounded_through(model: torch.nn.Module, storage: torch.dtype) -> torch.nn.Module:
    """The float32 model whose cast weights are rounded to ``storage`` and back: what layerwise casting with float32
    compute must compute, up to float32 summation order."""
    ref = copy.deepcopy(model)
    kept = kept_in_model_dtype(ref)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name not in kept:
                p.copy_(p.to(storage).float())
    return ref


@pytest.mark.parametrize(
    "storage,compute,model_dtype,tolerance",
    [
        # float8 e4m3 rounds each weight by up to 2^-4 (6.25 %); measured 2.5-3.6 % on this model
        (torch.float8_e4m3fn, torch.float32, torch.float32, 0.1),
        (torch.float8_e4m3fn, torch.bfloat16, torch.float32, 0.1),
        # bfloat16 rounds by up to 2^-9 (0.2 %) per weight, and per activation when it computes too
        (torch.bfloat16, torch.float32, torch.float32, 0.02),
        (torch.bfloat16, torch.bfloat16, torch.float32, 0.03),
        (torch.bfloat16, torch.bfloat16, torch.bfloat16, 0.03),
    ],
)
@pytest.mark.parametrize("mixer", ["iwin", "attention"])
def test_layerwise_casting_stores_low_and_computes_close_to_float32(storage, compute, model_dtype, tolerance, mixer):
    kwargs = dict(mixer="attention", kernel_size=None, pos_embed="sincos+rope") if mixer == "attention" else {}
    model = tiny(**kwargs)
    x, t, y = inputs()
    with torch.no_grad():
        want = model(x, t, y).sample
    cast = copy.deepcopy(model).to(model_dtype)
    cast.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute)

    kept = kept_in_model_dtype(cast)
    assert kept and len(kept) < len(dict(cast.named_parameters()))
    for name, p in cast.named_parameters():
        assert p.dtype == (model_dtype if name in kept else storage), name
    assert cast.dtype == compute
    with torch.no_grad():
        got = cast(x, t, y).sample
    assert got.dtype == compute and torch.isfinite(got).all()
    assert relative_error(got, want) < tolerance
    for name, p in cast.named_parameters():  # the forward casts back to storage
        assert p.dtype == (model_dtype if name in kept else storage), name
    if compute == torch.float32:  # exactly the rounded weights, computed in float32
        with torch.no_grad():
            torch.testing.assert_close(got, rounded_through(model, storage)(x, t, y).sample, rtol=1e-4, atol=1e-5)


def test_layerwise_casting_through_the_hook_function_with_its_default_patterns():
    """``diffusers.hooks.apply_layerwise_casting`` with its own defaults casts the patch and timestep embeddings too;
    each still gets its input in the dtype it computes in."""
    from diffusers.hooks import apply_layerwise_casting

    model = tiny()
    x, t, y = inputs()
    cast = copy.deepcopy(model)
    apply_layerwise_casting(cast, storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert cast.x_embedder.proj.weight.dtype == torch.float8_e4m3fn
    assert cast.t_embedder.mlp[0].weight.dtype == torch.float8_e4m3fn
    with torch.no_grad():
        assert relative_error(cast(x, t, y).sample, model(x, t, y).sample) < 0.1


# ---------------------------------------------------------------------------------------- torch.compile

CONFIGS = {
    "iwin": {},  # 4x4 tokens in 4x4 windows: the fused in-place scatter-and-sum in eager
    "iwin-padded": dict(sample_size=12, window_size=4),  # 6x6 tokens: padded windows, key mask
    "window": dict(mixer="window", window_size=2),
    "official": dict(modulation="flashdit-official", window_size=2),
    "lightningdit": dict(mixer="attention", kernel_size=None, pos_embed="sincos+rope"),
    "conv": dict(mixer="conv", pos_embed="sincos"),
}


class GraphCounter:
    """A ``torch.compile`` backend that runs each captured graph as it is and counts the graphs."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs += 1
        return gm.forward


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fullgraph_compile_without_gradients_equals_eager(name):
    """Inference (``torch.no_grad``) compiles in one graph: fullgraph=True fails on any graph break, whatever the
    backend."""
    model = tiny(**CONFIGS[name])
    S = model.config.sample_size
    x, t, y = inputs(H=S, W=S)
    counter = GraphCounter()
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    with torch.no_grad():
        want = model(x, t, y).sample
        torch.testing.assert_close(compiled(x, t, y).sample, want, rtol=1e-5, atol=1e-5)
        assert torch._dynamo.explain(model)(x, t, y).graph_break_count == 0
    assert counter.graphs == 1


@pytest.mark.parametrize("name", ["iwin", "iwin-padded", "official"])
def test_fullgraph_compile_trains_like_eager(name):
    """A training forward and backward through ``torch.compile(fullgraph=True)`` (AOTAutograd, as inductor uses it)
    gives eager's loss and every parameter's gradient."""
    model = tiny(**CONFIGS[name], class_dropout_prob=0.0).train()
    S = model.config.sample_size
    x, t, y = inputs(H=S, W=S)

    def loss_and_grads(module):
        model.zero_grad()
        loss = (module(x, t, y).sample - x).square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    want_loss, want_grads = loss_and_grads(model)
    got_loss, got_grads = loss_and_grads(torch.compile(model, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    for n, g in want_grads.items():
        torch.testing.assert_close(got_grads[n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_compile_repeated_blocks_compiles_each_block_once_for_all():
    """diffusers' regional compilation finds the blocks through ``_repeated_blocks``; the blocks share one graph."""
    model = tiny(depth=3, class_dropout_prob=0.0)
    x, t, y = inputs()
    with torch.no_grad():
        want = model(x, t, y).sample
    counter = GraphCounter()
    model.compile_repeated_blocks(fullgraph=True, backend=counter)
    assert all(block._compiled_call_impl is not None for block in model.blocks)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y).sample, want, rtol=1e-5, atol=1e-5)
    assert counter.graphs == 1


# ---------------------------------------------------------------------------------------- attention processors


class Recording(WindowAttnProcessor):
    """The default computation, recording which attention module each call ran."""

    def __init__(self):
        self.modules = []

    def __call__(self, attn, x, rope=None):
        self.modules.append(attn)
        return super().__call__(attn, x, rope)


def test_attn_processors_name_each_window_attention():
    model = tiny(depth=3)
    procs = model.attn_processors
    assert list(procs) == [f"blocks.{i}.mixer.attn.processor" for i in range(3)]
    assert all(type(p) is WindowAttnProcessor for p in procs.values())
    assert tiny(mixer="conv").attn_processors == {}  # no attention, no processor


def test_set_attn_processor_runs_the_given_processors():
    model = tiny(depth=3)
    x, t, y = inputs()
    with torch.no_grad():
        want = model(x, t, y).sample
    shared = Recording()
    model.set_attn_processor(shared)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y).sample, want, rtol=0, atol=0)
    assert shared.modules == [block.mixer.attn for block in model.blocks]

    own = {name: Recording() for name in model.attn_processors}
    model.set_attn_processor(dict(own))
    assert model.attn_processors == own
    with torch.no_grad():
        model(x, t, y)
    for i, block in enumerate(model.blocks):
        assert own[f"blocks.{i}.mixer.attn.processor"].modules == [block.mixer.attn]

    model.set_default_attn_processor()
    assert all(type(p) is WindowAttnProcessor for p in model.attn_processors.values())
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y).sample, want, rtol=0, atol=0)


def test_set_default_attn_processor_keeps_the_attention_backend():
    model = tiny()
    model.set_attention_backend("_native_math")
    model.set_attn_processor(Recording())
    model.set_default_attn_processor()
    assert all(block.mixer.attn.attention_backend == "_native_math" for block in model.blocks)


def test_set_attn_processor_refuses_diffusers_processors_in_one_line():
    model = tiny()
    before = model.attn_processors
    for wrong in (AttnProcessor2_0(), AttnProcessor(), lambda attn, x, rope=None: x):
        with pytest.raises(ValueError, match="cannot run FlashDiT's window attention") as err:
            model.set_attn_processor(wrong)
        assert "\n" not in str(err.value) and "WindowAttnProcessor" in str(err.value)
        assert type(wrong).__name__ in str(err.value)
    mixed = {name: Recording() for name in before}
    mixed["blocks.1.mixer.attn.processor"] = AttnProcessor2_0()
    with pytest.raises(ValueError, match=r"processor\['blocks.1.mixer.attn.processor'\] AttnProcessor2_0 cannot"):
        model.set_attn_processor(mixed)
    with pytest.raises(ValueError, match=r"missing \['blocks.1.mixer.attn.processor'\], unknown \['blocks.9"):
        model.set_attn_processor(
            {"blocks.0.mixer.attn.processor": Recording(), "blocks.9.mixer.attn.processor": Recording()}
        )
    with pytest.raises(ValueError, match="cannot run FlashDiT's window attention"):
        model.blocks[0].mixer.attn.set_processor(AttnProcessor2_0())
    assert model.attn_processors == before  # nothing changed by a refused call


def test_fuse_qkv_projections_is_a_no_op_the_projection_is_already_fused():
    model = tiny()
    x, t, y = inputs()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    processors = model.attn_processors
    with torch.no_grad():
        want = model(x, t, y).sample
    assert isinstance(model.blocks[0].mixer.attn.qkv, torch.nn.Linear)
    assert model.blocks[0].mixer.attn.qkv.out_features == 3 * TINY["hidden_size"]
    for call in (model.fuse_qkv_projections, model.unfuse_qkv_projections):
        call()
        assert model.attn_processors == processors
        assert model.state_dict().keys() == state.keys()
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        with torch.no_grad():
            torch.testing.assert_close(model(x, t, y).sample, want, rtol=0, atol=0)
