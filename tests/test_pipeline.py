"""FlashDiTPipeline: scheduler agreement, known-answer sampling, seeds, sizes, labels, save/load, errors."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_vae
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from test_flow import GaussianMixture

from flashdit import FlashDiTTransformer2DModel, flow
from flashdit.pipeline import FlashDiTPipeline
from flashdit.settings import SamplingSettings


def tiny_transformer(in_channels=1, num_classes=10, **kwargs):
    torch.manual_seed(0)
    model = FlashDiTTransformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=in_channels,
        hidden_size=32,
        depth=2,
        num_heads=2,
        num_classes=num_classes,
        **kwargs,
    )
    with torch.no_grad():  # leave adaLN-Zero so the velocity depends on everything
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def pixel_pipe(**kwargs):
    names = {i: f"class{i}, alias{i}" for i in range(10)}
    return FlashDiTPipeline(tiny_transformer(), FlowMatchEulerDiscreteScheduler(), id2label=names, **kwargs)


def latent_pipe(**kwargs):
    return FlashDiTPipeline(
        tiny_transformer(in_channels=4),
        FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(),
        id2label={i: f"c{i}" for i in range(10)},
        **kwargs,
    )


def assert_same_images(got, want):
    """The same weights loaded from disk sample the same images, up to the last bit: the loaded tensors can sit
    at another memory alignment (safetensors: 32 bytes against 64 in memory), and on some CPUs the kernels then
    round differently (seen: 6e-8 apart on one host, with every weight equal)."""
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_first_euler_step_equals_scheduler_step_on_the_same_velocity():
    pipe = pixel_pipe()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([3, 7])
    seen = {}

    def record(pipe_, i, t, kw):
        seen[i] = kw["latents"].clone()
        return {}

    pipe(
        y,
        num_inference_steps=4,
        timestep_shift=0.3,
        latents=x,
        output_type="latent",
        callback_on_step_end=record,
    )
    times = flow.time_grid(4, 0.3)
    sched = FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(sigmas=(1 - times[:-1]).tolist())
    v = pipe.transformer(x, torch.zeros(2), y).sample
    torch.testing.assert_close(seen[0], sched.step(-v, sched.timesteps[0], x).prev_sample)
    torch.testing.assert_close(seen[0], x + float(times[1]) * v)


class GMMVelocity(ModelMixin, ConfigMixin):
    """The exact conditional velocity of a 3-component Gaussian mixture on (B, 2, 1, 1) "images":
    label k is component k, the null label 3 the whole mixture."""

    @register_to_config
    def __init__(self, in_channels=2, num_classes=3, patch_size=1, sample_size=1):
        super().__init__()
        self.gmm = GaussianMixture()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, hidden_states, timestep, class_labels, return_dict=True):
        x = hidden_states.flatten(1)
        v = self.gmm.velocity(x, timestep).clone()
        cond = class_labels < 3
        if cond.any():
            v[cond] = self.gmm.velocity(x[cond], timestep[cond], class_labels[cond])
        return Transformer2DModelOutput(sample=v.view_as(hidden_states).float())


@pytest.mark.parametrize("sampler,steps", [("euler", 60), ("heun", 20)])
def test_pipeline_samples_each_class_of_a_known_mixture(sampler, steps):
    pipe = FlashDiTPipeline(GMMVelocity(), FlowMatchEulerDiscreteScheduler(), id2label={0: "a", 1: "b", 2: "c"})
    pipe.set_progress_bar_config(disable=True)
    labels = [0] * 3000 + [1] * 3000 + ["c"] * 3000
    out = (
        pipe(
            labels,
            num_inference_steps=steps,
            sampler=sampler,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        )
        .images.flatten(1)
        .double()
    )
    gmm = GaussianMixture()
    for k in range(3):
        samples = out[3000 * k : 3000 * (k + 1)]
        torch.testing.assert_close(samples.mean(0), gmm.mu[k], atol=0.05, rtol=0)
        torch.testing.assert_close(samples.std(0), gmm.s[k].expand(2), atol=0.04, rtol=0)


@pytest.mark.parametrize("sampler", ["euler", "sde"])
def test_image_depends_only_on_its_seed_and_label(sampler):
    pipe = pixel_pipe()
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=3, sampler=sampler, output_type="pt", guidance_scale=2.0)
    batch = pipe([1, 2, 3], generator=gens([10, 11, 12]), **kwargs).images
    alone = pipe([2], generator=gens([11]), **kwargs).images
    swapped = pipe([3, 1], generator=gens([12, 10]), **kwargs).images
    torch.testing.assert_close(alone[0], batch[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(swapped[0], batch[2], atol=1e-5, rtol=0)
    torch.testing.assert_close(swapped[1], batch[0], atol=1e-5, rtol=0)
    assert not torch.allclose(batch[0], batch[1])


def test_non_square_sizes_in_pixel_and_latent_space():
    pipe = pixel_pipe()
    assert pipe(1, num_inference_steps=1, height=8, width=12, output_type="pt").images.shape == (1, 1, 8, 12)
    assert pipe(1, num_inference_steps=1).images[0].size == (8, 8)  # default: the training size
    lat = latent_pipe()
    out = lat([0, 5], num_inference_steps=2, height=16, width=28, output_type="pt").images
    assert out.shape == (2, 3, 16, 28) and 0 <= out.min() and out.max() <= 1
    img = lat(0, num_inference_steps=1, height=24, width=16).images[0]
    assert img.size == (16, 24) and img.mode == "RGB"
    assert lat(0, num_inference_steps=1, height=16, width=20, output_type="latent").images.shape == (1, 4, 8, 10)


def test_latent_statistics_are_applied_on_decode():
    mean, std = [0.1, -0.2, 0.3, 0.0], [2.0, 0.5, 1.0, 1.5]
    pipe = latent_pipe(latents_mean=mean, latents_std=std)
    z = torch.randn(1, 4, 4, 4)
    expected = pipe.vae.decode(z * torch.tensor(std).view(1, 4, 1, 1) + torch.tensor(mean).view(1, 4, 1, 1)).sample
    torch.testing.assert_close(pipe.decode_latents(z), expected)
    scaled = latent_pipe(scaling_factor=0.18215)
    torch.testing.assert_close(scaled.decode_latents(z), scaled.vae.decode(z / 0.18215).sample)


def test_save_and_load_round_trip(tmp_path):
    pipe = latent_pipe(
        latents_mean=[0.0, 1.0, 2.0, 3.0],
        latents_std=[1.0, 2.0, 3.0, 4.0],
        sampling=dict(guidance_scale=3.0, num_inference_steps=2, timestep_shift=0.5),
    )
    pipe.save_pretrained(tmp_path)
    loaded = FlashDiTPipeline.from_pretrained(tmp_path)
    assert loaded.id2label == pipe.id2label and loaded.config.latents_std == [1.0, 2.0, 3.0, 4.0]
    assert loaded.config.sampling["guidance_scale"] == 3.0 and loaded.vae_scale_factor == 2
    a = pipe([1, 4], generator=gens([0, 1]), output_type="pt").images
    b = loaded([1, 4], generator=gens([0, 1]), output_type="pt").images
    assert torch.equal(a, b)
    pixel = pixel_pipe()
    pixel.save_pretrained(tmp_path / "pixel")
    assert FlashDiTPipeline.from_pretrained(tmp_path / "pixel").vae is None


def test_stored_defaults_apply_and_call_arguments_override():
    pipe = pixel_pipe(sampling=dict(num_inference_steps=3))
    calls = []
    pipe(1, callback_on_step_end=lambda p, i, t, kw: calls.append(i) or {})
    assert calls == [0, 1, 2]
    calls.clear()
    pipe(1, num_inference_steps=5, callback_on_step_end=lambda p, i, t, kw: calls.append(i) or {})
    assert len(calls) == 5
    assert SamplingSettings().guidance_scale == 1.0
    with pytest.raises(ValueError, match=r"unknown sampling setting key\(s\) \['cfg'\]"):
        pixel_pipe(sampling=dict(cfg=4.0))


def test_labels_in_dit_pipelines_shapes_give_the_same_images():
    """DiTPipeline takes [[1], [2]] and a (B, 1) tensor for [1, 2]; so does FlashDiTPipeline."""
    pipe = pixel_pipe(sampling=dict(num_inference_steps=2))
    want = pipe([1, 2], generator=gens([0, 1]), output_type="np").images
    for labels in ([[1], [2]], torch.tensor([[1], [2]]), torch.tensor([1, 2]), ([1], "class2")):
        np.testing.assert_array_equal(pipe(labels, generator=gens([0, 1]), output_type="np").images, want)
    with pytest.raises(ValueError):
        pipe([[1, 2]], output_type="np")  # two labels for one image is not a label


def test_class_names_and_imagenet_labels():
    pipe = pixel_pipe()
    assert pipe.get_label_ids("alias3") == [3]
    assert pipe.get_label_ids(["Class1", "class2 "]) == [1, 2]
    with pytest.raises(ValueError, match="unknown class name"):
        pipe.get_label_ids("dog")
    imagenet = FlashDiTPipeline(tiny_transformer(num_classes=1000), FlowMatchEulerDiscreteScheduler())
    assert imagenet.get_label_ids("golden retriever") == [207]
    assert imagenet.get_label_ids(["tench", "goldfish"]) == [0, 1]
    assert len(imagenet.id2label) == 1000
    # synonyms as in diffusers' DiT id2label (its pipeline example asks for "white shark")
    assert imagenet.get_label_ids(["white shark", "Carcharodon carcharias", "man-eater"]) == [2, 2, 2]
    # a name of two classes: the exact spelling decides, else an error naming both ids
    assert imagenet.get_label_ids(["Cardigan", "cardigan"]) == [264, 474]
    with pytest.raises(ValueError, match=r"'CARDIGAN' names 2 classes: 264 \(Cardigan.*; 474 \(cardigan\)"):
        imagenet.get_label_ids("CARDIGAN")
    with pytest.raises(ValueError, match=r"'crane' names 2 classes: 134 .*; 517 "):
        imagenet.get_label_ids("crane")
    assert imagenet.get_label_ids("crane bird") == [134]


@pytest.mark.parametrize(
    "call,match",
    [
        (dict(class_labels=[10]), r"not class ids in \[0, 10\)"),
        (dict(class_labels=[-1]), "not class ids"),
        (dict(class_labels=["dog"]), "unknown class name"),
        (dict(class_labels=[1], height=9), "height=9 must be a positive multiple of 2"),
        (dict(class_labels=[1], width=7), "width=7"),
        (dict(class_labels=[1, 2], generator=gens([0])), "one per image"),
        (dict(class_labels=[1], latents=torch.zeros(1, 1, 4, 4)), "latents must have shape"),
        (
            dict(class_labels=[1], sampler="dpm"),
            "sampler='dpm' must be 'euler', 'heun', 'dpm\\+\\+', 'unipc' or 'sde'",
        ),
        (dict(class_labels=[1], num_inference_steps=0), "num_inference_steps=0 must be greater than or equal to 1"),
        (dict(class_labels=[1], output_type="jpg"), "output_type"),
        (dict(class_labels=[]), "empty"),
    ],
)
def test_bad_input_is_a_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        pixel_pipe()(**{"num_inference_steps": 1, **call})


def test_bad_construction_is_a_value_error():
    with pytest.raises(ValueError, match="latents_mean has 2 values"):
        latent_pipe(latents_mean=[0, 0], latents_std=[1, 1])
    with pytest.raises(ValueError, match="together"):
        latent_pipe(latents_mean=[0, 0, 0, 0])
    with pytest.raises(ValueError, match="outside"):
        FlashDiTPipeline(tiny_transformer(), FlowMatchEulerDiscreteScheduler(), id2label={12: "x"})
    with pytest.raises(ValueError, match=r"its own shift=3.0, and timestep_shift=0.5 asks for shift=2"):
        FlashDiTPipeline(tiny_transformer(), FlowMatchEulerDiscreteScheduler(shift=3.0))(1, timestep_shift=0.5)


def test_bfloat16_pipeline_follows_the_float32_one():
    """A bf16 transformer (integration stays fp32) gives the fp32 images to bf16 precision, not just finite ones."""
    ref = pixel_pipe()([1, 2], num_inference_steps=4, generator=gens([0, 1]), output_type="np").images
    pipe = pixel_pipe().to(torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16
    out = pipe([1, 2], num_inference_steps=4, generator=gens([0, 1]), output_type="np").images
    assert out.shape == ref.shape == (2, 8, 8, 1) and out.dtype == np.float32
    diff = np.abs(out - ref)
    assert diff.max() < 0.05 and diff.mean() < 0.01
    other = pixel_pipe()([1, 2], num_inference_steps=4, generator=gens([5, 6]), output_type="np").images
    assert np.abs(other - ref).mean() > 10 * diff.mean()  # the tolerance is far tighter than a different sample


def test_cfg_channels_none_at_call_time_guides_all_channels_even_when_three_are_stored():
    pipe = latent_pipe(sampling=dict(guidance_scale=4.0, num_inference_steps=1, cfg_channels=3))
    run = lambda **kw: pipe([1], generator=gens([0]), output_type="latent", **kw).images  # noqa: E731
    stored, all_channels, explicit = run(), run(cfg_channels=None), run(cfg_channels=4)
    torch.testing.assert_close(all_channels, explicit)  # 4 channels: "all"
    assert not torch.allclose(stored[:, 3], all_channels[:, 3])  # the stored 3 left channel 3 unguided
    torch.testing.assert_close(stored[:, :3], all_channels[:, :3])


def test_num_images_per_prompt_repeats_each_label_with_its_own_seed():
    pipe = pixel_pipe(sampling=dict(num_inference_steps=2))
    out = pipe([3, 5], num_images_per_prompt=2, generator=gens([0, 1, 2, 3]), output_type="pt").images
    ref = pipe([3, 3, 5, 5], generator=gens([0, 1, 2, 3]), output_type="pt").images
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="num_images_per_prompt=0"):
        pipe([3], num_images_per_prompt=0)


def test_callback_protocol_guidance_scale_num_timesteps_and_interrupt():
    pipe = pixel_pipe(sampling=dict(num_inference_steps=4))
    seen = []

    def raise_guidance(p, i, t, kwargs):
        seen.append((i, t, p.guidance_scale, p.do_classifier_free_guidance))
        p._guidance_scale += 1.0
        return kwargs

    pipe([1], guidance_scale=2.0, callback_on_step_end=raise_guidance, generator=gens([0]), output_type="pt")
    assert pipe.num_timesteps == 4 and pipe.guidance_scale == 2.0 + pipe.num_timesteps
    assert [s[0] for s in seen] == [0, 1, 2, 3] and [s[2] for s in seen] == [2.0, 3.0, 4.0, 5.0]
    assert [round(s[1], 4) for s in seen] == [0.0, 0.25, 0.5, 0.75]  # t: flow time at the step's start
    calls = []

    def stop_after_two(p, i, t, kwargs):
        calls.append(i)
        p._interrupt = i == 1
        return kwargs

    stopped = pipe([1], callback_on_step_end=stop_after_two, generator=gens([0]), output_type="latent").images
    assert calls == [0, 1]
    two_steps = pixel_pipe(sampling=dict(num_inference_steps=4))
    two_steps.transformer.load_state_dict(pipe.transformer.state_dict())
    x = [None]

    def keep(p, i, t, kwargs):
        if i == 1:
            x[0] = kwargs["latents"].clone()
        return kwargs

    two_steps([1], callback_on_step_end=keep, generator=gens([0]), output_type="latent")
    torch.testing.assert_close(stopped, x[0])


def test_stored_official_settings_reproduce_the_official_grid_point_sampler():
    """The converters' settings against the official loop written out: ``N = 250`` grid points
    ``linspace(0, 1, N)``, shifted by ``s·t / (1 + (s - 1)·t)``, N - 1 Euler steps, guidance (first three
    channels only) while t >= the interval's start."""
    from flashdit.convert import AUTHORS_SAMPLING

    settings = AUTHORS_SAMPLING["lightningdit-800"]
    pipe = FlashDiTPipeline(tiny_transformer(in_channels=4), FlowMatchEulerDiscreteScheduler(), sampling=settings)
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([3, 7])
    ours = pipe(y, latents=x0, output_type="latent").images

    s, scale, start = 0.3, 6.7, 0.125
    grid = torch.linspace(0, 1, 250, dtype=torch.float64)
    grid = (s * grid / (1 + (s - 1) * grid)).tolist()
    x = x0.clone()
    for t, t_next in zip(grid[:-1], grid[1:]):
        tt = torch.full((2,), t, dtype=torch.float32)
        with torch.no_grad():
            v_c = pipe.transformer(x, tt, y).sample
            v_u = pipe.transformer(x, tt, torch.full_like(y, 10)).sample
        v = v_c.clone()
        if t >= start:
            v[:, :3] = v_u[:, :3] + scale * (v_c[:, :3] - v_u[:, :3])
        x = x + (t_next - t) * v
    assert pipe.num_timesteps == 249
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


