"""Training step cost of the quickstart model at other widths and depths (patch 4, window 4, batch 32, fp32),
measured side by side: what a wider or deeper model costs in steps for the same minutes.

    python -m bench.widths
    python -m bench.widths --repeats 30 --min-seconds 10

One step is the training loop's own (``flashdit.training.make_train_step``: t and noise, forward, loss, backward,
clipping, AdamW, EMA), all models in one process, round robin.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.common import markdown_table, setup, time_round_robin
from flashdit.config import load_config
from flashdit.training import make_train_step

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "width 256, depth 4 (the quickstart)": [],
    "width 320, depth 4, 5 heads": ["model.hidden_size=320", "model.num_heads=5"],
    "width 256, depth 6": ["model.depth=6"],
    "width 384, depth 4, 6 heads": ["model.hidden_size=384", "model.num_heads=6"],
}


def main(args) -> None:
    machine = setup(args.threads)
    info = dict(channels=1, size=32, num_classes=10)
    steps, params = {}, {}
    for name, overrides in MODELS.items():
        batch = f"train.global_batch_size={args.batch}"
        cfg = load_config(ROOT / "configs" / "fashion_mnist.yaml", [*overrides, batch])
        steps[name] = make_train_step(cfg, info, torch.device("cpu"))
        params[name] = steps[name].state.model.num_parameters()
    print(f"# {machine} torch={torch.__version__} fp32, batch {args.batch}")
    print(f"# median of >= {args.repeats} round-robin steps per model (>= {args.min_seconds} s each)\n")
    t = time_round_robin(steps, args.repeats, warmup=2, min_seconds=args.min_seconds)
    base = t[next(iter(MODELS))]
    rows = [[n, f"{params[n] / 1e6:.2f}M", f"{s:.3f}", f"{s / base:.2f}x"] for n, s in t.items()]
    print(markdown_table(["model", "parameters", "s/step", "vs the quickstart"], rows))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32, help="default: the quickstart's")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--min-seconds", type=float, default=6.0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
