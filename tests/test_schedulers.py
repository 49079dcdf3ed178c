"""The scheduler is the sampler: diffusers' flow-matching schedulers driven by FlashDiTPipeline
(flashdit/schedulers.py)."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from test_pipeline import gens, pixel_pipe

from flashdit import flow, schedulers
from flashdit.errors import UserError
from flashdit.pipeline import FlashDiTPipeline

SWAPS = {
    "euler": FlowMatchEulerDiscreteScheduler,
    "heun": FlowMatchHeunDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
}


class GaussianVelocity(ModelMixin, ConfigMixin):
    """The exact velocity of the linear path from N(0, 1) noise to N(mu, s^2) data, per pixel: trajectories are
    curved (s != 1), and ``x_t = t·mu + sigma_t·z`` with ``sigma_t = sqrt((1 - t)^2 + t^2 s^2)`` solves the ODE, so
    ``x_1 = mu + s·(x_t0 - t0·mu) / sigma_t0`` is the exact end of a trajectory started at ``x_t0``."""

    @register_to_config
    def __init__(self, in_channels=2, num_classes=3, patch_size=1, sample_size=2, mu=0.7, s=0.3):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def sigma(self, t):
        s = self.config.s
        return ((1 - t) ** 2 + t**2 * s**2).sqrt(), (-(1 - t) + t * s**2) / ((1 - t) ** 2 + t**2 * s**2).sqrt()

    def forward(self, hidden_states, timestep, class_labels, return_dict=True):
        self.calls += 1
        t = timestep.double().view(-1, 1, 1, 1)
        sig, dsig = self.sigma(t)
        x, mu = hidden_states.double(), self.config.mu
        return Transformer2DModelOutput(sample=(mu + dsig / sig * (x - t * mu)).float())

    def exact_end(self, x, t0: float):
        sig, _ = self.sigma(torch.tensor(t0, dtype=torch.float64))
        return self.config.mu + self.config.s * (x.double() - t0 * self.config.mu) / sig


def gaussian_pipe(scheduler=None):
    pipe = FlashDiTPipeline(GaussianVelocity(), scheduler or FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def swapped(pipe, name):
    """diffusers' one-line swap, exactly as a user writes it."""
    pipe.scheduler = SWAPS[name].from_config(pipe.scheduler.config)
    return pipe


@pytest.mark.parametrize("name", list(SWAPS))
def test_the_one_line_swap_samples_with_that_scheduler(name):
    pipe = swapped(pixel_pipe(sampling=dict(num_inference_steps=4, guidance_scale=2.0)), name)
    assert schedulers.sampler_name(pipe.scheduler) == name
    out = pipe([1, 2], generator=gens([0, 1]), output_type="np").images
    assert out.shape == (2, 8, 8, 1) and np.isfinite(out).all()
    assert pipe.num_timesteps == len(pipe.scheduler.timesteps) == (7 if name == "heun" else 4)  # Heun: 2N - 1
    assert pipe.num_model_evaluations == 2 * pipe.num_timesteps  # guided everywhere: two halves each


