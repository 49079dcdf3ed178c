"""Train a FlashDiT model with Hugging Face Accelerate.

    accelerate launch train.py                                    # the Fashion-MNIST quickstart
    accelerate launch train.py --config configs/flashdit_xl_vavae_f16d32.yaml --set train.lr=1e-4
    accelerate launch train.py --config ... --resume              # continue from the newest checkpoint
    python train.py --config ... --export runs/x/checkpoints/step_0010000 --out my-pipeline

The recipe lives in the YAML file (see flashdit/config.py for every key); ``--set section.key=value``
overrides any of it. The run writes checkpoints, sample grids, TensorBoard logs and, at the end, the
EMA weights as a FlashDiTPipeline directory under ``train.output_dir``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flashdit.arguments import ArgumentParser
from flashdit.cli import run
from flashdit.config import load_config
from flashdit.training import export_checkpoint, train

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "fashion_mnist.yaml"


def main(args: argparse.Namespace) -> Path:
    overrides = list(args.set)
    if args.output_dir:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.export:
        # the run's own config (written beside its checkpoints) describes the model, --set overrides included
        run_config = Path(args.export).parent.parent / "config.yaml"
        config = args.config or (run_config if run_config.is_file() else DEFAULT_CONFIG)
        cfg = load_config(config, overrides)
        out = args.out or str(Path(args.export).parent.parent / f"pipeline_{Path(args.export).name}")
        path = export_checkpoint(cfg, args.export, out)
        print(f"exported {args.export} (EMA weights) to {path}")
        return path
    return train(load_config(args.config or DEFAULT_CONFIG, overrides), resume=args.resume)


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--config", default=None, help="YAML recipe (default: the quickstart; with --export: the run's own config)"
    )
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, e.g. train.lr=1e-4")
    p.add_argument("--output-dir", default=None, help="shortcut for --set train.output_dir=...")
    p.add_argument(
        "--resume", nargs="?", const=True, default=None, help="resume from the newest checkpoint, or from PATH"
    )
    p.add_argument("--export", default=None, metavar="CHECKPOINT", help="export a checkpoint's EMA pipeline and exit")
    p.add_argument("--out", default=None, help="with --export: the pipeline directory to write")
    return p.parse_args(argv)


if __name__ == "__main__":
    run(main, parse_args())
