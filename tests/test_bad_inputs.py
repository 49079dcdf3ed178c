"""Bad input and interruptions through the command lines: every user error is one line naming the argument
and exits with status 2; nothing the user had is lost; nothing stale is reused silently."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_pipeline import pixel_pipe
from test_training import cfg_args

import eval_fid
import sample
import train as train_script
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
    assert proc.stderr.strip().splitlines() == ["train.py: error: train.max_steps=0 must be greater than or equal to 1"]


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
        (["--out", "/proc/version/sub"], "--out /proc/version/sub is not writable"),
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
    user_error(capsys, eval_fid.main, eval_fid.parse_args, bad_out, "is not writable")
    zero = [*base, "--shard-size", "0"]
    user_error(capsys, eval_fid.main, eval_fid.parse_args, zero, "--shard-size must be positive")


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