@pytest.mark.parametrize("name", list(SWAPS))
def test_each_image_depends_only_on_its_seed_whatever_the_batch(name):
    pipe = swapped(pixel_pipe(sampling=dict(num_inference_steps=5, guidance_scale=2.0)), name)
    batch = pipe([1, 2, 3], generator=gens([10, 11, 12]), output_type="pt").images
    alone = pipe([3], generator=gens([12]), output_type="pt").images
    torch.testing.assert_close(alone[0], batch[2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(SWAPS))
def test_a_swapped_scheduler_survives_save_and_load_and_becomes_the_stored_sampler(name, tmp_path):
    pipe = swapped(pixel_pipe(sampling=dict(num_inference_steps=4, sampler="euler")), name)
    want = pipe([3], generator=gens([0]), output_type="pt").images
    pipe.save_pretrained(tmp_path)
    loaded = FlashDiTPipeline.from_pretrained(tmp_path)
    assert type(loaded.scheduler) is SWAPS[name] and loaded.config.sampling["sampler"] == name
    assert {k: v for k, v in loaded.scheduler.config.items() if not k.startswith("_")} == {
        k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")
    }
    torch.testing.assert_close(loaded([3], generator=gens([0]), output_type="pt").images, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "name, order",
    [("euler", 1.0), ("heun", 2.0), ("dpm++", 2.0), ("unipc", 2.0)],
)
def test_each_scheduler_is_its_own_step_and_converges_at_its_order(name, order):
    """On a known velocity field the pipeline's result is the scheduler's own ``step`` loop, and its error against
    the exact end of each trajectory falls by 2^order when the steps double."""
    x = torch.randn(64, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    errors = []
    for n in (10, 20):
        pipe = gaussian_pipe(schedulers.scheduler_for(name, FlowMatchEulerDiscreteScheduler().config))
        out = pipe([0] * 64, latents=x, num_inference_steps=n, output_type="latent").images
        # the scheduler's own loop, written out, on the same field (diffusers' flow output: noise - data = -v)
        scheduler = schedulers.scheduler_for(name, FlowMatchEulerDiscreteScheduler().config)
        times = schedulers.set_timesteps(scheduler, n, 1.0, "cpu")
        model, y, own = GaussianVelocity(), torch.zeros(64, dtype=torch.long), x.clone()
        for timestep, t in zip(scheduler.timesteps, times):
            v = model(own, torch.full((64,), t), y).sample
            own = scheduler.step(-v, timestep, own, return_dict=False)[0]
        torch.testing.assert_close(out, own, atol=1e-6, rtol=0)
        errors.append((out.double() - model.exact_end(x, times[0])).abs().max().item())
    observed = math.log2(errors[0] / errors[1])
    assert observed > order - 0.3, (name, errors, observed)


def test_euler_through_the_scheduler_is_the_flow_modules_euler():
    pipe = gaussian_pipe()
    x = torch.randn(8, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    got = pipe([0] * 8, latents=x, num_inference_steps=7, timestep_shift=0.4, output_type="latent").images
    model = GaussianVelocity()
    want = flow.sample(lambda z, t: model(z, t, torch.zeros(8, dtype=torch.long)).sample, x, flow.time_grid(7, 0.4))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_guidance_interval_and_shift_keep_their_meaning_across_schedulers():
    for name in SWAPS:
        pipe = swapped(gaussian_pipe(), name)
        pipe.transformer.calls = 0
        pipe([0], num_inference_steps=8, guidance_scale=3.0, guidance_interval=(0.1, 0.8), timestep_shift=0.5)
        times = schedulers.set_timesteps(pipe.scheduler, 8, 0.5, "cpu")
        guided = [t for t in times if 0.1 <= t <= 0.8]
        assert pipe.num_model_evaluations == len(times) + len(guided)  # a guided evaluation counts twice
        assert pipe.transformer.calls == len(times)  # one batched call each: the two halves share it
        assert 0 < len(guided) < len(times)
    # the pipeline's timestep_shift is diffusers' shift 1/s: the same grid either way, and FlashDiT's own
    for cls in (FlowMatchEulerDiscreteScheduler, DPMSolverMultistepScheduler):
        key, flow_kw = (
            ("shift", {}) if cls is FlowMatchEulerDiscreteScheduler else ("flow_shift", schedulers.FLOW_CONFIG)
        )
        a = schedulers.set_timesteps(cls(**flow_kw), 6, 0.5, "cpu")
        b = schedulers.set_timesteps(cls(**{key: 2.0}, **flow_kw), 6, 1.0, "cpu")
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_schedulers_that_do_not_integrate_a_flow_or_disagree_on_the_shift_are_refused():
    pipe = pixel_pipe(sampling=dict(num_inference_steps=2))
    pipe.scheduler = DDPMScheduler()
    with pytest.raises(ValueError, match="DDPMScheduler, which does not integrate a flow; use FlowMatchEuler"):
        pipe([1])
    pipe.scheduler = UniPCMultistepScheduler()  # noise prediction, as diffusers builds it by default
    with pytest.raises(ValueError, match="prediction_type='epsilon'.*from_config\\(pipe.scheduler.config"):
        pipe([1])
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    with pytest.raises(ValueError, match=r"own shift=3.0, and timestep_shift=0.5 asks for shift=2 .*: set one"):
        pipe([1], timestep_shift=0.5)
    pipe([1], timestep_shift=1 / 3.0)  # the same shift twice is one shift
    pipe([1])  # the scheduler's own shift alone


def test_the_stored_sampler_and_the_call_argument_choose_the_scheduler_and_sde_stays_flashdits_own():
    pipe = pixel_pipe(sampling=dict(num_inference_steps=3, sampler="unipc"))
    assert isinstance(pipe.resolve_sampler()[1], UniPCMultistepScheduler)  # made from pipe.scheduler's config
    assert isinstance(pipe.resolve_sampler("heun")[1], FlowMatchHeunDiscreteScheduler)
    assert pipe.resolve_sampler("sde") == ("sde", None)
    out = pipe([1], sampler="sde", generator=gens([0]), output_type="np").images
    assert np.isfinite(out).all() and pipe.num_timesteps == 3
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)  # a call never replaces pipe.scheduler


def test_an_exported_pipeline_carries_the_recipes_sampler_as_its_scheduler():
    from test_pipeline import tiny_transformer

    from flashdit.config import load_config
    from flashdit.training import make_pipeline

    info = dict(class_names=[str(i) for i in range(10)])
    for sampler, cls in SWAPS.items():
        pipe = make_pipeline(tiny_transformer(), info, load_config(None, [f"sample.sampler={sampler}"]))
        assert type(pipe.scheduler) is cls and schedulers.sampler_name(pipe.scheduler) == sampler
        assert pipe.config.sampling["sampler"] == sampler
    sde = make_pipeline(tiny_transformer(), info, load_config(None, ["sample.sampler=sde"]))
    assert sde.resolve_sampler() == ("sde", None)


def test_the_quickstart_exports_its_few_step_default_and_samples_it_in_ten_evaluations(tmp_path):
    """configs/fashion_mnist.yaml stores UniPC at 6 steps and shift 1.0 (docs/few_step.md): the exported pipeline's
    scheduler is UniPC with flow settings, it survives a save and load, and a call costs 10 evaluations per image,
    as the ladder counted them."""
    from test_pipeline import tiny_transformer

    from flashdit.config import load_config
    from flashdit.training import make_pipeline

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "fashion_mnist.yaml")
    pipe = make_pipeline(tiny_transformer(), dict(class_names=[str(i) for i in range(10)]), cfg)
    pipe.save_pretrained(tmp_path / "p")
    pipe = FlashDiTPipeline.from_pretrained(tmp_path / "p")
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler) is UniPCMultistepScheduler and schedulers.sampler_name(pipe.scheduler) == "unipc"
    sampling = pipe.config.sampling
    assert (sampling["num_inference_steps"], sampling["timestep_shift"], sampling["guidance_scale"]) == (6, 1.0, 2.5)
    pipe([1, 2], generator=gens([0, 1]), output_type="latent")
    assert pipe.num_timesteps == 6 and pipe.num_model_evaluations == 10


