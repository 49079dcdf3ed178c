"""Sampling throughput of FlashDiTPipeline: images/s for a small model at 16² and 32² tokens,
Euler vs Heun, guidance everywhere vs LightningDiT's interval (no guidance while t < 0.11).

    python -m bench.sampling                 # FlashDiT-S/2, 4 latent channels, batch 8, 10 steps, cfg 4
    python -m bench.sampling --grids 16 --repeats 5

Latent output (no VAE decode), so the figures are the transformer's and the sampler's.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from bench.common import markdown_table, setup, time_round_robin
from flashdit import FlashDiTTransformer2DModel
from flashdit.pipeline import FlashDiTPipeline

VARIANTS = {
    "euler, cfg all t": dict(sampler="euler", guidance_interval=(0.0, 1.0)),
    "euler, cfg t>=0.11": dict(sampler="euler", guidance_interval=(0.11, 1.0)),
    "heun, cfg all t": dict(sampler="heun", guidance_interval=(0.0, 1.0)),
    "heun, cfg t>=0.11": dict(sampler="heun", guidance_interval=(0.11, 1.0)),
}


def make_call(pipe, labels, args, kwargs):
    def call():
        pipe(labels, guidance_scale=args.cfg, num_inference_steps=args.steps, output_type="latent", **kwargs)

    return call


def main(args) -> None:
    machine = setup(args.threads)
    device = torch.device(args.device)
    print(f"# device={device} {machine} torch={torch.__version__}")
    print(f"# {args.size}, batch {args.batch}, {args.steps} steps, cfg {args.cfg}, median of {args.repeats}\n")
    rows = []
    for grid in args.grids:
        torch.manual_seed(0)
        p = int(args.size.split("/")[1])
        model = FlashDiTTransformer2DModel.from_size(args.size, in_channels=4, sample_size=grid * p).to(device).eval()
        pipe = FlashDiTPipeline(model, FlowMatchEulerDiscreteScheduler())
        pipe.set_progress_bar_config(disable=True)
        labels = list(range(args.batch))
        fns = {name: make_call(pipe, labels, args, kw) for name, kw in VARIANTS.items()}
        t = time_round_robin(fns, args.repeats)
        base = t["euler, cfg all t"]
        for name, kw in VARIANTS.items():
            evals = 2 * args.steps - 1 if kw["sampler"] == "heun" else args.steps  # Heun ends with an Euler step
            rows.append([f"{grid}x{grid}", name, str(evals), f"{args.batch / t[name]:.2f}", f"{base / t[name]:.2f}x"])
        print(f"  grid {grid}: " + ", ".join(f"{n} {args.batch / s:.2f} img/s" for n, s in t.items()), flush=True)
    print()
    print(markdown_table(["token grid", "sampler", "model evals", "images/s", "vs euler cfg all t"], rows))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="FlashDiT-S/2")
    p.add_argument("--grids", type=int, nargs="+", default=[16, 32])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
