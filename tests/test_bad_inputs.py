"""Bad input and interruptions through the command lines: every user error is one line naming the argument
and exits with status 2; nothing the user had is lost; nothing stale is reused silently."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_pipeline import pixel_pipe
from test_training import cfg_args

import eval_fid
import sample
import train as train_script
from flashdit import training
from flashdit.checkpoint import list_checkpoints
from flashdit.cli import run
from flashdit.extract import main as extract_main
from flashdit.extract import parse_args as extract_args
from flashdit.extract import to_8bit

ROOT = Path(__file__).resolve().parent.parent


def user_error(capsys, main, argv_parser, argv: list[str], match: str) -> str:
    """Run a CLI main through ``flashdit.cli.run``: exit status 2 and one stderr line matching ``match``."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(main, argv_parser(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress bars of work done before may precede it
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and err[-1] == errors[0] and not any("Traceback" in line for line in err), err
    assert re.match(r"^[\w. \-]+: error: ", errors[0]), errors[0]  # a line of its own, not a progress bar's
    assert match in errors[0], errors[0]
    return errors[0]


def train_cli(*argv):
    return train_script.main(train_script.parse_args(list(argv)))


def snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------- training


def test_output_dirs_are_never_overwritten_and_resume_never_prunes_newer(tmp_path, idx_dir, capsys):
    run_dir = tmp_path / "run"
    train_cli(*cfg_args(run_dir, idx_dir, "train.max_steps=4", "train.keep_checkpoints=5"))
    before = snapshot(run_dir / "checkpoints")
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_0000002", "step_0000004"]

    # a second fresh run into the same output_dir is refused: no pruning, no appending to metrics.jsonl
    metrics = (run_dir / "metrics.jsonl").read_text()
    user_error(
        capsys,
        train_script.main,
        train_script.parse_args,
        cfg_args(run_dir, idx_dir, "train.max_steps=4"),
        "already holds a run (step_0000004); continue it with --resume",
    )
    # resuming below a newer checkpoint is refused (it would overwrite or prune step 4)
    older = str(run_dir / "checkpoints" / "step_0000002")
    resume_older = [*cfg_args(run_dir, idx_dir, "train.max_steps=6"), "--resume", older]
    user_error(capsys, train_script.main, train_script.parse_args, resume_older, "holds newer checkpoints")
    assert snapshot(run_dir / "checkpoints") == before
    assert (run_dir / "metrics.jsonl").read_text() == metrics

    # exporting into a directory with the user's files is refused, and they stay
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    ckpt = run_dir / "checkpoints" / "step_0000004"
    user_error(
        capsys,
        train_script.main,
        train_script.parse_args,
        ["--export", str(ckpt), "--out", str(mine)],
        "not a FlashDiT pipeline (notes.txt)",
    )
    assert (mine / "notes.txt").read_text() == "keep me"
    # a previous export is replaced; the run's own config (its --set overrides) describes the model
    out = tmp_path / "exported"
    for _ in range(2):
        train_cli("--export", str(ckpt), "--out", str(out))
    assert sorted(p.name for p in out.iterdir()) == [
        "model_index.json",
        "pipeline_flashdit.py",
        "scheduler",
        "transformer",
    ]


def test_stray_folders_partial_log_lines_and_a_changed_lr_on_resume(tmp_path, idx_dir, capsys):
    run_dir = tmp_path / "run"
    constant = ["train.lr_schedule=constant", "train.warmup_steps=0", "train.max_grad_norm=null"]  # no clipping
    train_cli(*cfg_args(run_dir, idx_dir, "train.max_steps=2", "train.lr=1e-3", *constant))
    (run_dir / "checkpoints" / "step_123_backup").mkdir()
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # a crash mid-line
    capsys.readouterr()
    train_cli(*cfg_args(run_dir, idx_dir, "train.max_steps=4", "train.lr=5e-4", *constant), "--resume")
    assert "note: the config changes lr 0.001 -> 0.0005: applied from step 2" in capsys.readouterr().out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[1]["lr"] == pytest.approx(1e-3) and rows[2]["lr"] == pytest.approx(5e-4)  # the new value applies
    assert all(r["grad_norm"] > 0 for r in rows)  # measured even without clipping