def test_sigmas_and_timesteps_are_a_grid_of_the_calls_own():
    """diffusers' ``sigmas`` / ``timesteps`` call arguments: the shifted grid given as sigmas is the shifted call;
    timesteps are the same sigmas times 1000; UniPC and the SDE sampler take the grid too."""
    x = torch.randn(4, 2, 2, 2, generator=torch.Generator().manual_seed(2))
    grid = 1 - flow.time_grid(7, 0.4)[:-1].double()
    pipe = gaussian_pipe()
    want = pipe([0] * 4, latents=x, num_inference_steps=7, timestep_shift=0.4, output_type="latent").images
    by_sigmas = pipe([0] * 4, latents=x, sigmas=grid.tolist(), output_type="latent").images
    by_timesteps = pipe([0] * 4, latents=x, timesteps=(1000 * grid).tolist(), output_type="latent").images
    torch.testing.assert_close(by_sigmas, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(by_timesteps, want, atol=1e-5, rtol=1e-5)
    assert pipe.num_timesteps == 7

    unipc = swapped(gaussian_pipe(), "unipc")
    own = unipc([0] * 4, latents=x, num_inference_steps=6, timestep_shift=1.0, output_type="latent").images
    linear = np.linspace(1, 1 / 1000, 7)[:-1].tolist()  # UniPC's own flow grid at shift 1
    custom = unipc([0] * 4, latents=x, sigmas=linear, output_type="latent").images
    torch.testing.assert_close(custom, own, atol=1e-6, rtol=1e-6)

    sde = gaussian_pipe()
    kwargs = dict(latents=x, sampler="sde", output_type="latent")
    a = sde([0] * 4, generator=gens([0, 1, 2, 3]), num_inference_steps=5, timestep_shift=0.5, **kwargs).images
    sigmas = (1 - flow.time_grid(5, 0.5)[:-1]).tolist()
    b = sde([0] * 4, generator=gens([0, 1, 2, 3]), sigmas=sigmas, **kwargs).images
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sigmas=[1.0, 0.5], timesteps=[1000, 500]), "pass sigmas or timesteps, not both"),
        (dict(sigmas=[0.5, 0.7]), "strictly decreasing"),
        (dict(sigmas=[1.5, 0.5]), r"in \(0, 1\]"),
        (dict(timesteps=[1000, 0]), r"every value / 1000 in \(0, 1\]"),
        (dict(sigmas=[]), "non-empty"),
        (dict(sigmas=[1.0, 0.5], timestep_shift=0.5), "timestep_shift applies to the pipeline's own grid"),
        (dict(sigmas=[1.0, 0.5], sampler="heun"), "FlowMatchHeunDiscreteScheduler builds its own"),
        (dict(sigmas=[1.0, 0.5], sampler="dpm++"), "DPMSolverMultistepScheduler builds its own"),
    ],
)
def test_bad_grids_are_refused_before_sampling(kwargs, match):
    pipe = gaussian_pipe()
    with pytest.raises(UserError, match=match):
        pipe([0], output_type="latent", **kwargs)
    assert pipe.transformer.calls == 0


