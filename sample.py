"""Sample class-conditional images from a FlashDiT pipeline directory.

    python sample.py --model PATH --class-labels 207 360 --cfg 4.0 --steps 50 \\
        --height 256 --width 384 --seed 0 --out samples/

Writes ``grid.png`` (one row per requested label, ``--per-label`` columns) and every image as
``{index:05d}_{label}_{seed}.png``. Image i uses seed ``--seed + i``: the same command gives the same
images whatever ``--batch-size``. Settings left out take the pipeline's stored defaults.

``--out`` may be missing, empty, or hold an earlier sample.py output, which this run replaces (its PNGs carry
a ``flashdit_tool`` text chunk); a directory with any other file is refused before the model loads.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from flashdit.arguments import ArgumentParser, bounded_int
from flashdit.cli import run
from flashdit.outputs import check_output, locked_output, own_files, owned_by, png_info
from flashdit.pipeline import check_side, load_pipeline
from flashdit.sampling import generate
from flashdit.settings import add_sampling_flags, sampling_flags_given
from flashdit.utils import DTYPES, image_grid, save_image

TOOL = "sample.py"
MAX_IMAGES = 100_000


def parse_label(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def check_settings(args: argparse.Namespace) -> dict:
    """The sampling settings given on the command line, checked before the model loads."""
    given = sampling_flags_given(args)
    check_side("height", args.height)
    check_side("width", args.width)
    return given


def main(args: argparse.Namespace) -> list[str]:
    if len(args.class_labels) * args.per_label > MAX_IMAGES:
        raise ValueError(
            f"--class-labels x --per-label = {len(args.class_labels) * args.per_label:,} images; at most "
            f"{MAX_IMAGES:,} per run"
        )
    given = check_settings(args)  # before loading the model
    out = check_output(args.out, owned_by(TOOL), f"{TOOL} output")
    with locked_output(out, "--out"):
        return write_samples(args, out, given)


def write_samples(args: argparse.Namespace, out: Path, given: dict) -> list[str]:
    pipe = load_pipeline(args.model, args.device, args.dtype)
    pipe.set_progress_bar_config(disable=True)
    labels = [parse_label(c) for c in args.class_labels for _ in range(args.per_label)]
    ids = [pipe.get_label_ids(c)[0] if isinstance(c, str) else c for c in labels]
    pipe._label_tensor(ids, "cpu")  # a bad label fails now, before an earlier output is replaced
    seeds = [args.seed + i for i in range(len(labels))]
    earlier = own_files(out, TOOL)
    for path in earlier:  # this run's output replaces the earlier one whole: never a mix of the two
        path.unlink()
    if earlier:
        print(f"replaced the earlier {TOOL} output in {out} ({len(earlier)} files)")
    settings = dict(given, height=args.height, width=args.width)
    images, written = [], []
    start_time = time.perf_counter()
    for start, batch in generate(pipe, ids, seeds, args.batch_size, **settings):
        for offset, image in enumerate(batch):
            i = start + offset
            path = f"{out}/{i:05d}_{ids[i]}_{seeds[i]}.png"
            save_image(image, path, png_info(TOOL))
            written.append(path)
            images.append(image)
        print(f"{len(images)}/{len(ids)} images", flush=True)
    save_image(image_grid(images, nrow=args.per_label), out / "grid.png", png_info(TOOL))
    print(f"wrote {len(images)} images and {out / 'grid.png'} in {time.perf_counter() - start_time:.1f} s")
    return written


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="pipeline directory (or hub id when online)")
    p.add_argument("--class-labels", nargs="+", required=True, help="class ids or names")
    p.add_argument(
        "--per-label", type=bounded_int(1, MAX_IMAGES), default=1, help="images per label (one grid row each)"
    )
    p.add_argument("--height", type=int, default=None, help="pixels; default: the training size")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--seed", type=bounded_int(0, 2**63 - 1 - MAX_IMAGES), default=0, help="image i uses seed + i")
    p.add_argument("--batch-size", type=bounded_int(1, 65_536), default=16)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--out", default="samples")
    add_sampling_flags(p)
    return p.parse_args(argv)


if __name__ == "__main__":
    run(main, parse_args())