def test_saved_pipeline_loads_through_plain_diffusers_with_trust_remote_code(tmp_path):
    from diffusers import DiffusionPipeline

    from flashdit.pipeline import REMOTE_CODE_MODULE

    pipe = pixel_pipe(sampling=dict(num_inference_steps=2))
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["_class_name"] == [REMOTE_CODE_MODULE, "FlashDiTPipeline"]
    want = pipe([3], generator=gens([0]), output_type="np").images

    loaded = DiffusionPipeline.from_pretrained(tmp_path / "p", trust_remote_code=True)
    assert type(loaded) is FlashDiTPipeline
    assert_same_images(loaded([3], generator=gens([0]), output_type="np").images, want)
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # diffusers' own consent rule stands
        DiffusionPipeline.from_pretrained(tmp_path / "p")
    # the package's own class needs no consent for the module it wrote itself ...
    assert_same_images(
        FlashDiTPipeline.from_pretrained(tmp_path / "p")([3], generator=gens([0]), output_type="np").images, want
    )
    # ... but any other code in that module does
    module = tmp_path / "p" / f"{REMOTE_CODE_MODULE}.py"
    module.write_text(module.read_text() + "\nprint('something else')\n")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        FlashDiTPipeline.from_pretrained(tmp_path / "p")


def test_loading_waits_while_another_process_copies_the_custom_pipeline_module(tmp_path):
    """Loading copies the custom-code module into diffusers' modules cache and imports it; ranks of one launch
    that did so at once could import another's half-written copy. ``from_pretrained`` must wait for the
    inter-process lock on that cache: a process holding it (as a loading rank does) finishes first."""
    import subprocess
    import sys

    from flashdit.pipeline import _modules_cache_lock

    pixel_pipe().save_pretrained(tmp_path / "p")
    released = tmp_path / "released"
    holder = (
        "import sys, time; from filelock import FileLock\n"
        "with FileLock(sys.argv[1]):\n"
        "    print('held', flush=True); time.sleep(1.5); open(sys.argv[2], 'w').close()\n"
    )
    lock_file = _modules_cache_lock().lock_file
    args = [sys.executable, "-c", holder, lock_file, str(released)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert not released.exists()
        FlashDiTPipeline.from_pretrained(tmp_path / "p")
        assert released.exists(), "from_pretrained ran while another process held the modules-cache lock"
    finally:
        proc.wait(timeout=30)


def test_pipelines_saved_before_the_custom_pipeline_module_still_load(tmp_path):
    pipe = pixel_pipe(sampling=dict(num_inference_steps=2))
    pipe.save_pretrained(tmp_path / "old")
    (tmp_path / "old" / "pipeline_flashdit.py").unlink()
    index = json.loads((tmp_path / "old" / "model_index.json").read_text())
    index["_class_name"] = "FlashDiTPipeline"  # the earlier layout
    (tmp_path / "old" / "model_index.json").write_text(json.dumps(index))
    loaded = FlashDiTPipeline.from_pretrained(tmp_path / "old")
    assert_same_images(
        loaded([3], generator=gens([0]), output_type="np").images,
        pipe([3], generator=gens([0]), output_type="np").images,
    )