@pytest.mark.parametrize("name", list(SWAPS))
def test_the_few_step_ladder_counts_the_evaluations_each_sampler_makes(name):
    # scripts/few_step.py picks the most steps whose evaluations per image fit a budget; count the rows the
    # transformer actually sees per image with the guidance interval cutting some of the guided halves
    from scripts.few_step import steps_for

    pipe = pixel_pipe(sampling=dict(guidance_scale=2.0, guidance_interval=[0.1, 0.8], timestep_shift=0.5))
    pipe.set_progress_bar_config(disable=True)
    forward = pipe.transformer.forward
    rows = []

    def counting(hidden_states, *args, **kwargs):
        rows.append(hidden_states.shape[0])
        return forward(hidden_states, *args, **kwargs)

    pipe.transformer.forward = counting
    for budget in (4, 6, 8):
        steps, nfe = steps_for(pipe, name, budget)
        rows.clear()
        pipe([1, 2], sampler=name, num_inference_steps=steps, generator=gens([0, 1]), output_type="latent")
        assert sum(rows) / 2 == nfe <= budget
        rows.clear()
        pipe([1, 2], sampler=name, num_inference_steps=steps + 1, generator=gens([0, 1]), output_type="latent")
        assert sum(rows) / 2 > budget  # one step more would not fit


@pytest.fixture
def ladder(tmp_path, monkeypatch):
    """scripts/few_step.py writing its records under tmp_path, and a saved tiny pipeline to measure."""
    import scripts.few_step as few_step

    pixel_pipe().save_pretrained(tmp_path / "p")
    monkeypatch.setattr(few_step, "DOCS", tmp_path / "docs")
    monkeypatch.setattr(few_step, "PLOT", tmp_path / "few_step_fid.png")
    return few_step, str(tmp_path / "p")


@pytest.fixture
def stand_in_eval_fid(monkeypatch):
    """Replaces scripts/few_step.py's ``eval_fid.py`` runs: ``install(model, fid_of)`` makes each run write the
    ``metrics.json`` eval_fid.py would, where ``--out`` says, with the settings read back from its command (the
    stored guidance interval 0.1-0.8 when none is given) and FID ``fid_of(cmd)``; returns the list of commands."""
    import subprocess

    import scripts.few_step as few_step
    from flashdit.utils import model_fingerprint

    def install(model: str, fid_of) -> list:
        calls = []

        def eval_fid(cmd, **kwargs):
            calls.append(cmd)
            value = lambda flag: float(cmd[cmd.index(flag) + 1]) if flag in cmd else None  # noqa: E731
            i = cmd.index("--guidance-interval") if "--guidance-interval" in cmd else None
            settings = dict(
                model_fingerprint=model_fingerprint(model),
                sampler=cmd[cmd.index("--sampler") + 1],
                num_inference_steps=int(value("--steps")),
                timestep_shift=value("--shift"),
                guidance_scale=value("--cfg"),
                guidance_interval=[0.1, 0.8] if i is None else [float(cmd[i + 1]), float(cmd[i + 2])],
            )
            out = Path(cmd[cmd.index("--out") + 1])
            out.mkdir(parents=True)
            metrics = {"fid": fid_of(cmd), "kid_mean": 0.01, "class_accuracy": 0.9}
            (out / "metrics.json").write_text(json.dumps({"metrics": metrics, "settings": settings}))
            return subprocess.CompletedProcess(cmd, 0)

        monkeypatch.setattr(few_step.subprocess, "run", eval_fid)
        return calls

    return install


