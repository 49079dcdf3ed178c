"""diffusers' common pipeline checks (``PipelineTesterMixin`` in diffusers' test suite, as its DiT pipeline
tests run them), adapted to this pipeline's inputs: class labels, a latent pipeline with a tiny VAE, and a
pixel pipeline without one (the optional component). Accelerator-only checks (fp16 kernels, CPU offload,
device maps, xformers) are skipped without a GPU, as in diffusers."""

import inspect

import numpy as np
import pytest
import torch
from test_pipeline import gens, latent_pipe, pixel_pipe

from flashdit.pipeline import FlashDiTPipeline


def inputs(seed=0, **kwargs):
    """diffusers' DiT dummy inputs: one class label, two steps, numpy output."""
    return {
        "class_labels": [1],
        "generator": torch.Generator().manual_seed(seed),
        "num_inference_steps": 2,
        "output_type": "np",
        **kwargs,
    }


@pytest.fixture
def pipe():
    return latent_pipe(sampling=dict(guidance_scale=2.0))


def test_call_signature_has_the_diffusers_parameters(pipe):
    params = set(inspect.signature(pipe.__call__).parameters)
    assert {
        "class_labels",
        "guidance_scale",
        "num_inference_steps",
        "generator",
        "latents",
        "height",
        "width",
        "num_images_per_prompt",
        "output_type",
        "return_dict",
        "callback_on_step_end",
        "callback_on_step_end_tensor_inputs",
    } <= params


def test_components_function(pipe):
    assert set(pipe.components) == {"transformer", "scheduler", "vae"}
    assert all(pipe.components[k] is getattr(pipe, k) for k in pipe.components)
    rebuilt = FlashDiTPipeline(**pipe.components, sampling=dict(guidance_scale=2.0))
    np.testing.assert_array_equal(rebuilt(**inputs()).images, pipe(**inputs()).images)


def test_save_load_local(pipe, tmp_path):
    out = pipe(**inputs()).images
    pipe.save_pretrained(tmp_path)
    loaded = FlashDiTPipeline.from_pretrained(tmp_path)
    assert np.abs(loaded(**inputs()).images - out).max() < 5e-4


def test_save_load_optional_components(tmp_path):
    pipe = pixel_pipe()
    assert pipe.vae is None and "vae" in pipe._optional_components
    out = pipe(**inputs()).images
    pipe.save_pretrained(tmp_path)
    loaded = FlashDiTPipeline.from_pretrained(tmp_path)
    assert loaded.vae is None
    assert np.abs(loaded(**inputs()).images - out).max() < 1e-4


def test_inference_batch_consistent(pipe):
    for batch in (1, 2, 3):
        images = pipe(**inputs(class_labels=list(range(batch)), generator=gens(range(batch)))).images
        assert len(images) == batch


def test_inference_batch_single_identical(pipe):
    batch = pipe(**inputs(class_labels=[1, 2, 3], generator=gens([0, 1, 2]))).images
    single = [pipe(**inputs(class_labels=[c], generator=gens([s]))).images[0] for c, s in zip([1, 2, 3], [0, 1, 2])]
    assert np.abs(batch - np.stack(single)).max() < 1e-4


def test_dict_tuple_outputs_equivalent(pipe):
    as_dict = pipe(**inputs()).images
    (as_tuple,) = pipe(**inputs(), return_dict=False)
    assert np.abs(as_dict - as_tuple).max() < 1e-4


@pytest.mark.parametrize("labels", [1, 2])
@pytest.mark.parametrize("per_prompt", [1, 2])
def test_num_images_per_prompt(pipe, labels, per_prompt):
    images = pipe(**inputs(class_labels=list(range(labels)), generator=None), num_images_per_prompt=per_prompt).images
    assert len(images) == labels * per_prompt


def test_cfg(pipe):
    plain = pipe(**inputs(), guidance_scale=1.0).images
    guided = pipe(**inputs(), guidance_scale=7.0).images
    assert plain.shape == guided.shape and np.abs(plain - guided).max() > 1e-4


def test_callback_inputs(pipe):
    assert pipe._callback_tensor_inputs == ["latents"]

    def only_requested(p, i, t, kwargs):
        assert set(kwargs) == {"latents"}
        return kwargs

    pipe(**inputs(), callback_on_step_end=only_requested, callback_on_step_end_tensor_inputs=["latents"])
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe(**inputs(), callback_on_step_end=only_requested, callback_on_step_end_tensor_inputs=["prompt_embeds"])

    def zero_at_the_last_step(p, i, t, kwargs):
        if i == p.num_timesteps - 1:
            kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    out = pipe(**inputs(output_type="latent"), callback_on_step_end=zero_at_the_last_step).images
    assert out.abs().sum() == 0  # the returned tensor replaces the latents


def test_callback_cfg(pipe):
    def raise_scale(p, i, t, kwargs):
        p._guidance_scale += 1.0
        return kwargs

    pipe(**inputs(), guidance_scale=2.0, callback_on_step_end=raise_scale)
    assert pipe.do_classifier_free_guidance and pipe.guidance_scale == 2.0 + pipe.num_timesteps


def test_to_device_and_dtype(pipe):
    pipe.to("cpu")
    assert {m.device.type for m in (pipe.transformer, pipe.vae)} == {"cpu"}
    pipe.to(dtype=torch.bfloat16)
    assert pipe.transformer.dtype == pipe.vae.dtype == torch.bfloat16


def test_attention_slicing_changes_nothing(pipe):
    out = pipe(**inputs()).images
    pipe.enable_attention_slicing(slice_size=1)
    assert np.abs(pipe(**inputs()).images - out).max() < 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_save_load_in_a_dtype(pipe, tmp_path, dtype):
    pipe.to(dtype=dtype).save_pretrained(tmp_path)
    loaded = FlashDiTPipeline.from_pretrained(tmp_path, torch_dtype=dtype)
    assert loaded.transformer.dtype == loaded.vae.dtype == dtype
    for a, b in zip(pipe.transformer.state_dict().values(), loaded.transformer.state_dict().values()):
        assert torch.equal(a, b)


def test_dtype_dict_and_alias(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    mixed = FlashDiTPipeline.from_pretrained(
        tmp_path, torch_dtype={"transformer": torch.bfloat16, "default": torch.float32}
    )
    assert mixed.transformer.dtype == torch.bfloat16 and mixed.vae.dtype == torch.float32
    alias = FlashDiTPipeline.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert alias.transformer.dtype == torch.bfloat16


def test_serialization_and_loading_with_variants(pipe, tmp_path):
    pipe.save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    loaded = FlashDiTPipeline.from_pretrained(tmp_path, variant="fp16")
    np.testing.assert_array_equal(loaded(**inputs()).images, pipe(**inputs()).images)
    with pytest.raises(ValueError, match="variant"):
        FlashDiTPipeline.from_pretrained(tmp_path, variant="foo")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="accelerator-only, as in diffusers")
def test_float16_inference_on_the_accelerator(pipe):
    pipe.to("cuda")
    full = pipe(**inputs()).images
    half = pipe.to(dtype=torch.float16)(**inputs()).images
    assert np.abs(full - half).max() < 5e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="accelerator-only, as in diffusers")
def test_model_cpu_offload(pipe):
    out = pipe.to("cuda")(**inputs()).images
    pipe.to("cpu")
    pipe.enable_model_cpu_offload()
    assert np.abs(pipe(**inputs()).images - out).max() < 2e-4
