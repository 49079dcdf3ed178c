"""Training: config, data, extraction, the loop, exact resume, atomic checkpoints, divergence, 2 processes."""

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import launch_two_cpu_processes, tiny_vae, write_idx
from PIL import Image
from safetensors.torch import load_file

import train as train_script
from flashdit import FlashDiTPipeline, checkpoint, training
from flashdit.config import (
    MODEL_FROM_DATA,
    MODEL_FROM_SIZE,
    ConfigError,
    ExperimentConfig,
    from_dict,
    load_config,
    read_config_values,
)
from flashdit.data import FASHION_MNIST_DIR, ResumableBatchSampler, load_idx_split, pad_and_scale, read_idx
from flashdit.extract import main as extract_main
from flashdit.extract import parse_args as extract_args
from flashdit.settings import SamplingSettings

ROOT = Path(__file__).resolve().parent.parent
HAS_FASHION = Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(
    not HAS_FASHION,
    reason=f"Fashion-MNIST not installed in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)",
)

TINY_MODEL = ["model.hidden_size=32", "model.depth=2", "model.num_heads=2", "model.patch_size=2"]


def cfg_args(out, data_path, *extra):
    return [
        "--output-dir",
        str(out),
        "--set",
        f"data.path={data_path}",
        "train.global_batch_size=8",
        "train.log_every=1",
        "train.sample_every=0",
        "train.checkpoint_every=2",
        "train.trackers=[]",
        "sample.num_inference_steps=2",
        "sample.per_class=1",
        *TINY_MODEL,
        *extra,
    ]


def run_train(*argv):
    return train_script.main(train_script.parse_args(list(argv)))


# ---------------------------------------------------------------------------------------- config


