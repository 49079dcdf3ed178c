"""Sample class-conditional images from a FlashDiT pipeline directory.

    python sample.py --model PATH --class-labels 207 360 --cfg 4.0 --steps 50 \\
        --height 256 --width 384 --seed 0 --out samples/

Writes ``grid.png`` (one row per requested label, ``--per-label`` columns) and every image as
``{index:05d}_{label}_{seed}.png``. Image i uses seed ``--seed + i``: the same command gives the same
images whatever ``--batch-size``. Settings left out take the pipeline's stored defaults.
"""

from __future__ import annotations

import argparse
import time

from flashdit.cli import run
from flashdit.pipeline import check_side, load_pipeline
from flashdit.sampling import generate
from flashdit.settings import add_sampling_flags, sampling_flags_given
from flashdit.utils import DTYPES, check_writable, image_grid, save_image


def parse_label(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def check_settings(args: argparse.Namespace) -> dict:
    """The sampling settings given on the command line, checked before the model loads."""
    given = sampling_flags_given(args)
    check_side("height", args.height)
    check_side("width", args.width)
    return given


def main(args: argparse.Namespace) -> list[str]:
    if args.per_label <= 0:
        raise ValueError(f"--per-label must be positive, got {args.per_label}")
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    given = check_settings(args)  # before loading the model
    check_writable(args.out, "--out")
    pipe = load_pipeline(args.model, args.device, args.dtype)
    pipe.set_progress_bar_config(disable=True)
    labels = [parse_label(c) for c in args.class_labels for _ in range(args.per_label)]
    ids = [pipe.get_label_ids(c)[0] if isinstance(c, str) else c for c in labels]
    seeds = [args.seed + i for i in range(len(labels))]
    settings = dict(given, height=args.height, width=args.width)
    images, written = [], []
    start_time = time.perf_counter()
    for start, batch in generate(pipe, ids, seeds, args.batch_size, **settings):
        for offset, image in enumerate(batch):
            i = start + offset
            path = f"{args.out}/{i:05d}_{ids[i]}_{seeds[i]}.png"
            save_image(image, path)
            written.append(path)
            images.append(image)
        print(f"{len(images)}/{len(ids)} images", flush=True)
    save_image(image_grid(images, nrow=args.per_label), f"{args.out}/grid.png")
    print(f"wrote {len(images)} images and {args.out}/grid.png in {time.perf_counter() - start_time:.1f} s")
    return written


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="pipeline directory (or hub id when online)")
    p.add_argument("--class-labels", nargs="+", required=True, help="class ids or names")
    p.add_argument("--per-label", type=int, default=1, help="images per label (one grid row each)")
    p.add_argument("--height", type=int, default=None, help="pixels; default: the training size")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--out", default="samples")
    add_sampling_flags(p)
    return p.parse_args(argv)


if __name__ == "__main__":
    run(main, parse_args())
