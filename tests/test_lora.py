"""LoRA fine-tuning (train.init_from + train.lora, PEFT through diffusers' PeftAdapterMixin) on a tiny model:
the held-out loss falls, only adapter weights change, and the saved adapter reloads to the same outputs."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_pipeline import gens
from test_training import cfg_args, run_train

from flashdit import FlashDiTPipeline
from flashdit.data import load_idx_split, pad_and_scale
from flashdit.errors import UserError
from flashdit.evaluation import held_out_flow_loss

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, idx_dir):
    root = tmp_path_factory.mktemp("lora")
    fast = ["train.lr=1e-2", "train.warmup_steps=0", "train.lr_schedule=constant"]
    # a base past adaLN-Zero's closed gates (a fresh model passes no gradient to the mixer or MLP)
    run_train(*cfg_args(root / "base", idx_dir, "train.max_steps=20", *fast))
    fine_tune = [
        f"train.init_from={root / 'base' / 'pipeline'}",
        "train.lora.rank=4",
        "train.lora.targets=[attention, mlp]",
        *fast,
        "train.ema_decay=0.0",  # the EMA is the trained model: the adapter checks compare like with like
        "train.max_steps=30",
        "train.checkpoint_every=30",
    ]
    run_train(*cfg_args(root / "ft", idx_dir, *fine_tune))
    return root


def test_lora_fine_tune_lowers_the_held_out_loss(runs, idx_dir):
    images, labels = load_idx_split(idx_dir, "test")
    x1, y = pad_and_scale(images, 32), torch.from_numpy(labels).long()

    def loss(pipeline):
        model = FlashDiTPipeline.from_pretrained(pipeline).transformer.eval()
        per_t = held_out_flow_loss(model, x1, y, times=(0.25, 0.5, 0.75), seed=0)
        return np.mean([v["mse"] for v in per_t.values()])

    before, after = loss(runs / "base" / "pipeline"), loss(runs / "ft" / "pipeline")
    assert after < 0.8 * before, (before, after)


def test_only_adapter_weights_change(runs):
    base = FlashDiTPipeline.from_pretrained(runs / "base" / "pipeline").transformer.state_dict()
    tuned = load_file(runs / "ft" / "checkpoints" / "step_0000030" / "model.safetensors")
    lora = {k: v for k, v in tuned.items() if "lora_" in k}
    frozen = {k.replace(".base_layer", ""): v for k, v in tuned.items() if "lora_" not in k}
    assert set(frozen) == set(base)
    assert all(torch.equal(frozen[k], base[k]) for k in base)
    targets = {k.split(".lora_")[0] for k in lora}
    assert {t.split("blocks.0.")[-1] for t in targets if t.startswith("blocks.0.")} == {
        "mixer.attn.qkv",
        "mixer.attn.proj",
        "mlp.w12",
        "mlp.w3",
    }
    assert all(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at zero: it trained


def test_saved_adapter_reloads_to_the_fine_tuned_outputs(runs):
    adapter = load_file(runs / "ft" / "lora" / "pytorch_lora_weights.safetensors")
    ema = load_file(runs / "ft" / "checkpoints" / "step_0000030" / "ema.safetensors")
    assert adapter and all(k.startswith("transformer.") for k in adapter)  # diffusers' pipeline format
    own = {k.removeprefix("transformer.").replace(".weight", ".default.weight"): v for k, v in adapter.items()}
    assert all(torch.equal(v, ema[k]) for k, v in own.items())

    pipe = FlashDiTPipeline.from_pretrained(runs / "base" / "pipeline")
    untouched = pipe([1, 2], generator=gens([0, 1]), output_type="np").images
    pipe.load_lora_weights(runs / "ft" / "lora")
    with_adapter = pipe([1, 2], generator=gens([0, 1]), output_type="np").images
    merged = FlashDiTPipeline.from_pretrained(runs / "ft" / "pipeline")(
        [1, 2], generator=gens([0, 1]), output_type="np"
    )
    np.testing.assert_allclose(with_adapter, merged.images, atol=1e-5)
    assert np.abs(with_adapter - untouched).max() > 1e-3


def test_lora_on_the_depthwise_conv_is_refused_with_the_reason(tmp_path, idx_dir, runs):
    base = f"train.init_from={runs / 'base' / 'pipeline'}"
    with pytest.raises(ValueError, match="cannot include 'conv': PEFT adapts a depthwise convolution"):
        run_train(*cfg_args(tmp_path / "c", idx_dir, base, "train.lora.rank=4", "train.lora.targets=[conv]"))
    with pytest.raises(ValueError, match="fine-tuning keeps the base model's channels and classes"):
        from flashdit.training import load_base_model

        load_base_model(str(runs / "base" / "pipeline"), dict(channels=3, size=32, num_classes=10))


def test_pipeline_lora_methods_behave_as_in_diffusers(runs, tmp_path):
    """set_adapters, fuse/unfuse, disable/enable, unload and save on the pipeline, each against the plain base and
    the merged fine-tune; a file in the transformer's own format (no ``transformer.`` prefix) loads too."""
    pipe = FlashDiTPipeline.from_pretrained(runs / "base" / "pipeline")

    def images():
        return pipe([1, 2], generator=gens([0, 1]), output_type="np").images

    base = images()
    merged = FlashDiTPipeline.from_pretrained(runs / "ft" / "pipeline")(
        [1, 2], generator=gens([0, 1]), output_type="np"
    )
    pipe.load_lora_weights(runs / "ft" / "lora", adapter_name="ft")
    tuned = images()
    np.testing.assert_allclose(tuned, merged.images, atol=1e-5)
    pipe.set_adapters(["ft"], [0.0])
    np.testing.assert_allclose(images(), base, atol=1e-6)
    pipe.set_adapters(["ft"], [1.0])
    pipe.disable_lora()
    np.testing.assert_allclose(images(), base, atol=1e-6)
    pipe.enable_lora()
    np.testing.assert_allclose(images(), tuned, atol=1e-6)
    pipe.fuse_lora()
    np.testing.assert_allclose(images(), tuned, atol=1e-5)
    pipe.unfuse_lora()
    np.testing.assert_allclose(images(), tuned, atol=1e-5)

    out = tmp_path / "saved"
    from peft.utils import get_peft_model_state_dict

    layers = get_peft_model_state_dict(pipe.transformer, adapter_name="ft")
    FlashDiTPipeline.save_lora_weights(out, transformer_lora_layers=layers)
    saved = load_file(out / "pytorch_lora_weights.safetensors")
    assert saved and all(k.startswith("transformer.") for k in saved)
    pipe.unload_lora_weights()
    np.testing.assert_allclose(images(), base, atol=1e-6)
    assert not any("lora" in k for k in pipe.transformer.state_dict())

    pipe.load_lora_weights(out, adapter_name="again")
    np.testing.assert_allclose(images(), tuned, atol=1e-5)
    pipe.unload_lora_weights()
    own = tmp_path / "own" / "pytorch_lora_weights.safetensors"
    own.parent.mkdir()
    from safetensors.torch import save_file

    save_file({k.removeprefix("transformer."): v.contiguous() for k, v in saved.items()}, own)
    pipe.load_lora_weights(own.parent, adapter_name="own")
    np.testing.assert_allclose(images(), tuned, atol=1e-5)