def test_the_few_step_ladder_refuses_records_measured_on_another_model(tmp_path, ladder):
    from flashdit.utils import model_fingerprint

    few_step, model = ladder
    (tmp_path / "docs").mkdir()
    record = tmp_path / "docs" / "euler_4steps_n10.json"
    made = {"metrics": {"fid": 1.0}, "settings": {"model_fingerprint": model_fingerprint(model)}}
    record.write_text(json.dumps(made))
    assert few_step.score(model, "euler", 4, 10, tmp_path)["metrics"]["fid"] == 1.0  # reused
    record.write_text(json.dumps({**made, "settings": {"model_fingerprint": "another"}}))
    with pytest.raises(SystemExit, match="measured on another model"):
        few_step.score(model, "euler", 4, 10, tmp_path)


def test_the_few_step_ladder_scores_into_a_fresh_work_folder_and_keeps_the_command(
    tmp_path, ladder, stand_in_eval_fid
):
    few_step, model = ladder
    calls = stand_in_eval_fid(model, lambda cmd: 2.0)
    work = tmp_path / "not" / "yet" / "there"
    got = few_step.score(model, "unipc", 5, 10, work)
    assert got["metrics"]["fid"] == 2.0 and "--sampler unipc --steps 5" in got["command"]
    assert calls[0][calls[0].index("--out") + 1] == str(work / "unipc_5steps_n10")  # named like its record
    assert few_step.score(model, "unipc", 5, 10, work) == got and len(calls) == 1  # the record is reused


def test_the_few_step_sweep_passes_each_guidance_and_shift_and_fits_the_steps_to_its_grid(
    tmp_path, ladder, monkeypatch, stand_in_eval_fid
):
    from flashdit.pipeline import load_pipeline
    from scripts.few_step import steps_for

    few_step, _ = ladder
    model = str(tmp_path / "guided")  # guided for 0.1 <= t <= 0.8: the shift moves steps in and out of it
    pixel_pipe(sampling=dict(guidance_scale=2.0, guidance_interval=[0.1, 0.8])).save_pretrained(model)

    def fid_of(cmd):  # FID = 10 x guidance + shift, read back from its command; 99 at the stored
        if "--cfg" not in cmd:
            return 99.0
        return 10 * float(cmd[cmd.index("--cfg") + 1]) + float(cmd[cmd.index("--shift") + 1])

    stand_in_eval_fid(model, fid_of)
    argv = ["few_step.py", "--model", model, "--sweep", "unipc", "--sweep-budget", "8", "--sweep-samples", "10"]
    argv += ["--cfg-grid", "1.5", "3", "--shift-grid", "0.3", "1.0", "--work", str(tmp_path / "work")]
    monkeypatch.setattr(sys, "argv", argv)
    few_step.main()
    records = sorted((tmp_path / "docs" / "sweep").glob("*.json"))
    assert len(records) == 4
    pipe = load_pipeline(model, "cpu")
    table = (tmp_path / "docs" / "sweep_n10.md").read_text()
    assert table.startswith("stored setting (euler 50 steps, guidance 2, shift 1): ")  # the default steps
    assert "FID-10 99.0" in table.splitlines()[0]
    assert steps_for(pipe, "unipc", 8, 0.3) != steps_for(pipe, "unipc", 8, 1.0)  # the shift changes the fit
    for shift in (0.3, 1.0):
        steps, nfe = steps_for(pipe, "unipc", 8, shift)
        assert nfe <= 8
        row = next(line for line in table.splitlines() if line.startswith(f"| {shift:g} |"))
        assert row == f"| {shift:g} | {15 + shift:.1f} ({steps} / {nfe}) | {30 + shift:.1f} ({steps} / {nfe}) |"
        for cfg in (1.5, 3.0):
            got = json.loads(
                (tmp_path / "docs" / f"sweep/unipc_{steps}steps_cfg{cfg}_shift{shift}_n10.json").read_text()
            )
            assert f"--steps {steps} --cfg {cfg} --shift {shift}" in got["command"]
    # a guidance interval of its own: recorded apart, passed on, and the steps fitted to it
    own = ["--cfg-grid", "2", "--shift-grid", "1", "--interval-grid", "0.4:0.6", "--work", str(tmp_path / "work")]
    monkeypatch.setattr(sys, "argv", argv[:9] + own)
    few_step.main()
    steps, nfe = steps_for(pipe, "unipc", 8, 1.0, 2.0, (0.4, 0.6))
    assert (steps, nfe) != steps_for(pipe, "unipc", 8, 1.0, 2.0)
    got = json.loads(
        (tmp_path / "docs" / f"sweep/unipc_{steps}steps_cfg2.0_shift1.0_interval0.4-0.6_n10.json").read_text()
    )
    assert f"--steps {steps} --cfg 2.0 --shift 1.0 --guidance-interval 0.4 0.6" in got["command"]
    table = (tmp_path / "docs" / "sweep_n10.md").read_text()
    assert "guidance for 0.4 <= t <= 0.6: FID-10" in table
    assert "| 0.3 | 15.3 (" in table  # the first run's points stay in the table
    flat = table[table.index("Every point, best first") :].splitlines()[4:]
    assert (
        len(flat) == 5
        and flat[0].startswith("| unipc | ")
        and "| 0.3 | 1.5 | 0.1–0.8 | 15.3 | 0.0100 | 0.900 |" in flat[0]
    )


