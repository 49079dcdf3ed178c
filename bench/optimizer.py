"""AdamW's implementation inside a full training step: PyTorch's per-tensor loop (its CPU default), foreach,
and the fused kernel (what training uses), for FlashDiT-B/2 with the Iwin mixer and with global attention,
measured side by side.

    python -m bench.optimizer                       # B/2 on a 16x16 token grid, batch 2
    python -m bench.optimizer --grid 32 --batch 1
"""

from __future__ import annotations

import argparse

import torch

from bench.common import latent_train_step, markdown_table, setup, time_round_robin
from flashdit import FlashDiTTransformer2DModel

MIXERS = {"iwin": {}, "attention": dict(mixer="attention", kernel_size=None, pos_embed="sincos")}
IMPLEMENTATIONS = {"loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}


def step_case(mixer: str, implementation: str, args):
    torch.manual_seed(0)
    model = FlashDiTTransformer2DModel.from_size(
        args.size, in_channels=4, sample_size=2 * args.grid, **MIXERS[mixer]
    ).to(args.device)
    return latent_train_step(model, args.batch, args.grid, args.device, **IMPLEMENTATIONS[implementation])[0]


def main(args) -> None:
    machine = setup(args.threads)
    cases = {(m, i): step_case(m, i, args) for m in MIXERS for i in IMPLEMENTATIONS}
    seconds = time_round_robin(cases, args.repeats, min_seconds=args.min_seconds)
    print(
        f"# {args.size}, {args.grid}x{args.grid} tokens, batch {args.batch}, device={args.device} "
        f"{machine} torch={torch.__version__} fp32"
    )
    print(f"# median of >= {args.repeats} round-robin steps (>= {args.min_seconds} s each)\n")
    rows = [
        [
            m,
            i,
            f"{seconds[(m, i)]:.3f}",
            f"{seconds[(m, 'loop')] / seconds[(m, i)]:.2f}x",
            f"{seconds[('attention', i)] / seconds[(m, i)]:.2f}x",
        ]
        for m in MIXERS
        for i in IMPLEMENTATIONS
    ]
    print(markdown_table(["mixer", "AdamW", "step s", "speed vs loop", "speed vs attention (same AdamW)"], rows))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="FlashDiT-B/2")
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-seconds", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