def test_resume_without_a_checkpoint_starts_over_and_writes_the_log_afresh(tmp_path, idx_dir, capsys):
    """A run stopped before its first checkpoint left log lines; --resume starts from scratch and its log holds
    each step once, from this attempt, not the stopped attempt's lines followed by the new ones."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stale = [{"step": 1, "loss": 99.0}, {"step": 2, "loss": 99.0}, {"step": 3, "loss": 99.0}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stale))
    train_cli(*cfg_args(run_dir, idx_dir, "train.max_steps=2"), "--resume")
    assert "starting from scratch" in capsys.readouterr().out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["loss"] != 99.0 for r in rows)


def test_bad_step_intervals_are_refused(tmp_path, idx_dir, capsys):
    for key in ("train.log_every=0", "train.checkpoint_every=0"):
        user_error(
            capsys,
            train_script.main,
            train_script.parse_args,
            cfg_args(tmp_path / key, idx_dir, key),
            f"{key.split('=')[0]}=0 must be greater than or equal to 1",
        )


def test_a_user_error_from_a_real_process_is_one_line_and_status_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--set", "train.max_steps=0", "--output-dir", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2
    want = "train.py: error: train.max_steps=0 must be greater than or equal to 1"
    assert proc.stderr.strip().splitlines() == [want]


# ---------------------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe")
    pixel_pipe(sampling=dict(num_inference_steps=2)).save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--cfg", "nan"], "guidance_scale=nan must be a finite number"),
        (["--cfg", "inf"], "guidance_scale=inf must be a finite number"),
        (["--shift", "nan"], "timestep_shift=nan must be a finite number"),
        (["--height", "0"], "height=0 must be a positive integer number of pixels"),
        (["--height", "100000", "--width", "100000"], "larger than the largest supported side, 16384"),
        (["--class-labels", "10"], "class_labels [10] are not class ids in [0, 10)"),
        (["--per-label", "0"], "argument --per-label: 0 is not in [1, 100,000]"),
        (["--out", "/proc/version/sub"], "--out /proc/version/sub cannot be created: /proc/version is a file"),
        (["--out", "/proc/flashdit"], "--out /proc/flashdit is not writable"),
    ],
)
def test_sample_script_user_errors(model_dir, tmp_path, capsys, extra, match):
    argv = ["--model", str(model_dir), "--class-labels", "3", "--out", str(tmp_path / "s")]
    if "--class-labels" in extra:
        argv = ["--model", str(model_dir), "--out", str(tmp_path / "s")]
    user_error(capsys, sample.main, sample.parse_args, argv + extra, match)
    assert not list((tmp_path / "s").glob("*.png"))  # no image written


def test_nan_latents_are_refused(model_dir):
    pipe = pixel_pipe()
    with pytest.raises(ValueError, match="latents contain NaN"):
        pipe([1], latents=torch.full((1, 1, 8, 8), float("nan")))


# ---------------------------------------------------------------------------------------- evaluation


def test_eval_refuses_stale_shards_and_fails_fast(model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    base = [
        "--model",
        str(model_dir),
        "--num-samples",
        "4",
        "--steps",
        "1",
        "--metrics",
        "--out",
        str(out),
        "--quiet",
        "--batch-size",
        "2",
    ]
    eval_fid.main(eval_fid.parse_args([*base, "--shard-size", "2"]))
    settings = json.loads((out / "settings.json").read_text())
    assert settings["shard_size"] == 2 and settings["height"] == 8 and settings["width"] == 8
    user_error(capsys, eval_fid.main, eval_fid.parse_args, [*base, "--shard-size", "3"], "other settings")
    # the model at the same path exported again: the old samples are not reused
    pixel_pipe(sampling=dict(num_inference_steps=2)).save_pretrained(model_dir)
    user_error(capsys, eval_fid.main, eval_fid.parse_args, [*base, "--shard-size", "2"], "other settings")
    # an --out that cannot be a directory fails before any sampling
    (tmp_path / "file").write_text("x")
    bad_out = ["--model", str(model_dir), "--metrics", "--out", str(tmp_path / "file" / "sub")]
    user_error(
        capsys, eval_fid.main, eval_fid.parse_args, bad_out, f"sub cannot be created: {tmp_path / 'file'} is a file"
    )
    zero = [*base, "--shard-size", "0"]
    user_error(capsys, eval_fid.main, eval_fid.parse_args, zero, "argument --shard-size: 0 is not in [1, 10,000,000]")


# ---------------------------------------------------------------------------------------- extraction


def test_extraction_refuses_other_settings_and_reads_16_bit_and_corrupt_images(tmp_path, capsys):
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    grey = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    Image.fromarray(grey).save(src / "x.png")  # a 16-bit PNG
    assert Image.open(src / "x.png").mode.startswith("I")
    eight = np.asarray(to_8bit(Image.open(src / "x.png")))
    np.testing.assert_array_equal(eight, np.round(grey / 257.0).astype(np.uint8))
    out = tmp_path / "lat"
    argv = ["--source", str(tmp_path / "src"), "--vae", "none", "--resolution", "16", "--out", str(out)]
    extract_main(extract_args(argv))
    from safetensors.torch import load_file

    pixels = load_file(out / "shard_00000.safetensors")["latents"][0, 0]
    np.testing.assert_allclose(pixels.numpy(), eight / 127.5 - 1, atol=1e-6)  # not saturated to white
    before = snapshot(out)
    user_error(
        capsys,
        extract_main,
        extract_args,
        [*argv[:-2], "--out", str(out), "--shard-size", "7"],
        "shard_size: 4096 -> 7",
    )
    assert snapshot(out) == before
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    user_error(capsys, extract_main, extract_args, [*argv[:-1], str(tmp_path / "lat2")], "broken.png")


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    from flashdit.utils import atomic_path

    with atomic_path(tmp_path / "x.json") as tmp:
        tmp.write_text("{}")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_convert_and_evaluation_commands_give_one_line_errors(tmp_path, capsys):
    from flashdit import convert, evaluation

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for source in ("flashdit", "vae"):  # refused before the (missing) checkpoint is even read
        user_error(
            capsys,
            convert.main,
            lambda a: a,
            [source, "--ckpt", str(tmp_path / "no.pt"), "--out", str(mine)],
            "already holds files that are not a",
        )
    assert (mine / "notes.txt").read_text() == "keep me"
    user_error(
        capsys,
        evaluation.main,
        lambda a: a,
        ["fid", str(tmp_path / "a.npz"), str(tmp_path / "b.npz")],
        "is not an image folder, an .npz, or fashion-mnist:<split>",
    )


# ---------------------------------------------------------------------------------------- round two: every --out
# Each case runs the real command line in-process (argparse, main, flashdit.cli.run) and checks the exit status, the
# single error line and that the user's files (and any checkpoints) are byte-identical afterwards.


def refused(capsys, main, parser, argv, match: str, keep: Path | None = None) -> str:
    """``user_error``, with the files under ``keep`` unchanged."""
    before = snapshot(keep) if keep is not None and keep.exists() else None
    line = user_error(capsys, main, parser, argv, match)
    if before is not None:
        assert snapshot(keep) == before
    return line


def test_sample_out_keeps_the_users_files_and_replaces_only_its_own_output(model_dir, tmp_path, capsys):
    out = tmp_path / "s"
    out.mkdir()
    Image.new("L", (4, 4), 7).save(out / "grid.png")  # a user's file of the same name as an output
    argv = ["--model", str(model_dir), "--class-labels", "3", "--per-label", "2", "--out", str(out)]
    refused(capsys, sample.main, sample.parse_args, argv, "already holds files that are not a sample.py output", out)
    (out / "grid.png").unlink()
    Image.new("L", (4, 4), 7).save(out / "00000_3_0.png")  # an output's own name, but the user's picture
    refused(capsys, sample.main, sample.parse_args, argv, "(00000_3_0.png)", out)
    (out / "00000_3_0.png").unlink()
    # this command's own earlier output is replaced whole: a rerun with other labels leaves no mix of the two
    sample.main(sample.parse_args(argv))
    assert sorted(p.name for p in out.glob("*.png")) == ["00000_3_0.png", "00001_3_1.png", "grid.png"]
    sample.main(sample.parse_args(["--model", str(model_dir), "--class-labels", "5", "--out", str(out)]))
    assert sorted(p.name for p in out.glob("*.png")) == ["00000_5_0.png", "grid.png"]


def test_eval_out_keeps_the_users_samples_and_metrics(model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    np.savez(out / "samples.npz", arr_0=np.zeros((1, 2, 2, 3), np.uint8))
    (out / "metrics.json").write_text('{"fid": 1.0}')
    argv = ["--model", str(model_dir), "--num-samples", "2", "--metrics", "--out", str(out), "--quiet"]
    refused(
        capsys, eval_fid.main, eval_fid.parse_args, argv, "not a eval_fid.py output (metrics.json, samples.npz)", out
    )
    # its own output is recognised and resumed (same settings), or refused with the changed setting named
    mine = tmp_path / "mine"
    eval_fid.main(eval_fid.parse_args([*argv[:-2], str(mine), "--quiet"]))
    eval_fid.main(eval_fid.parse_args([*argv[:-2], str(mine), "--quiet"]))
    other = [*argv[:-2], str(mine), "--quiet", "--seed", "3"]
    refused(capsys, eval_fid.main, eval_fid.parse_args, other, "other settings (seed: 0 -> 3)", mine)


def test_extract_out_keeps_the_users_metadata(tmp_path, idx_dir, capsys):
    out = tmp_path / "lat"
    out.mkdir()
    (out / "metadata.json").write_text('{"mine": true}')
    argv = ["--source", str(idx_dir), "--vae", "none", "--resolution", "32", "--out", str(out)]
    refused(capsys, extract_main, extract_args, argv, "not a flashdit.extract output (metadata.json)", out)


def test_reference_out_keeps_the_users_file_and_fails_before_the_features(tmp_path, capsys, monkeypatch):
    from flashdit import evaluation

    monkeypatch.setattr(evaluation, "InceptionFeatures", lambda *a, **k: pytest.fail("features computed"))
    mine = tmp_path / "ref.npz"
    np.savez(mine, mu=np.zeros(2))
    argv = ["reference", "--source", "fashion-mnist:test", "--out", str(mine)]
    refused(capsys, evaluation.main, lambda a: a, argv, "already exists and is not a reference", tmp_path)
    read_only = ["reference", "--source", "fashion-mnist:test", "--out", "/proc/version/ref.npz"]
    refused(
        capsys,
        evaluation.main,
        lambda a: a,
        read_only,
        "--out /proc/version cannot be created: /proc/version is a file",
    )
    limit = ["reference", "--source", "fashion-mnist:test", "--out", str(tmp_path / "r.npz"), "--limit", "-5"]
    refused(capsys, evaluation.main, lambda a: a, limit, "argument --limit: -5 is not in [1, 10,000,000]")


def test_two_training_runs_into_one_directory_at_once_one_is_refused(tmp_path, idx_dir):
    run_dir = tmp_path / "run"
    argv = [sys.executable, str(ROOT / "train.py"), *cfg_args(run_dir, idx_dir, "train.max_steps=30")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(argv, env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    err = next(e for code, e in results if code == 2).strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train.py: error: train.output_dir"), err
    assert "in use by another process" in err[0] or "already holds a run" in err[0]
    rows = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(1, 31))  # one run's steps, each once


# ---------------------------------------------------------------------------------------- round two: settings


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.lr=1e30", "train.lr=1e+30 must be less than or equal to 1"),
        ("train.lr=1e39", "train.lr=1e+39 must be less than or equal to 1"),
        ("train.lr=.inf", "train.lr=inf must be a finite number"),
        ("train.lr=0", "train.lr=0 must be greater than 0"),
        ("train.ema_decay=1.5", "train.ema_decay=1.5 must be less than 1"),
        ("train.ema_decay=.nan", "train.ema_decay=nan must be a finite number"),
        ("train.max_grad_norm=-1", "train.max_grad_norm=-1 must be greater than 0"),
        ("train.lora.alpha=0", "train.lora.alpha=0 must be greater than 0"),
        ("train.lora.rank=0", "train.lora.rank=0 must be greater than or equal to 1"),
        ("train.global_batch_size=-8", "train.global_batch_size=-8 must be greater than or equal to 1"),
        ("train.grad_accum_steps=0", "train.grad_accum_steps=0 must be greater than or equal to 1"),
        ("train.global_batch_size=9", "global_batch_size=9 must be divisible by train.grad_accum_steps=2"),
        ("model.kernel_size=4", "model.kernel_size=4 must be odd"),
        ("sample.per_class=0", "sample.per_class=0 must be greater than or equal to 1"),
        ("data.limit=0", "data.limit=0 must be greater than or equal to 1"),
        ("train.betas=[0.9, 1.5]", "train.betas[1]=1.5 must be less than 1"),
        ("sample.guidance_interval=[0.8, 0.1]", "sample: guidance_interval=[0.8, 0.1] must have low <= high"),
    ],
)
def test_every_numeric_setting_has_a_range_checked_before_any_work(
    tmp_path, idx_dir, capsys, monkeypatch, override, match
):
    monkeypatch.setattr(train_script, "train", lambda *a, **k: pytest.fail("training started"))
    extra = ["train.grad_accum_steps=2"] if "divisible" in match else []
    argv = cfg_args(tmp_path / "r", idx_dir, override, *extra)
    if "divisible" in match:
        monkeypatch.undo()  # a check of train() itself, still before any data or model
        monkeypatch.setattr(training, "build_dataset", lambda *a, **k: pytest.fail("data loaded"))
    refused(capsys, train_script.main, train_script.parse_args, argv, match)


def test_late_settings_fail_before_the_data_and_the_model(tmp_path, idx_dir, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    train_cli(*cfg_args(run_dir, idx_dir, "train.max_steps=2"))
    before = snapshot(run_dir)
    monkeypatch.setattr(training, "build_dataset", lambda *a, **k: pytest.fail("data loaded"))
    resume = [*cfg_args(run_dir, idx_dir, "train.max_steps=4", "train.global_batch_size=16"), "--resume"]
    refused(capsys, train_script.main, train_script.parse_args, resume, "trained with train.global_batch_size=8")
    conv = cfg_args(tmp_path / "c", idx_dir, "train.lora.targets=[conv]")
    refused(capsys, train_script.main, train_script.parse_args, conv, "cannot include 'conv'")
    read_only = cfg_args("/proc/version/run", idx_dir)
    refused(capsys, train_script.main, train_script.parse_args, read_only, "train.output_dir /proc/version/run is not")
    assert snapshot(run_dir) == before


def test_an_empty_section_over_a_base_inherits_it(tmp_path):
    from flashdit.config import load_config

    (tmp_path / "child.yaml").write_text(f"base: {ROOT / 'configs' / 'fashion_mnist.yaml'}\nsample:\ntrain:\n")
    cfg, base = load_config(tmp_path / "child.yaml"), load_config(ROOT / "configs" / "fashion_mnist.yaml")
    assert cfg.sample == base.sample and cfg.train == base.train
    (tmp_path / "alone.yaml").write_text("sample:\n")
    assert load_config(tmp_path / "alone.yaml").sample == load_config(None).sample


def test_recipes_that_are_not_mappings_or_not_yaml_name_the_file(tmp_path, idx_dir, capsys):
    (tmp_path / "syntax.yaml").write_text("train:\n  lr: [1e-3\n")
    argv = ["--config", str(tmp_path / "syntax.yaml"), *cfg_args(tmp_path / "r", idx_dir)]
    refused(capsys, train_script.main, train_script.parse_args, argv, "syntax.yaml: not valid YAML at line 3")
    (tmp_path / "list.yaml").write_text("- model\n- train\n")
    argv = ["--config", str(tmp_path / "list.yaml"), *cfg_args(tmp_path / "r", idx_dir)]
    refused(capsys, train_script.main, train_script.parse_args, argv, "list.yaml: the top level must be a mapping")
    (tmp_path / "section.yaml").write_text("flow: [1, 2]\n")
    argv = ["--config", str(tmp_path / "section.yaml"), *cfg_args(tmp_path / "r", idx_dir)]
    refused(capsys, train_script.main, train_script.parse_args, argv, "flow: expected a mapping of keys")


# ---------------------------------------------------------------------------------------- round two: files


def test_corrupt_checkpoints_on_resume_are_one_line_and_stay_as_they_were(tmp_path, idx_dir, capsys):
    run_dir = tmp_path / "run"
    train_cli(*cfg_args(run_dir, idx_dir, "train.max_steps=2"))
    ckpt = run_dir / "checkpoints" / "step_0000002"
    resume = [*cfg_args(run_dir, idx_dir, "train.max_steps=4"), "--resume"]
    damage = {
        "optimizer.pt": lambda b: b[: len(b) // 2],  # truncated: EOFError / zip errors
        "state.json": lambda b: b"{not json",
        "model.safetensors": lambda b: os.urandom(len(b)),  # random bytes
        "scheduler.pt": lambda b: b"",
    }
    for name, spoil in damage.items():
        good = (ckpt / name).read_bytes()
        (ckpt / name).write_bytes(spoil(good))
        refused(capsys, train_script.main, train_script.parse_args, resume, "could not be read", run_dir)
        (ckpt / name).write_bytes(good)


def test_models_that_cannot_load_are_one_line(model_dir, tmp_path, capsys):
    base = ["--class-labels", "3", "--out", str(tmp_path / "s")]
    cases = {
        str(tmp_path / "missing"): "no pipeline directory there",
        "someone/some-model": "could not be loaded from the Hub",
    }
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    weights = next(broken.rglob("diffusion_pytorch_model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:200])  # truncated
    cases[str(broken)] = "could not be loaded from the local directory"
    for model, match in cases.items():
        refused(capsys, sample.main, sample.parse_args, ["--model", model, *base], match)
    weights.write_bytes(os.urandom(4000))  # random bytes
    refused(capsys, sample.main, sample.parse_args, ["--model", str(broken), *base], "could not be loaded")


def test_a_pipeline_with_nan_weights_is_refused_at_load_naming_the_tensor(tmp_path, capsys):
    pipe = pixel_pipe(sampling=dict(num_inference_steps=2))
    with torch.no_grad():
        pipe.transformer.final_layer.linear.weight[0, 0] = float("nan")
    pipe.save_pretrained(tmp_path / "nan")
    argv = ["--model", str(tmp_path / "nan"), "--class-labels", "3", "--out", str(tmp_path / "s")]
    refused(capsys, sample.main, sample.parse_args, argv, "transformer weight final_layer.linear.weight holds NaN")
    assert not list((tmp_path / "s").glob("*.png"))
    argv = ["--model", str(tmp_path / "nan"), "--num-samples", "2", "--metrics", "--out", str(tmp_path / "e")]
    refused(capsys, eval_fid.main, eval_fid.parse_args, argv, "holds NaN or inf values")
    with pytest.raises(ValueError, match="holds NaN"):
        from flashdit.pipeline import export_pipeline

        export_pipeline(pipe, tmp_path / "exported")
    assert not (tmp_path / "exported").exists()


def test_bad_sizes_devices_and_unbounded_counts_fail_at_once(model_dir, tmp_path, capsys):
    base = ["--model", str(model_dir), "--metrics", "--out", str(tmp_path / "e")]
    cases = [
        (eval_fid, [*base, "--height", "0", "--width", "0"], "height=0 must be a positive integer"),
        (eval_fid, [*base, "--num-samples", str(10**12)], "argument --num-samples: 1000000000000 is not in"),
        (eval_fid, [*base, "--batch-size", str(10**9)], "argument --batch-size"),
        (sample, ["--model", str(model_dir), "--class-labels", "1", "--per-label", str(10**9)], "--per-label"),
        (sample, ["--model", str(model_dir), "--class-labels", "1", "--steps", str(10**9)], "num_inference_steps"),
        (sample, ["--model", str(model_dir), "--class-labels", "1", "--device", "banana"], "'banana' is not a device"),
        (sample, ["--model", str(model_dir), "--class-labels", "1", "--device", "cuda:7"], "cuda:7 is not available"),
    ]
    for script, argv, match in cases:
        refused(capsys, script.main, script.parse_args, argv, match)


def test_an_output_path_that_is_a_file_or_read_only_is_one_line(model_dir, tmp_path, idx_dir, capsys):
    (tmp_path / "file").write_text("mine")
    argv = ["--model", str(model_dir), "--class-labels", "1", "--out", str(tmp_path / "file")]
    refused(capsys, sample.main, sample.parse_args, argv, "is a file, not a directory", tmp_path)
    run_in_file = cfg_args(tmp_path / "file", idx_dir)
    refused(capsys, train_script.main, train_script.parse_args, run_in_file, "train.output_dir", tmp_path)
    argv = ["--model", str(model_dir), "--class-labels", "1", "--out", "/proc/version/x"]
    refused(capsys, sample.main, sample.parse_args, argv, "x cannot be created: /proc/version is a file")
    argv = ["--model", str(model_dir), "--class-labels", "1", "--out", "/proc/flashdit"]
    refused(capsys, sample.main, sample.parse_args, argv, "--out /proc/flashdit is not writable")


def test_a_full_disk_is_one_line_and_leaves_no_partial_checkpoint(tmp_path, idx_dir, capsys):
    """A file-size limit stands in for a full disk: the writes fail the same way (torch.save's "unexpected pos",
    safetensors' I/O error, OSError)."""
    import resource
    import signal

    run_dir = tmp_path / "run"
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))
    try:
        argv = cfg_args(run_dir, idx_dir, "train.max_steps=2")
        line = refused(capsys, train_script.main, train_script.parse_args, argv, "step_0000002")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert "File too large" in line or "could not write" in line, line
    assert list_checkpoints(run_dir) == []  # the half-written one never became a checkpoint