def test_config_rejects_unknown_keys_and_wrong_types(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key.*train\.lrr"):
        load_config(None, ["train.lrr=1e-4"])
    with pytest.raises(ConfigError, match="train.max_steps='many' must be a valid integer"):
        load_config(None, ["train.max_steps=many"])
    with pytest.raises(ConfigError, match="model.mixer='swin' must be 'iwin', 'window', 'attention' or 'conv'"):
        load_config(None, ["model.mixer=swin"])
    with pytest.raises(ConfigError, match=r"train.betas=\[0.9\] must have 2 items"):
        load_config(None, ["train.betas=[0.9]"])
    cfg = load_config(None, ["train.lr=1e-4", "train.betas=[0.8, 0.9]", "model.kernel_size=null"])
    assert cfg.train.lr == 1e-4 and cfg.train.betas == (0.8, 0.9) and cfg.model.kernel_size is None
    (tmp_path / "bad.yaml").write_text("model:\n  depht: 3\n")
    with pytest.raises(ConfigError, match=r"model\.depht"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    assert isinstance(from_dict(ExperimentConfig, {}), ExperimentConfig)


def test_a_recipe_with_a_base_is_its_base_with_its_own_values_laid_over(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text(
        "model:\n  depth: 6\n  hidden_size: 96\ntrain:\n  lr: 3.0e-4\n  betas: [0.9, 0.99]\n"
        "sample:\n  guidance_interval: [0.1, 0.8]\n"
    )
    (tmp_path / "sub" / "child.yaml").write_text(
        "base: ../base.yaml\nmodel:\n  depth: 8\ntrain:\n  betas: [0.8, 0.9]\n"
        "sample:\n  guidance_interval: [0.0, 1.0]\n"
    )
    (tmp_path / "sub" / "grandchild.yaml").write_text("base: child.yaml\ntrain:\n  max_steps: 7\n")
    cfg = load_config(tmp_path / "sub" / "grandchild.yaml", ["model.hidden_size=64"])
    # the nearest file wins key by key; mappings merge, a list replaces; overrides come last
    want = load_config(
        None,
        ["model.depth=8", "model.hidden_size=64", "train.lr=3.0e-4", "train.betas=[0.8, 0.9]"]
        + ["train.max_steps=7", "sample.guidance_interval=[0.0, 1.0]"],
    )
    assert cfg == want
    assert read_config_values(tmp_path / "sub" / "child.yaml")["model"] == {"depth": 8, "hidden_size": 96}


def test_a_broken_base_chain_names_the_recipe_and_what_is_wrong(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: its base chain loops"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"c\.yaml: base: nowhere\.yaml does not exist"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"d\.yaml: base: \['a\.yaml'\] must be the path of another YAML recipe"):
        load_config(tmp_path / "d.yaml")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['base'\]"):  # not a --set key
        load_config(None, ["base=a.yaml"])


FLOW_RECIPES = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("autoencoder_"))


@pytest.mark.parametrize("path", FLOW_RECIPES, ids=lambda p: p.name)
def test_shipped_configs_load_and_build(path):
    cfg = load_config(path)
    info = {"fashion_mnist": dict(channels=1, size=32, num_classes=10)}.get(cfg.data.kind)
    info = info or dict(channels=cfg.model.in_channels or 4, size=cfg.model.sample_size or 32, num_classes=1000)
    with torch.device("meta"):
        model = training.build_model(cfg.model, info)
    written = read_config_values(path).get("model", {})
    for key, value in written.items():  # every model setting the recipe (or its base) writes reaches the model
        if key != "size" and not (value is None and key in MODEL_FROM_SIZE + MODEL_FROM_DATA):
            assert model.config[key] == value, key  # None too: `kernel_size: null` is "no convolution"
    for key in ("channels", "size", "num_classes"):  # and the data decides what the recipe leaves out
        name = {"channels": "in_channels", "size": "sample_size", "num_classes": "num_classes"}[key]
        assert model.config[name] == info[key]
    assert SamplingSettings.from_dict(cfg.sample.to_dict()) == SamplingSettings(**cfg.sample.to_dict())
    if cfg.data.kind == "fashion_mnist":
        assert cfg.flow.cosine_weight == 0  # inert on one grey channel (flow_loss refuses it)


def test_a_recipe_null_reaches_the_model_as_none():
    """`model.kernel_size=null` is global attention without the convolution branch; only the fields a size or the
    data fills take null as "unset"."""
    info = dict(channels=1, size=32, num_classes=10)
    overrides = ["model.mixer=attention", "model.kernel_size=null", "model.pos_embed=sincos"]
    with torch.device("meta"):
        attention = training.build_model(load_config(ROOT / "configs" / "fashion_mnist.yaml", overrides).model, info)
        iwin = training.build_model(load_config(ROOT / "configs" / "fashion_mnist.yaml").model, info)
    assert attention.config.kernel_size is None and iwin.config.kernel_size == 3
    convs = [type(m) for m in attention.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert convs == [] and sum(isinstance(m, torch.nn.Conv2d) and m.groups > 1 for m in iwin.modules()) > 0
    assert attention.num_parameters() < iwin.num_parameters()


@pytest.mark.parametrize("name", ["flashdit_xl_vavae_f16d32.yaml", "flashdit_xl2_sdvae.yaml"])
def test_the_imagenet_recipes_sample_on_the_official_grid(name):
    """The official samplers' "250 steps" are 250 grid points: 249 steps, as the converters store them."""
    from flashdit.official import AUTHORS_SAMPLING

    cfg = load_config(ROOT / "configs" / name)
    assert cfg.sample.num_inference_steps == AUTHORS_SAMPLING["flashdit"]["num_inference_steps"] == 249
    assert cfg.sample.timestep_shift == AUTHORS_SAMPLING["flashdit"]["timestep_shift"]


def test_paper_recipe_is_flashdit_xl1():
    cfg = load_config(ROOT / "configs" / "flashdit_xl_vavae_f16d32.yaml")
    with torch.device("meta"):
        model = training.build_model(cfg.model, dict(channels=32, size=16, num_classes=1000))
    c = model.config
    assert (c.hidden_size, c.depth, c.num_heads, c.patch_size) == (1152, 28, 16, 1)
    assert (c.mixer, c.window_size, c.kernel_size, c.pos_embed) == ("iwin", 4, 3, "none")
    assert abs(model.num_parameters() - 675.3e6) < 0.5e6
    assert cfg.train.lr == 2e-4 and cfg.train.betas == (0.9, 0.95) and cfg.train.ema_decay == 0.9999
    assert cfg.flow.t_sampling == "logit_normal" and cfg.flow.cosine_weight == 1.0


# ---------------------------------------------------------------------------------------- data


def test_idx_reader_round_trip_and_errors(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", arr)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    with gzip.open(tmp_path / "x.gz", "rb") as f:
        raw = f.read()
    (tmp_path / "short").write_bytes(raw[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_idx_split(tmp_path / "nowhere")


def test_pad_and_scale():
    x = pad_and_scale(np.full((2, 28, 28), 255, dtype=np.uint8), 32)
    assert x.shape == (2, 1, 32, 32)
    assert x[:, :, 2:30, 2:30].eq(1).all() and x[:, :, :2].eq(-1).all() and x[:, :, :, 30:].eq(-1).all()


@needs_fashion
@pytest.mark.data
def test_real_fashion_mnist_loads():
    images, labels = load_idx_split(None, "train")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [6000] * 10
    test_images, _ = load_idx_split(None, "test")
    assert test_images.shape == (10000, 28, 28)


def test_sampler_splits_global_batches_and_resumes_anywhere():
    one = ResumableBatchSampler(40, 8, seed=3, random_flip=True)
    ranks = [ResumableBatchSampler(40, 4, rank=r, world_size=2, seed=3, random_flip=True) for r in range(2)]
    it1, it2 = iter(one), [iter(r) for r in ranks]
    for _ in range(12):  # crosses epochs (5 global batches each)
        assert next(it1) == next(it2[0]) + next(it2[1])
    late = iter(ResumableBatchSampler(40, 8, seed=3, random_flip=True, position=7))
    fresh = iter(ResumableBatchSampler(40, 8, seed=3, random_flip=True))
    for _ in range(7):
        next(fresh)
    assert [next(late) for _ in range(6)] == [next(fresh) for _ in range(6)]
    seen = sorted(i for _, batch in zip(range(5), iter(ResumableBatchSampler(40, 8, seed=9))) for i, _ in batch)
    assert seen == list(range(40))  # one epoch visits every example once
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableBatchSampler(7, 4, world_size=2)


# ---------------------------------------------------------------------------------------- extraction


def extract_argv(images, vae_dir, out) -> list[str]:
    """``flashdit.extract`` at 16 px, shards of 8."""
    return ["--source", str(images), "--vae", str(vae_dir), "--resolution", "16", "--out", str(out)] + [
        "--shard-size",
        "8",
    ]


def tiny_vae_dir(root):
    vae = tiny_vae()
    vae.save_pretrained(root)
    return vae


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "fox"]):
        (root / name).mkdir()
        for i in range(7):
            arr = (rng.random((20, 24, 3)) * 60 + 60 * c).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


def test_extraction_round_trip_stats_and_skip(tmp_path, image_folder):
    vae = tiny_vae_dir(tmp_path / "vae")
    out = tmp_path / "latents"
    argv = [
        *extract_argv(image_folder, tmp_path / "vae", out),
        "--batch-size",
        "4",
    ]
    extract_main(extract_args(argv))
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["num_images"] == 21 and [s["count"] for s in meta["shards"]] == [8, 8, 5]
    assert meta["class_names"] == ["cat", "dog", "fox"] and meta["latent_channels"] == 4 and meta["latent_size"] == 8
    shard = load_file(out / "shard_00001.safetensors")
    assert shard["labels"].tolist() == [1] * 6 + [2] * 2  # images 8..15 in class order
    # the stored latent is the VAE posterior mode of the centre-cropped image, its flip that of the mirror
    from flashdit.extract import ImageSource

    src = ImageSource(image_folder, 16, 3)
    x = src[9][None]
    with torch.no_grad():
        torch.testing.assert_close(shard["latents"][1], vae.encode(x).latent_dist.mode()[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            shard["latents_flip"][1], vae.encode(x.flip(-1)).latent_dist.mode()[0], atol=1e-5, rtol=1e-5
        )
    all_lat = torch.cat([load_file(out / f"shard_0000{k}.safetensors")["latents"] for k in range(3)]).double()
    stats = load_file(out / "latents_stats.safetensors")
    torch.testing.assert_close(stats["mean"], all_lat.mean((0, 2, 3)).float())
    torch.testing.assert_close(stats["std"], all_lat.std((0, 2, 3)).float())
    # a second run skips finished shards: delete one, it alone is rebuilt
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*")}
    (out / "shard_00002.safetensors").unlink()
    extract_main(extract_args(argv))
    assert (out / "shard_00000.safetensors").stat().st_mtime_ns == mtimes["shard_00000.safetensors"]
    assert torch.equal(load_file(out / "shard_00002.safetensors")["latents"], all_lat[16:].float())


def test_extraction_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        extract_main(
            extract_args(
                ["--source", str(tmp_path / "x"), "--vae", "none", "--resolution", "32", "--out", str(tmp_path / "o")]
            )
        )
    with pytest.raises(FileNotFoundError, match="neither IDX files"):
        extract_main(
            extract_args(
                ["--source", str(tmp_path), "--vae", "none", "--resolution", "32", "--out", str(tmp_path / "o")]
            )
        )


# ---------------------------------------------------------------------------------------- training


def test_tiny_run_on_latents_exports_a_working_pipeline(tmp_path, image_folder):
    tiny_vae_dir(tmp_path / "vae")
    lat = tmp_path / "latents"
    extract_main(extract_args(extract_argv(image_folder, tmp_path / "vae", lat)))
    out = run_train(
        *cfg_args(
            tmp_path / "run",
            lat,
            "data.kind=latents",
            "train.max_steps=3",
            "data.num_workers=1",
            "model.window_size=2",
        )
    )
    pipe = FlashDiTPipeline.from_pretrained(out)
    assert pipe.vae is not None and pipe.transformer.config.in_channels == 4
    assert pipe.config.latents_std is not None and pipe.id2label == {0: "cat", 1: "dog", 2: "fox"}
    images = pipe(["dog", 0], num_inference_steps=2, output_type="pt").images
    assert images.shape == (2, 3, 16, 16)


@pytest.mark.parametrize("decay", [0.99, 0.998, 0.999, 0.9995, 0.9999])
def test_the_ema_note_names_the_first_step_at_which_the_warmup_ramp_reaches_the_decay(decay):
    t = from_dict(ExperimentConfig, {"train": {"ema_decay": decay, "ema_warmup": True, "max_steps": 1}}).train
    step = int(re.search(r"reaches \S+ at step (\d+)", training.ema_warmup_note(t)).group(1))
    # against the decay the EMA update itself uses: reached at that step, not one step before
    assert training.ema_decay_at(step, decay, True) == decay > training.ema_decay_at(step - 1, decay, True)
    for max_steps, noted in ((step - 1, True), (step, False), (10 * step, False)):
        t.max_steps = max_steps
        assert (training.ema_warmup_note(t) is not None) == noted
    t.ema_warmup, t.max_steps = False, 1  # a constant decay is always the one asked for
    assert training.ema_warmup_note(t) is None


def test_a_run_whose_ema_decay_is_never_reached_says_so(tmp_path, idx_dir, capsys):
    reached = ("train.max_steps=2", "train.ema_warmup=true", "train.ema_decay=0.25")  # (1 + 2)/(10 + 2) = 0.25
    run_train(*cfg_args(tmp_path / "run", idx_dir, *reached))
    assert "is never reached" not in capsys.readouterr().out
    run_train(*cfg_args(tmp_path / "run2", idx_dir, *reached[:2], "train.ema_decay=0.999"))
    out = capsys.readouterr().out
    assert "train.ema_decay=0.999 is never reached" in out and "end at 0.2500" in out  # (1 + 2)/(10 + 2)


def test_loss_falls_when_overfitting_one_batch(tmp_path, idx_dir):
    run_train(
        *cfg_args(
            tmp_path / "run",
            idx_dir,
            "data.limit=8",
            "data.random_flip=false",
            "train.max_steps=150",
            "train.lr=3e-3",
            "train.checkpoint_every=1000",
            "flow.cosine_weight=0",
        )
    )
    losses = [json.loads(line)["mse"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 150
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, idx_dir):
    common = [
        "train.max_steps=6",
        "train.checkpoint_every=100",
        "train.keep_checkpoints=5",
        "train.lr_schedule=cosine",
        "train.warmup_steps=2",
        "train.ema_warmup=true",
        "data.random_flip=true",
    ]
    run_train(*cfg_args(tmp_path / "full", idx_dir, *common))
    run_train(*cfg_args(tmp_path / "split", idx_dir, *common, "train.stop_after=3"))
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "split")] == ["step_0000003"]
    run_train(*cfg_args(tmp_path / "split", idx_dir, *common), "--resume")
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(tmp_path / "full" / "checkpoints" / "step_0000006" / name)
        b = load_file(tmp_path / "split" / "checkpoints" / "step_0000006" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    opt = [
        torch.load(p / "checkpoints" / "step_0000006" / "optimizer.pt", weights_only=True)
        for p in (tmp_path / "full", tmp_path / "split")
    ]
    assert all(
        torch.equal(opt[0]["state"][i]["exp_avg_sq"], opt[1]["state"][i]["exp_avg_sq"]) for i in opt[0]["state"]
    )
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, idx_dir, monkeypatch):
    calls = {"n": 0}
    real_save = checkpoint.save_file

    def crash_on_second_checkpoint(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # model + ema of the first checkpoint, then the second one's model
            Path(path).write_bytes(b"partial")
            raise KeyboardInterrupt("power cut")
        return real_save(tensors, path, *a, **k)

    monkeypatch.setattr(checkpoint, "save_file", crash_on_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_train(*cfg_args(tmp_path / "run", idx_dir, "train.max_steps=6"))
    monkeypatch.setattr(checkpoint, "save_file", real_save)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "run")] == ["step_0000002"]
    assert (tmp_path / "run" / "checkpoints" / ".tmp_step_0000004").exists()  # the torn write, ignored
    run_train(*cfg_args(tmp_path / "run", idx_dir, "train.max_steps=6"), "--resume")
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path / "run")][-1] == "step_0000006"


def test_corrupted_checkpoint_is_a_clear_error(tmp_path, idx_dir):
    run_train(*cfg_args(tmp_path / "run", idx_dir, "train.max_steps=2"))
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000002"
    (ckpt / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes()[:100])
    with pytest.raises(ValueError, match="could not be read.*corrupted"):
        run_train(*cfg_args(tmp_path / "run", idx_dir, "train.max_steps=4"), "--resume")
    (ckpt / "ema.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"incomplete: missing \['ema.safetensors'\]"):
        run_train(*cfg_args(tmp_path / "run", idx_dir, "train.max_steps=4"), "--resume")


def test_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path, idx_dir, monkeypatch):
    real_loss = training.flow.flow_loss
    count = {"n": 0}

    def poisoned(*args, **kwargs):
        count["n"] += 1
        loss, terms = real_loss(*args, **kwargs)
        return (loss * float("nan"), terms) if count["n"] >= 3 else (loss, terms)

    monkeypatch.setattr(training.flow, "flow_loss", poisoned)
    with pytest.raises(training.TrainingDiverged, match=r"loss became nan at step 3.*step_0000002"):
        run_train(*cfg_args(tmp_path / "run", idx_dir, "train.max_steps=6"))
    ckpt = checkpoint.list_checkpoints(tmp_path / "run")[-1]
    assert ckpt.name == "step_0000002" and load_file(ckpt / "model.safetensors")


def test_export_a_checkpoint_on_request(tmp_path, idx_dir):
    run_train(*cfg_args(tmp_path / "run", idx_dir, "train.max_steps=2"))
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000002"
    out = run_train(*cfg_args(tmp_path / "run", idx_dir), "--export", str(ckpt), "--out", str(tmp_path / "exp"))
    pipe = FlashDiTPipeline.from_pretrained(out)
    ema = load_file(ckpt / "ema.safetensors")
    assert all(torch.equal(pipe.transformer.state_dict()[k], ema[k]) for k in ema)
    assert pipe.vae is None and pipe.id2label[9] == "Ankle boot"


def test_bad_training_input_is_a_clear_error(tmp_path, idx_dir):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        run_train(*cfg_args(tmp_path / "a", tmp_path / "no_data"))
    with pytest.raises(ValueError, match="model.in_channels=4 but the data has channels=1"):
        run_train(*cfg_args(tmp_path / "b", idx_dir, "model.in_channels=4"))
    with pytest.raises(ConfigError, match="unknown config key"):
        run_train(*cfg_args(tmp_path / "c", idx_dir, "train.epochs=3"))
    with pytest.raises(ValueError, match="global_batch_size=9 must be divisible by train.grad_accum_steps=2"):
        run_train(*cfg_args(tmp_path / "d", idx_dir, "train.global_batch_size=9", "train.grad_accum_steps=2"))
    with pytest.raises(FileNotFoundError, match="no metadata.json"):
        run_train(*cfg_args(tmp_path / "e", tmp_path, "data.kind=latents"))


@needs_fashion
@pytest.mark.data
def test_tiny_run_on_real_fashion_mnist_then_sample_script(tmp_path):
    out = run_train(
        *cfg_args(
            tmp_path / "run",
            FASHION_MNIST_DIR,
            "data.limit=512",
            "train.max_steps=3",
            "train.sample_every=3",
            "train.grad_accum_steps=2",
        )
    )
    assert (tmp_path / "run" / "samples" / "step_0000003.png").is_file()
    import sample

    written = sample.main(
        sample.parse_args(
            ["--model", str(out), "--class-labels", "Trouser", "9", "--steps", "2", "--out", str(tmp_path / "s")]
        )
    )
    assert len(written) == 2 and Image.open(written[0]).size == (32, 32)


@pytest.mark.slow
def test_two_cpu_processes_train_with_the_same_global_batch(tmp_path, idx_dir):
    launch_two_cpu_processes(
        "train.py", cfg_args(tmp_path / "run", idx_dir, "train.max_steps=2", "train.cpu=true"), port=29517
    )
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_0000002" / "state.json").read_text())
    assert state["num_processes"] == 2 and state["global_batch_size"] == 8
    assert (tmp_path / "run" / "checkpoints" / "step_0000002" / "rng_rank1.pt").is_file()
    assert FlashDiTPipeline.from_pretrained(tmp_path / "run" / "pipeline").transformer is not None


def test_the_default_tracker_writes_tensorboard_events(tmp_path, idx_dir):
    run_train(*cfg_args(tmp_path / "run", idx_dir, "train.max_steps=2", "train.trackers=[tensorboard]"))
    events = list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_shards_and_resumes_exactly(tmp_path):
    """Accelerate runs FSDP only on GPUs; PyTorch's FSDP2 runs on CPUs with gloo, so the sharded paths of the
    package (train_step, the sharded EMA, checkpoint gather/scatter of model, EMA and optimizer) run here
    with the model sharded by fully_shard directly (tests/workers/fsdp_resume.py)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519"]
    proc = subprocess.run(
        [*cmd, str(ROOT / "tests" / "workers" / "fsdp_resume.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["sharded"] and result["num_processes"] == 2 and result["local_fraction"] < 0.51
    assert result["resume_exact_model"] and result["resume_exact_ema"] and result["ema_moved"]
    assert result["gathered_ema_is_plain"]


def test_an_fsdp_config_without_gpus_is_refused_not_run_twice(tmp_path, idx_dir):
    """Accelerate falls back to independent single processes for FSDP on CPUs: training refuses that."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "configs" / "accelerate" / "fsdp.yaml"),
        "--num_processes",
        "2",
        "--mixed_precision",
        "no",
        "--main_process_port",
        "29520",
        str(ROOT / "train.py"),
        *cfg_args(tmp_path / "run", idx_dir, "train.max_steps=2"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    if torch.cuda.is_available():
        pytest.skip("with GPUs the FSDP config runs")
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(ours) == 1 and "launched 2 processes but Accelerate runs 1" in ours[0], proc.stderr  # once per launch
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_runs_of_one_seed_draw_the_same_noise_whatever_the_model(tmp_path, idx_dir, monkeypatch):
    drawn = []
    randn_like = torch.randn_like

    def recording_randn_like(x, *args, **kwargs):
        out = randn_like(x, *args, **kwargs)
        drawn[-1].append(out.clone())
        return out

    monkeypatch.setattr(torch, "randn_like", recording_randn_like)
    models = {
        "iwin": [],
        "attention, deeper": [
            "model.mixer=attention",
            "model.kernel_size=null",
            "model.pos_embed=sincos",
            "model.depth=3",
        ],
    }
    for name, overrides in models.items():
        drawn.append([])
        run_train(*cfg_args(tmp_path / name.replace(", ", "-"), idx_dir, "train.max_steps=2", *overrides))
    (a, b) = drawn
    # two steps each; the models' initialisations drew different numbers of values before them
    assert len(a) == len(b) == 2 and all(torch.equal(x, y) for x, y in zip(a, b))