def test_the_few_step_speed_times_each_setting_against_the_stored_one_and_counts_its_evaluations(
    tmp_path, ladder, monkeypatch
):
    import bench.common

    few_step, _ = ladder
    model = str(tmp_path / "guided")
    pixel_pipe(sampling=dict(guidance_scale=2.0, guidance_interval=[0.1, 0.8], num_inference_steps=4)).save_pretrained(
        model
    )
    monkeypatch.setattr(bench.common, "setup", lambda threads: "test machine")
    argv = ["few_step.py", "--model", model, "--report-only", "--budgets", "--speed", "unipc:3:1.0:3.0"]
    monkeypatch.setattr(sys, "argv", argv + ["--speed-batch", "2", "--speed-repeats", "1"])
    few_step.main()
    got = json.loads((tmp_path / "docs" / "speed.json").read_text())
    stored, fast = got
    assert got[stored]["speedup"] == 1.0 and got[fast]["images_per_second"] > 0
    assert stored == "euler 4 steps, shift 1, guidance 2" and fast == "unipc 3 steps, shift 1, guidance 3"
    # the evaluations it reports are the rows the transformer sees in such a call, per image
    pipe = pixel_pipe(sampling=dict(guidance_scale=2.0, guidance_interval=[0.1, 0.8]))
    pipe.set_progress_bar_config(disable=True)
    for key, kwargs in (
        (stored, dict(num_inference_steps=4)),
        (fast, dict(num_inference_steps=3, sampler="unipc", timestep_shift=1.0, guidance_scale=3.0)),
    ):
        pipe([1, 2], generator=gens([0, 1]), output_type="latent", **kwargs)
        assert got[key]["evaluations_per_image"] == pipe.num_model_evaluations
    table = (tmp_path / "docs" / "tables.md").read_text()
    assert f"| {fast} | {got[fast]['evaluations_per_image']} | " in table


def test_the_few_step_ladder_refuses_a_model_whose_stored_sampler_is_not_a_scheduler(tmp_path, ladder, monkeypatch):
    few_step, _ = ladder
    pixel_pipe(sampling=dict(sampler="sde")).save_pretrained(tmp_path / "sde")
    monkeypatch.setattr(sys, "argv", ["few_step.py", "--model", str(tmp_path / "sde"), "--report-only"])
    with pytest.raises(SystemExit, match=r"stores sampler 'sde'; .* must be one of euler, heun, dpm\+\+, unipc"):
        few_step.main()
    assert not (tmp_path / "docs").exists()  # refused before anything was written