def test_the_divergence_guard_never_writes_or_names_non_finite_weights(tmp_path, idx_dir, capsys, monkeypatch):
    real_update = training.ema_update

    def poisoned(ema, model, decay):  # at step 3 the weights become NaN, after a finite loss and gradient
        real_update(ema, model, decay)
        if training_steps["n"] == 3:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        training_steps["n"] += 1

    training_steps = {"n": 1}
    monkeypatch.setattr(training, "ema_update", poisoned)
    run_dir = tmp_path / "run"
    argv = cfg_args(run_dir, idx_dir, "train.max_steps=6", "train.checkpoint_every=1", "train.keep_checkpoints=5")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(train_script.main, train_script.parse_args(argv))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "weights became non-finite (model.x_embedder.proj.weight) at step 3" in err, err
    assert "no checkpoint was written for it" in err and "The last good checkpoint is" in err
    assert err.endswith("model.qk_norm=true.") and "step_0000002" in err
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_0000001", "step_0000002"]
    for ckpt in list_checkpoints(run_dir):
        for name in ("model.safetensors", "ema.safetensors"):
            assert all(torch.isfinite(t).all() for t in load_file(ckpt / name).values())


def test_errors_start_a_line_of_their_own_after_a_progress_bar(capsys):
    from tqdm.auto import tqdm

    def fails_mid_bar(_):
        bar = tqdm(total=10, desc="work")
        bar.update(3)
        raise ValueError("--thing 3 is bad")

    capsys.readouterr()
    with pytest.raises(SystemExit):
        run(fails_mid_bar, None)
    err = capsys.readouterr().err
    assert "work:  30%" in err  # the bar was drawn, and its line ended before the error
    assert re.search(r"\n[\w. \-]+: error: --thing 3 is bad\n$", err), repr(err)


def test_a_reference_of_another_size_is_refused_before_its_features(model_dir, tmp_path, capsys, monkeypatch):
    from flashdit import evaluation

    monkeypatch.setattr(evaluation.InceptionFeatures, "__init__", lambda self, *a, **k: None)
    monkeypatch.setattr(evaluation.InceptionFeatures, "has_logits", False, raising=False)
    monkeypatch.setattr(evaluation.InceptionFeatures, "__call__", lambda *a, **k: pytest.fail("features computed"))
    ref = tmp_path / "ref"
    ref.mkdir()
    for i in range(3):
        Image.new("L", (16, 16), i).save(ref / f"{i}.png")
    argv = ["--model", str(model_dir), "--metrics", "fid", "--reference", str(ref), "--out", str(tmp_path / "e")]
    refused(capsys, eval_fid.main, eval_fid.parse_args, argv, "holds 16x16 images, the samples are 8x8")
