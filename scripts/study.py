"""The mixer study: does the Iwin mixer hold up against global attention? (docs/study.md)

Trains the paper's ablation rows as mixers of one model (Fashion-MNIST, pixel space, 16×16 tokens,
same size, steps, seed and optimiser), then scores each at cfg 1.0 and 1.5 (FID against the real test
set, class accuracy) and at 1.5× and 2× the training grid (images padded as the data are).

    python -m scripts.study                         # everything (about 2.5 h on 2 CPU cores); resumable
    python -m scripts.study --only flashdit attention --steps 50 --num-samples 100 --num-samples-large 50  # smoke
    python -m scripts.study --report-only           # rebuild the tables from the finished runs

Each stage is skipped when its output exists, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from flashdit.classifier import class_accuracy, fashion_mnist_classifier
from flashdit.config import load_config
from flashdit.data import load_idx_split, pad_and_scale
from flashdit.evaluation import (
    InceptionFeatures,
    balanced_labels,
    collect_shards,
    compute_metrics,
    held_out_flow_loss,
    load_images,
    load_reference,
    sample_shards,
)
from flashdit.pipeline import load_pipeline
from flashdit.training import make_train_step, train
from flashdit.utils import atomic_path, image_grid, save_image

ROOT = Path(__file__).resolve().parent.parent

# The runs: overrides of configs/fashion_mnist.yaml (the quickstart model), one per ablation row.
RUNS = {
    "attention": (
        "global attention + sin-cos (DiT-style)",
        ["model.mixer=attention", "model.kernel_size=null", "model.pos_embed=sincos"],
    ),
    "conv": ("DWConv", ["model.mixer=conv", "model.kernel_size=3"]),
    "w-msa": ("W-MSA", ["model.mixer=window", "model.kernel_size=null"]),
    "iw-msa": ("IW-MSA", ["model.mixer=iwin", "model.kernel_size=null"]),
    "conv+w-msa": ("DWConv + W-MSA", ["model.mixer=window", "model.kernel_size=3"]),
    "flashdit": ("DWConv + IW-MSA (FlashDiT)", ["model.mixer=iwin", "model.kernel_size=3"]),
}
SIZES = (32, 48, 64)  # pixels: the training grid (16x16 tokens), 1.5x and 2x


def train_run(name: str, args) -> dict:

    out = Path(args.out) / name
    pipe = out / "pipeline"
    record = out / "train_time.json"
    if pipe.is_dir() and record.is_file():
        return json.loads(record.read_text())
    overrides = RUNS[name][1] + [
        f"train.output_dir={out}",
        f"train.max_steps={args.steps}",
        "train.sample_every=0",
        f"train.checkpoint_every={max(1, args.steps // 4)}",
        f"train.seed={args.seed}",
        "train.trackers=[]",
    ]
    cfg = load_config(ROOT / "configs" / "fashion_mnist.yaml", overrides)
    start = time.perf_counter()
    train(cfg, resume=True)
    info = {"wall_seconds": round(time.perf_counter() - start, 1), "steps": args.steps}
    if (out / "checkpoints").is_dir() and not record.is_file():
        write_json(record, info)
    return info


def reference(size: int, args):

    path = Path(args.out) / f"reference_test_{size}px_{args.num_reference}.npz"
    if path.is_file():
        return load_reference(path)
    ref = load_reference(f"fashion-mnist:test:{size}", InceptionFeatures(), limit=args.num_reference, progress=True)
    ref.save(path)
    return ref


def write_json(path: Path, data: dict) -> None:

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def score(images, labels, features: dict, size: int, args) -> dict:
    """FID and KID against the real test set at ``size``, and the judge's class accuracy, which it reads on
    the central 32x32 crop, where the data put the garment."""

    n = len(images)
    metrics = compute_metrics(features, reference(size, args), ["fid", "kid"], kid_subset_size=min(500, n))
    judge, judge_acc = fashion_mnist_classifier()
    crop = (size - SIZES[0]) // 2
    acc = class_accuracy(judge, images[:, crop : crop + SIZES[0], crop : crop + SIZES[0]], labels)
    return {
        "fid": metrics["fid"],
        "kid": metrics["kid_mean"],
        "class_accuracy": acc["class_accuracy"],
        "judge_test_accuracy": judge_acc,
    }


def evaluate(name: str, cfg_scale: float, size: int, args) -> dict:

    out = Path(args.out) / name / f"eval_cfg{cfg_scale}_{size}px"
    result_path = out / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    pipe = load_pipeline(str(Path(args.out) / name / "pipeline"), "cpu")
    pipe.set_progress_bar_config(disable=True)
    n = args.num_samples if size == SIZES[0] else args.num_samples_large
    settings = dict(
        guidance_scale=cfg_scale,
        num_inference_steps=args.sample_steps,
        sampler="euler",
        timestep_shift=1.0,
        guidance_interval=[0.0, 1.0],
        height=size,
        width=size,
        num_samples=n,
        seed=args.seed,
        model=name,
    )
    start = time.perf_counter()
    inception = InceptionFeatures()
    paths = sample_shards(pipe, out, balanced_labels(n, 10), list(range(n)), settings, 250, 50, inception)
    images, labels, feats = collect_shards(paths, with_features=True)
    result = score(images, labels, feats, size, args) | {"seconds": round(time.perf_counter() - start, 1)}
    write_json(result_path, result)
    return result


def val_loss(name: str, args, num_images: int = 200, times=(0.1, 0.3, 0.5, 0.7, 0.9)) -> dict:
    """Held-out flow-matching MSE of the EMA model on real test images, with the same images, noise and t
    for every model: at the training grid (32 px) and at 2x (64 px, the images padded as the data are).
    Less noisy than a 300-sample FID, and it asks directly whether the denoiser still works on a larger
    grid."""
    path = Path(args.out) / name / "val_loss.json"
    if path.is_file():
        return json.loads(path.read_text())

    model = load_pipeline(str(Path(args.out) / name / "pipeline"), "cpu").transformer.eval()
    images, labels = load_idx_split(None, "test")
    images, labels = images[:num_images], torch.from_numpy(labels[:num_images]).long()
    result = {}
    for size in (SIZES[0], SIZES[-1]):
        # the central 32x32: the same pixels at every size (garment + 2 px border)
        per_t = held_out_flow_loss(model, pad_and_scale(images, size), labels, times, args.seed, crop=SIZES[0])
        result[f"{size}px"] = sum(v["mse"] for v in per_t.values()) / len(per_t)
        if size != SIZES[0]:
            result[f"{size}px_border"] = sum(v["border"] for v in per_t.values()) / len(per_t)
    write_json(path, result)
    return result


def real_floor(args) -> dict:
    """The same metrics for real training images (the first N, padded like the samples): the floor a
    perfect model would reach with these sample counts."""

    out = {}
    for size in SIZES:
        path = Path(args.out) / "real" / f"eval_cfg1.5_{size}px" / "result.json"
        if not path.is_file():
            n = args.num_samples if size == SIZES[0] else args.num_samples_large
            images = load_images(f"fashion-mnist:train:{size}", limit=n)
            labels = load_idx_split(None, "train")[1][:n]
            write_json(path, score(images, labels, InceptionFeatures()(images), size, args) | {"num_images": n})
        out[size] = json.loads(path.read_text())
    return out


def throughput(args) -> dict:
    """Training images/s of every run's model, measured side by side (round robin) in one process: the
    runs' own wall times are not comparable when several study processes share the machine."""
    from bench.common import time_round_robin  # the benchmarks' timer

    path = Path(args.out) / "throughput.json"
    if path.is_file():
        return json.loads(path.read_text())

    info, batch = dict(channels=1, size=32, num_classes=10), 64
    overrides = {name: [*RUNS[name][1], f"train.global_batch_size={batch}"] for name in RUNS}
    steps = {
        name: make_train_step(
            load_config(ROOT / "configs" / "fashion_mnist.yaml", overrides[name]), info, torch.device("cpu")
        )
        for name in RUNS
    }
    seconds = time_round_robin(steps, repeats=5, min_seconds=3.0)
    result = {name: {"step_seconds": s, "images_per_second": batch / s} for name, s in seconds.items()}
    write_json(path, result)
    return result


