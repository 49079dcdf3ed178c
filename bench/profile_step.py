"""Where a training step's time goes: FlashDiT-B/2 with the Iwin mixer against the same model with global
attention, profiled op by op (``torch.profiler``, self CPU time), the two models alternating for several
rounds so machine noise hits both alike; medians per op over the rounds.

    python -m bench.profile_step                     # B/2, 16x16 tokens, batch 2, fused AdamW, 4 rounds
    python -m bench.profile_step --grid 32 --batch 1 --top 30
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from bench.common import latent_train_step, markdown_table, setup
from flashdit import FlashDiTTransformer2DModel

MODELS = {"iwin": {}, "attention": dict(mixer="attention", kernel_size=None, pos_embed="sincos")}


def main(args) -> None:
    machine = setup(args.threads)
    steps = {}
    for name, overrides in MODELS.items():
        torch.manual_seed(0)
        model = FlashDiTTransformer2DModel.from_size(args.size, in_channels=4, sample_size=2 * args.grid, **overrides)
        steps[name] = latent_train_step(model.to(args.device), args.batch, args.grid, args.device, fused=True)[0]
        steps[name]()  # warm-up
    per_op = {name: defaultdict(lambda: [0.0] * args.rounds) for name in MODELS}
    for r in range(args.rounds):
        for name in list(MODELS) if r % 2 == 0 else list(MODELS)[::-1]:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                steps[name]()
            for event in prof.key_averages():
                per_op[name][event.key][r] += event.self_cpu_time_total / 1e3
    ms = {name: {op: statistics.median(v) for op, v in ops.items()} for name, ops in per_op.items()}
    totals = {
        name: statistics.median([sum(v[r] for v in per_op[name].values()) for r in range(args.rounds)])
        for name in MODELS
    }
    ops = sorted(set(ms["iwin"]) | set(ms["attention"]), key=lambda op: -max(ms[n].get(op, 0.0) for n in MODELS))
    print(
        f"# {args.size}, {args.grid}x{args.grid} tokens, batch {args.batch}, fused AdamW, device={args.device} "
        f"{machine} torch={torch.__version__} fp32; "
        f"median of {args.rounds} alternating rounds\n"
    )
    rows = [[op, f"{ms['iwin'].get(op, 0.0):.1f}", f"{ms['attention'].get(op, 0.0):.1f}"] for op in ops[: args.top]]
    rows.append(["**step (all ops)**", f"{totals['iwin']:.1f}", f"{totals['attention']:.1f}"])
    print(markdown_table(["op (self CPU time)", "iwin ms", "attention ms"], rows))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="FlashDiT-B/2")
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--top", type=int, default=15, help="ops to list, by the larger of the two times")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
