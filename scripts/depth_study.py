"""The depth study: does the Iwin mixer match global attention once it has the depth? (docs/study.md)

At depth 4 with window 4 a corner token hears the whole 16x16 grid only after the fourth block; global attention
hears it after one. This study trains, on the quickstart's recipe (configs/fashion_mnist.yaml: pixel-space
Fashion-MNIST, batch 32, the same steps for every row) at the paper's 16x16 token grid (patch 2), global
attention and FlashDiT at depth 4 and 8 with about equal parameters (width 128 at depth 4, 96 at depth 8: 1.27M
and 1.40M), FlashDiT with window 8 at depth 8, and the depthwise convolution alone at depth 8. Every row trains with
each seed; one seed gives every row the same data order, label dropout, noise and t (flashdit.training draws them
from a stream seeded after the model is built).

Stages, each skipped when its output exists (an interrupted study resumes; a run directory made with other
settings is refused, never mixed):

1. train: ``<out>/<row>-s<seed>/pipeline`` (EMA weights) and ``train.json`` (steps, wall seconds, and the seconds
   of steps from the training log, which survive a stop and ``--resume``).
2. sweep: guidance 1-4 on ``--sweep-samples`` samples of seed 0's run (Euler ``--sample-steps``), whichever
   seeds a sitting runs: a sitting of other seeds only needs seed 0's sweep recorded.
3. confirm: every seed at its row's best scale on ``--num-samples`` samples: FID and KID against real test
   images, class accuracy by the judge CNN.
4. large: FID at 2x the training grid (64 px) on ``--num-samples-large`` samples, against real test images padded
   to 64 px: the garment centred on a black canvas, as the data are padded. A position-free model sampled on a
   larger grid can be asked for exactly that; a resized or cropped reference would ask for a scale or a layout
   it never saw.
5. loss: held-out flow-matching MSE per t on real test images (same images, noise and t for every run) at 1x,
   1.5x and 2x, over the central 32x32 (where the garment is at every size).
6. speed: training images/s of every row, measured side by side (round robin) in one process.

    python -m scripts.depth_study                                     # everything (~6 h of training on 2 cores)
    python -m scripts.depth_study --only attention-d8 flashdit-d8-win4   # some rows (processes may share --out)
    python -m scripts.depth_study --report-only                      # tables and figures from what has finished

Tables go to ``<out>/tables.md`` (mean ± half the spread over seeds), figures to docs/images/depth_study_*.png.
The default ``--out`` is docs/depth_study, whose .gitignore keeps each run's records (spec, training time, scores,
held-out loss) and leaves out weights and checkpoints: commit it as rows finish, and a sitting on a fresh checkout
skips what is recorded and retrains a run only for the stages it still lacks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import latent_train_step_flops, time_round_robin
from flashdit.checkpoint import checkpoint_step, find_resume_checkpoint
from flashdit.classifier import class_accuracy, fashion_mnist_classifier
from flashdit.config import load_config, to_dict
from flashdit.data import load_idx_split, pad_and_scale, pad_images
from flashdit.evaluation import (
    InceptionFeatures,
    Reference,
    balanced_labels,
    compute_metrics,
    held_out_flow_loss,
    load_reference,
)
from flashdit.pipeline import load_pipeline
from flashdit.sampling import generate
from flashdit.training import build_model, flat_dict, make_train_step, train
from flashdit.utils import atomic_path

ROOT = Path(__file__).resolve().parent.parent

ATTENTION = ["model.mixer=attention", "model.kernel_size=null", "model.pos_embed=sincos"]
IWIN = ["model.mixer=iwin", "model.kernel_size=3", "model.pos_embed=none"]
# the paper's 16x16 token grid (patch 2 on 32 px), whatever patch the quickstart config uses: the question is how
# many blocks a window-4 mixer needs to cover that grid
GRID16 = ["model.patch_size=2", "model.num_heads=2"]
D4 = GRID16 + ["model.hidden_size=128", "model.depth=4"]
D8 = GRID16 + ["model.hidden_size=96", "model.depth=8"]  # 1.40M parameters against D4's 1.27M
ROWS = {
    "attention-d4": ("global attention + sin-cos, depth 4", ATTENTION + D4),
    "flashdit-d4-win4": ("FlashDiT (DWConv + IW-MSA), window 4, depth 4", IWIN + D4 + ["model.window_size=4"]),
    "attention-d8": ("global attention + sin-cos, depth 8", ATTENTION + D8),
    "flashdit-d8-win4": ("FlashDiT, window 4, depth 8", IWIN + D8 + ["model.window_size=4"]),
    "flashdit-d8-win8": ("FlashDiT, window 8, depth 8", IWIN + D8 + ["model.window_size=8"]),
    "conv-d8": ("DWConv alone, depth 8", ["model.mixer=conv", "model.kernel_size=3", "model.pos_embed=none"] + D8),
}
GUIDANCE = (1.0, 1.5, 2.0, 3.0, 4.0)
SIZES = (32, 48, 64)  # pixels: the training grid (16x16 tokens), 1.5x and 2x
LOSS_TIMES = {"near noise": (0.05, 0.15), "middle": (0.4, 0.5, 0.6), "near data": (0.85, 0.95)}
INFO = dict(channels=1, size=32, num_classes=10)
SWEEP_SEED = 0  # the run whose guidance sweep picks every seed's scale


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def read_scores(out: Path) -> list[dict]:
    path = out / "scores.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def run_dir(row: str, seed: int, args) -> Path:
    return Path(args.out) / f"{row}-s{seed}"


# The sampling settings the quickstart stored when the study ran (its pipelines export them; every score below
# samples with its own Euler steps): pinned, so the recipe, and each run's spec, stay what they were since the
# quickstart stores UniPC at 6 steps (docs/few_step.md).
SAMPLING = ["sample.sampler=euler", "sample.num_inference_steps=32", "sample.timestep_shift=0.5"]


def row_config(row: str, seed: int, args, out: Path | None = None):
    overrides = (
        ROWS[row][1]
        + SAMPLING
        + [
            f"train.max_steps={args.steps}",
            f"train.seed={seed}",
            "train.sample_every=0",
            f"train.checkpoint_every={max(1, args.steps // 4)}",
            "train.keep_checkpoints=1",
            "train.trackers=[]",
        ]
    )
    if out is not None:
        overrides.append(f"train.output_dir={out}")
    return load_config(ROOT / "configs" / "fashion_mnist.yaml", overrides)


def run_spec(row: str, seed: int, args) -> dict:
    """What a run directory was made with: its row and the whole resolved recipe (the quickstart config with the
    row's changes), so that a sitting after the shipped recipe changed refuses the old runs instead of mixing them."""
    config = to_dict(row_config(row, seed, args))
    del config["train"]["output_dir"]
    return json.loads(json.dumps({"row": row, "seed": seed, "steps": args.steps, "config": config}))


def check_spec(out: Path, spec: dict) -> None:
    """Refuse a run directory made with other settings: its results would be mixed with these."""
    path = out / "spec.json"
    old = read_json(path)
    if old is not None and old != spec:
        was, now = flat_dict(old), flat_dict(spec)
        diffs = [
            f"{k}={was.get(k, '(unset)')} there, {now.get(k, '(unset)')} now"
            for k in sorted({*was, *now})
            if was.get(k) != now.get(k)
        ]
        more = f" and {len(diffs) - 4} more" if len(diffs) > 4 else ""
        raise SystemExit(
            f"depth_study.py: error: {out} was made with other settings ({'; '.join(diffs[:4])}{more}); "
            "delete it or use another --out"
        )
    if old is None:
        write_json(path, spec)


# --------------------------------------------------------------------------------------------
# stages


def train_run(row: str, seed: int, args) -> dict:
    """Train the run unless its record exists. The record (``train.json``) and every score are kept in git; the
    weights are not (docs/depth_study/.gitignore), so a later sitting on another machine finds the record without
    the pipeline and retrains only if a stage still needs it (:func:`trained_pipeline`)."""
    out = run_dir(row, seed, args)
    check_spec(out, run_spec(row, seed, args))
    record = read_json(out / "train.json")
    if record is not None:
        return record
    return _train(row, seed, args)


def seconds_of_steps(metrics: Path, batch: int) -> float:
    """The training's own time in its steps, summed over the log windows of ``metrics.jsonl`` (each window's steps
    over its images/s): unlike a wall clock it survives a run that was stopped and resumed from a checkpoint."""
    seconds, last = 0.0, 0
    for line in metrics.read_text().splitlines():
        entry = json.loads(line)
        if "images_per_sec" in entry:
            seconds += (entry["step"] - last) * batch / entry["images_per_sec"]
            last = entry["step"]
    return seconds


def _train(row: str, seed: int, args) -> dict:
    out = run_dir(row, seed, args)
    cfg = row_config(row, seed, args, out)
    resumed = find_resume_checkpoint(out, True)
    start = time.perf_counter()
    train(cfg, resume=True)
    wall = round(time.perf_counter() - start, 1)
    steps = seconds_of_steps(out / "metrics.jsonl", cfg.train.global_batch_size)
    sitting = {"wall_seconds": wall, "step_seconds": round(steps, 1)}
    if resumed is not None:  # an earlier sitting was stopped: this wall clock covers only the steps after it
        sitting["resumed_at_step"] = checkpoint_step(resumed)
    record = read_json(out / "train.json")
    if record is None:
        record = {"steps": args.steps, **sitting}
    else:  # the weights were gone: the same recipe and seed trained again; the first sitting's time is kept
        record["retrained"] = [*record.get("retrained", []), sitting]
    write_json(out / "train.json", record)
    return record


def trained_pipeline(row: str, seed: int, args) -> Path:
    """The run's pipeline directory, trained again first when only its record survived (a fresh checkout)."""
    out = run_dir(row, seed, args)
    if not (out / "pipeline" / "model_index.json").is_file():
        print(f"== {row} seed {seed}: weights not here (records only); training again for the stages left", flush=True)
        check_spec(out, run_spec(row, seed, args))
        _train(row, seed, args)
    return out / "pipeline"


_CACHE: dict = {}


def inception() -> InceptionFeatures:
    if "inception" not in _CACHE:
        _CACHE["inception"] = InceptionFeatures()
    return _CACHE["inception"]


def reference(size: int, args) -> Reference:
    """The first ``--num-reference`` real test images, padded to ``size`` like the training data."""
    path = Path(args.out) / f"reference_test_{size}px_{args.num_reference}.npz"
    if path.is_file():
        return load_reference(path)
    images = pad_images(load_idx_split(None, "test")[0][: args.num_reference], size)
    ref = Reference.from_features(
        inception()(images)["pool"], f"fashion-mnist:test[:{args.num_reference}]", [size] * 2
    )
    ref.save(path)
    return ref


def score(row: str, seed: int, guidance: float, n: int, size: int, args) -> dict:
    """FID/KID against real test images at ``size`` and class accuracy (on the central 32x32) of ``n`` samples;
    appended to the run's scores.jsonl, read back when already there."""
    out = run_dir(row, seed, args)
    key = json.dumps({"guidance": guidance, "n": n, "size": size, "steps": args.sample_steps}, sort_keys=True)
    done = {r["key"]: r for r in read_scores(out)}
    if key in done:
        return done[key]
    pipe = load_pipeline(str(trained_pipeline(row, seed, args)), args.device)
    pipe.set_progress_bar_config(disable=True)
    labels = balanced_labels(n, 10)
    start = time.perf_counter()
    call = dict(guidance_scale=guidance, num_inference_steps=args.sample_steps, sampler="euler", height=size)
    call |= dict(width=size, timestep_shift=1.0, guidance_interval=[0.0, 1.0])
    images = []
    with torch.no_grad():
        for _, batch in generate(pipe, labels, list(range(n)), args.batch_size, output_type="np", **call):
            images.extend(batch)
    images = (np.clip(np.stack(images), 0, 1) * 255).round().astype(np.uint8)
    metrics = compute_metrics(inception()(images), reference(size, args), ["fid", "kid"], min(1000, n))
    crop = (size - SIZES[0]) // 2
    judge, judge_acc = fashion_mnist_classifier()
    acc = class_accuracy(judge, images[:, crop : crop + SIZES[0], crop : crop + SIZES[0]], np.asarray(labels))
    result = {
        "key": key,
        "guidance": guidance,
        "num_samples": n,
        "size": size,
        "fid": round(metrics["fid"], 2),
        "kid": round(metrics["kid_mean"], 5),
        "class_accuracy": round(acc["class_accuracy"], 4),
        "judge_test_accuracy": judge_acc,
        "seconds": round(time.perf_counter() - start, 1),
    }
    with open(out / "scores.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    return result


def best_guidance(row: str, args) -> float | None:
    """The scale with the lowest FID in seed 0's sweep (None until the sweep has run)."""
    rows = read_scores(run_dir(row, SWEEP_SEED, args))
    sweep = [r for r in rows if r["num_samples"] == args.sweep_samples and r["size"] == SIZES[0]]
    if {r["guidance"] for r in sweep} < set(GUIDANCE):
        return None
    return min(sweep, key=lambda r: r["fid"])["guidance"]


def held_out_loss(row: str, seed: int, args) -> dict:
    """Held-out flow MSE per t at every size, over the central 32x32, mean per group of t."""
    out = run_dir(row, seed, args)
    path = out / "loss.json"
    if path.is_file():
        return read_json(path)
    model = load_pipeline(str(trained_pipeline(row, seed, args)), "cpu").transformer.eval()
    images, labels = load_idx_split(None, "test")
    images, labels = images[: args.loss_images], torch.from_numpy(labels[: args.loss_images]).long()
    times = [t for group in LOSS_TIMES.values() for t in group]
    result = {}
    with torch.no_grad():
        for size in SIZES:
            per_t = held_out_flow_loss(model, pad_and_scale(images, size), labels, times, seed=0, crop=SIZES[0])
            result[f"{size}px"] = {g: statistics.mean(per_t[t]["mse"] for t in ts) for g, ts in LOSS_TIMES.items()}
            result[f"{size}px"]["all"] = statistics.mean(v["mse"] for v in per_t.values())
    write_json(path, result)
    return result


def throughput(rows: list[str], args) -> dict:
    """Training images/s of each row's step (EMA included), timed round robin in one process."""
    path = Path(args.out) / "throughput.json"
    done = read_json(path) or {}
    todo = [r for r in rows if r not in done]
    if todo:
        cfgs = {r: row_config(r, 0, args) for r in rows}
        steps = {r: make_train_step(cfgs[r], INFO, torch.device(args.device)) for r in rows}
        seconds = time_round_robin(steps, repeats=5, min_seconds=5.0)
        batch = cfgs[rows[0]].train.global_batch_size
        done = {r: {"step_seconds": round(s, 4), "images_per_second": round(batch / s, 1)} for r, s in seconds.items()}
        write_json(path, done)
    return done


def train_flops(row: str, args) -> int:
    """FLOPs of the training run: steps x batch x one image's forward+backward (counted on the meta device)."""
    cfg = row_config(row, 0, args)
    per_image = latent_train_step_flops(lambda: build_model(cfg.model, INFO), 1, INFO["size"] // 2, INFO["channels"])
    return per_image * cfg.train.global_batch_size * args.steps


# --------------------------------------------------------------------------------------------
# report


def mean_spread(values: list[float], spec: str) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(statistics.mean(values), spec)} ± {format((max(values) - min(values)) / 2, spec)}"


def find_score(scores: list[dict], guidance: float | None, n: int, size: int) -> dict | None:
    return next((s for s in scores if (s["guidance"], s["num_samples"], s["size"]) == (guidance, n, size)), None)


def collect(args) -> dict:
    """Every finished stage of every row, read back from the run directories."""
    results = {}
    for row in ROWS:
        g = best_guidance(row, args)
        per_seed = []
        for seed in args.seeds:
            out = run_dir(row, seed, args)
            if not (out / "train.json").is_file():
                continue
            scores = read_scores(out)
            per_seed.append(
                {
                    "seed": seed,
                    "train": read_json(out / "train.json"),
                    "confirm": find_score(scores, g, args.num_samples, SIZES[0]),
                    "large": find_score(scores, g, args.num_samples_large, SIZES[-1]),
                    "loss": read_json(out / "loss.json"),
                }
            )
        if per_seed:
            results[row] = {"guidance": g, "seeds": per_seed}
    return results


def report(results: dict, args) -> Path:
    speed = read_json(Path(args.out) / "throughput.json") or {}
    n, nl = args.num_samples, args.num_samples_large
    lines = [
        f"| row | params | best guidance | FID-{n} | KID | class accuracy | FID-{nl} at 2x | train img/s | "
        f"{args.steps} steps take | train TFLOP |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, r in results.items():
        confirm = [s["confirm"] for s in r["seeds"] if s["confirm"]]
        large = [s["large"] for s in r["seeds"] if s["large"]]
        ips = speed.get(row, {}).get("images_per_second")
        took = f"{args.steps * speed[row]['step_seconds'] / 60:.1f} min" if row in speed else "—"
        params = build_model(row_config(row, 0, args).model, INFO).num_parameters()
        lines.append(
            f"| {ROWS[row][0]} | {params / 1e6:.2f}M | {r['guidance'] if r['guidance'] else '—'} "
            f"| {mean_spread([c['fid'] for c in confirm], '.1f')} | {mean_spread([c['kid'] for c in confirm], '.4f')} "
            f"| {mean_spread([c['class_accuracy'] for c in confirm], '.3f')} "
            f"| {mean_spread([c['fid'] for c in large], '.1f')} | {ips or '—'} | {took} "
            f"| {train_flops(row, args) / 1e12:.1f} |"
        )
    lines += [
        "",
        "Held-out flow MSE over the central 32x32 (mean ± half the spread over seeds):",
        "",
        "| row | " + " | ".join(f"{g}, {SIZES[0]}px" for g in LOSS_TIMES) + " | all t, 48px | all t, 64px |",
        "|---|" + "---|" * (len(LOSS_TIMES) + 2),
    ]
    for row, r in results.items():
        losses = [s["loss"] for s in r["seeds"] if s["loss"]]
        cells = [mean_spread([v[f"{SIZES[0]}px"][g] for v in losses], ".4f") for g in LOSS_TIMES]
        cells += [mean_spread([v[f"{s}px"]["all"] for v in losses], ".4f") for s in SIZES[1:]]
        lines.append(f"| {ROWS[row][0]} | " + " | ".join(cells) + " |")
    table = Path(args.out) / "tables.md"
    table.write_text("\n".join(lines) + "\n")
    return table


def figures(results: dict, args) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, len(LOSS_TIMES), figsize=(11, 3.4), dpi=110)
    for family, rows in {
        "global attention": ["attention-d4", "attention-d8"],
        "FlashDiT window 4": ["flashdit-d4-win4", "flashdit-d8-win4"],
        "FlashDiT window 8": ["flashdit-d8-win8"],
        "DWConv alone": ["conv-d8"],
    }.items():
        for ax, group in zip(axes, LOSS_TIMES):
            pts = [
                (
                    int(row.split("-d")[1][0]),
                    [s["loss"][f"{SIZES[0]}px"][group] for s in results[row]["seeds"] if s["loss"]],
                )
                for row in rows
                if row in results
            ]
            pts = [(d, v) for d, v in pts if v]
            if pts:
                ax.errorbar(
                    [d for d, _ in pts],
                    [statistics.mean(v) for _, v in pts],
                    yerr=[(max(v) - min(v)) / 2 for _, v in pts],
                    marker="o",
                    capsize=3,
                    label=family,
                )
    for ax, group in zip(axes, LOSS_TIMES):
        ax.set_title(f"held-out MSE, {group}")
        ax.set_xlabel("depth")
        ax.set_xticks([4, 8])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    paths.append(ROOT / "docs" / "images" / "depth_study_loss.png")
    fig.savefig(paths[-1])

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for row, r in results.items():
        fids = [s["confirm"]["fid"] for s in r["seeds"] if s["confirm"]]
        if fids:
            flops = train_flops(row, args) / 1e12
            ax.errorbar(
                flops,
                statistics.mean(fids),
                yerr=(max(fids) - min(fids)) / 2,
                marker="o",
                capsize=3,
                label=ROWS[row][0],
            )
    ax.set_xlabel("training TFLOP")
    ax.set_ylabel(f"FID-{args.num_samples} at the best guidance")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(ROOT / "docs" / "images" / "depth_study_compute.png")
    fig.savefig(paths[-1])
    return paths


# --------------------------------------------------------------------------------------------


def main(args) -> None:
    torch.set_num_threads(args.threads)
    rows = args.only or list(ROWS)
    if not args.report_only:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        for row in rows:  # one run at a time, each finished before the next trains: an interrupted study loses
            for seed in sorted(set(args.seeds)):  # at most one run's weights (they are not kept in git)
                print(f"== {row} seed {seed}: train", flush=True)
                train_run(row, seed, args)
                if seed == SWEEP_SEED:
                    for g in GUIDANCE:
                        print(f"== {row}: sweep guidance {g} ({args.sweep_samples} samples)", flush=True)
                        score(row, seed, g, args.sweep_samples, SIZES[0], args)
                g = best_guidance(row, args)
                print(
                    f"== {row} seed {seed}: guidance {g}, {args.num_samples} samples; 2x grid; held-out loss",
                    flush=True,
                )
                score(row, seed, g, args.num_samples, SIZES[0], args)
                score(row, seed, g, args.num_samples_large, SIZES[-1], args)
                held_out_loss(row, seed, args)
        if args.throughput:
            throughput(list(ROWS), args)
    results = collect(args)
    if not results:
        raise SystemExit(f"depth_study.py: error: no trained runs in {args.out} yet; run without --report-only first")
    if not args.no_figures:
        figures(results, args)
    print(report(results, args).read_text())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out", default="docs/depth_study", help="records and tables (kept in git; weights and checkpoints are not)"
    )
    p.add_argument("--only", nargs="*", choices=list(ROWS), default=None, help="rows to run (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=2300, help="training steps of every run (30 minutes at patch 2)")
    p.add_argument("--sweep-samples", type=int, default=300, help="samples per guidance scale in the sweep")
    p.add_argument("--num-samples", type=int, default=1000, help="samples at the best scale, per seed")
    p.add_argument("--num-samples-large", type=int, default=300, help="samples at 2x the training grid")
    p.add_argument("--num-reference", type=int, default=2000, help="real test images per reference")
    p.add_argument("--sample-steps", type=int, default=50, help="Euler steps")
    p.add_argument("--loss-images", type=int, default=500, help="real test images for the held-out loss")
    p.add_argument("--batch-size", type=int, default=100, help="images per sampling call")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--throughput", action="store_true", help="measure every row's training images/s side by side")
    p.add_argument("--report-only", action="store_true", help="no training or sampling: tables and figures only")
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    args = p.parse_args(argv)
    for flag in ("steps", "sweep_samples", "num_samples", "num_samples_large", "num_reference", "sample_steps"):
        if getattr(args, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if min(args.seeds) < 0:
        p.error(f"--seeds must be non-negative, got {min(args.seeds)}")
    if not args.report_only and SWEEP_SEED not in args.seeds:
        unswept = [row for row in args.only or ROWS if best_guidance(row, args) is None]
        if unswept:
            p.error(
                f"--seeds {' '.join(map(str, args.seeds))}: {', '.join(unswept)} has no guidance sweep yet, and the "
                f"sweep runs on seed {SWEEP_SEED}'s run; add seed {SWEEP_SEED}"
            )
    return args


if __name__ == "__main__":
    main(parse_args())