def test_a_state_dict_that_is_not_lora_is_refused(runs):
    pipe = FlashDiTPipeline.from_pretrained(runs / "base" / "pipeline")
    weights = {"transformer.blocks.0.mlp.w3.weight": torch.zeros(2, 2)}
    with pytest.raises(UserError, match="not a LoRA state dict"):
        pipe.load_lora_weights(weights)


def test_diffusers_lora_script_targets_adapt_the_attention_projections():
    """``target_modules=["to_k", "to_q", "to_v", "to_out.0"]`` (diffusers' LoRA training scripts) adapts the fused
    qkv and the output projection of every block, and nothing else (not the patch embedding's ``proj``)."""
    from peft import LoraConfig

    from flashdit.models.transformer import FlashDiTTransformer2DModel

    model = FlashDiTTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2
    )
    model.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    adapted = sorted({n.split(".lora_")[0] for n, _ in model.named_parameters() if ".lora_" in n})
    assert adapted == [f"blocks.{i}.mixer.attn.{m}" for i in range(2) for m in ("proj", "qkv")]
    own = FlashDiTTransformer2DModel(sample_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2)
    own.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["w3"]))  # the model's own names pass unchanged
    assert sorted({n.split(".lora_")[0] for n, _ in own.named_parameters() if ".lora_" in n}) == [
        "blocks.0.mlp.w3",
        "blocks.1.mlp.w3",
    ]