def report(results: dict, args) -> Path:
    """The study's tables (docs/study.md quotes them) as runs/study/tables.md."""
    speed = (
        json.loads((Path(args.out) / "throughput.json").read_text())
        if (Path(args.out) / "throughput.json").is_file()
        else {}
    )

    def sizes_row(label: str, evals: list[dict | None]) -> str:
        def cells(key: str, spec: str) -> list[str]:
            # KID is unbiased, so real-vs-real lands a hair either side of 0: print that as 0
            return ["—" if r is None else format(r[key] if abs(r[key]) >= 5e-4 else 0.0, spec) for r in evals]

        return (
            f"| {label} | "
            + " | ".join(cells("fid", ".1f") + cells("kid", ".3f") + cells("class_accuracy", ".3f"))
            + " |"
        )

    lines = [
        "| mixer | train img/s | 600 steps take | FID cfg 1.0 | FID cfg 1.5 | KID cfg 1.5 "
        "| class acc cfg 1.0 | class acc cfg 1.5 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        e1, e15 = r["eval"]["cfg1.0_32px"], r["eval"]["cfg1.5_32px"]
        # throughput measured side by side (the runs' own wall times depend on what else ran beside them)
        ips = f"{speed[name]['images_per_second']:.1f}" if name in speed else "—"
        took = f"{r['train']['steps'] * speed[name]['step_seconds'] / 60:.1f} min" if name in speed else "—"
        lines.append(
            f"| {RUNS[name][0]} | {ips} | {took} | {e1['fid']:.1f} | "
            f"{e15['fid']:.1f} | {e15['kid']:.3f} | {e1['class_accuracy']:.3f} | "
            f"{e15['class_accuracy']:.3f} |"
        )
    lines += [
        "",
        "| mixer | FID 32px (train grid) | FID 48px (1.5x) | FID 64px (2x) | KID 32 | KID 48 | KID 64 "
        "| class acc 32 | class acc 48 | class acc 64 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(sizes_row(RUNS[name][0], [r["eval"].get(f"cfg1.5_{s}px") for s in SIZES]))
    real = [Path(args.out) / "real" / f"eval_cfg1.5_{s}px" / "result.json" for s in SIZES]
    if all(p.is_file() for p in real):
        lines.append(sizes_row("real training images (the floor)", [json.loads(p.read_text()) for p in real]))
    val = {
        n: json.loads((Path(args.out) / n / "val_loss.json").read_text())
        for n in results
        if (Path(args.out) / n / "val_loss.json").is_file()
    }
    if val:
        lines += [
            "",
            "| mixer | held-out MSE 32px (train grid) | 64px (2x), central 32x32 | 64px / 32px | 64px, added border |",
            "|---|---|---|---|---|",
        ]
        for name, v in val.items():
            lines.append(
                f"| {RUNS[name][0]} | {v['32px']:.4f} | {v['64px']:.4f} | {v['64px'] / v['32px']:.2f} "
                f"| {v['64px_border']:.4f} |"
            )
    table = Path(args.out) / "tables.md"
    table.write_text("\n".join(lines) + "\n")
    return table


def loss_plot(names: list[str], args) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name in names:
        # a resumed run logs again from its checkpoint: keep the last entry per step
        rows = {
            r["step"]: r for r in map(json.loads, (Path(args.out) / name / "metrics.jsonl").read_text().splitlines())
        }
        steps = sorted(rows)
        mse = [rows[s]["mse"] for s in steps]
        k = 3  # moving average over log points (each is one batch of 64)
        smooth = [sum(mse[max(0, i - k + 1) : i + 1]) / len(mse[max(0, i - k + 1) : i + 1]) for i in range(len(mse))]
        ax.plot(steps, smooth, label=RUNS[name][0])
    ax.set_xlabel("step (batch 64)")
    ax.set_ylabel("flow-matching MSE (moving average)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = ROOT / "docs" / "images" / "study_loss.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def sample_grids(names: list[str], args) -> list[Path]:

    paths = []
    for size in SIZES:
        rows = []
        for name in names:
            pipe = load_pipeline(str(Path(args.out) / name / "pipeline"), "cpu")
            pipe.set_progress_bar_config(disable=True)
            import torch

            gens = [torch.Generator().manual_seed(i) for i in range(10)]
            rows += pipe(
                list(range(10)),
                guidance_scale=1.5,
                num_inference_steps=args.sample_steps,
                height=size,
                width=size,
                generator=gens,
            ).images
        path = ROOT / "docs" / "images" / f"study_samples_{size}px.png"
        save_image(image_grid(rows, nrow=10), path)
        paths.append(path)
    return paths


EVALS = [(1.0, 32), (1.5, 32), (1.5, 48), (1.5, 64)]  # (guidance, pixels)


def collect(names: list[str], args) -> dict:
    """Every finished stage, read back from the runs' own files (so several study processes, each with its
    own ``--only`` list, can share one ``--out``)."""
    results = {}
    for name in names:
        run = Path(args.out) / name
        if not (run / "train_time.json").is_file():
            continue
        evals = {}
        for cfg_scale, size in EVALS:
            path = run / f"eval_cfg{cfg_scale}_{size}px" / "result.json"
            if path.is_file():
                evals[f"cfg{cfg_scale}_{size}px"] = json.loads(path.read_text())
        results[name] = {"train": json.loads((run / "train_time.json").read_text()), "eval": evals}
    return results


def main(args) -> None:
    names = args.only or list(RUNS)
    if not args.report_only:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        for name in names:  # train and score one run at a time, so an interrupted study keeps finished rows
            print(f"== {name}: train", flush=True)
            train_run(name, args)
            for cfg_scale, size in EVALS:
                if size != SIZES[0] and args.large_for is not None and name not in args.large_for:
                    continue
                print(f"== {name}: cfg {cfg_scale} at {size}px", flush=True)
                evaluate(name, cfg_scale, size, args)
    finished = [n for n in RUNS if (Path(args.out) / n / "pipeline").is_dir()]
    if not args.no_figures:
        sample_grids(finished, args)
        loss_plot(finished, args)
    if args.throughput:
        throughput(args)
    if args.real:
        real_floor(args)
    if args.val_loss:
        for name in finished:
            val_loss(name, args)
    results = collect(list(RUNS), args)
    done = {k: v for k, v in results.items() if "cfg1.0_32px" in v["eval"] and "cfg1.5_32px" in v["eval"]}
    if not done:
        raise SystemExit(f"study.py: error: no scored runs in {args.out} yet; run without --report-only first")
    print(report(done, args).read_text())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/study")
    p.add_argument("--only", nargs="*", choices=list(RUNS), default=None)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=500, help="samples per FID at the training size")
    p.add_argument("--num-samples-large", type=int, default=300, help="samples per FID at 1.5x and 2x")
    p.add_argument("--num-reference", type=int, default=1000, help="real test images per reference")
    p.add_argument("--sample-steps", type=int, default=16, help="Euler steps")
    p.add_argument(
        "--large-for",
        nargs="*",
        choices=list(RUNS),
        default=None,
        help="runs scored at 1.5x and 2x the training grid (default: all)",
    )
    p.add_argument("--report-only", action="store_true", help="no training or sampling: tables and figures only")
    p.add_argument("--throughput", action="store_true", help="measure every model's training images/s side by side")
    p.add_argument("--real", action="store_true", help="score real training images the same way (the floor)")
    p.add_argument("--val-loss", action="store_true", help="held-out flow loss at 1x and 2x (finished runs)")
    p.add_argument("--no-figures", action="store_true", help="skip the sample grids and the loss plot")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
