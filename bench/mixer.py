"""Benchmark the Iwin mixer against global and plain-window attention, and a whole FlashDiT-B/2
training step against the same model with global attention.

    python -m bench.mixer                      # dim 384, 6 heads, batch 8, fp32, grids 16² 32² 64²
    python -m bench.mixer --grids 16 32 --model-grids 16 --repeats 3

Prints markdown tables (medians; ratios from the same run) for docs/benchmarks.md. ``FLOP ratio`` is the speed
ratio an implementation bound by arithmetic alone would reach (FLOPs counted on the meta device); ``of FLOP
ratio`` is the measured ratio's share of it. ``iwin-sep`` is the mixer with its branch sum done as before the fused
scatter+sum (the windows scattered into a fresh grid, then the convolution added): the before/after pair. The
model rows time each model with its token-wise linear layers on oneDNN and on PyTorch's BLAS (``--linear-backends``).
The process runs with the CLIs' CPU allocator (``flashdit.allocator``); ``FLASHDIT_CPU_ALLOCATOR=system`` or
``THP_MEM_ALLOC_ENABLE=1`` measures another. At 64² every B/2 model in the round robin holds its parameters and
optimizer state (2 GiB) and the heap keeps the largest step's activations: pass one linear backend per process there.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.common import (
    count_flops,
    latent_train_step,
    latent_train_step_flops,
    markdown_table,
    peak_tensor_mib,
    setup,
    time_round_robin,
)
from flashdit import FlashDiTTransformer2DModel
from flashdit.models.linear import CPU_LINEAR_BACKENDS
from flashdit.models.mixer import IwinMixer, WindowAttention


class SeparateSumIwin(IwinMixer):
    """The mixer before the fused sum: the attention windows scattered into a fresh grid, then the convolution
    added to it. Timed beside the fused mixer for the before/after column."""

    def forward(self, x, rope=None):
        return self.attn(x, rope).add_(self.conv(x))


MIXERS = {
    "global": lambda d, h, m: WindowAttention(d, h, window_size=None),
    "w-msa": lambda d, h, m: WindowAttention(d, h, window_size=m, interleaved=False),
    "iw-msa": lambda d, h, m: WindowAttention(d, h, window_size=m, interleaved=True),
    "iwin-sep": lambda d, h, m: SeparateSumIwin(d, h, window_size=m, kernel_size=3),
    "iwin": lambda d, h, m: IwinMixer(d, h, window_size=m, kernel_size=3),
}
MODELS = {"iwin": dict(mixer="iwin"), "attention": dict(mixer="attention", kernel_size=None, pos_embed="sincos")}


@dataclass
class Case:
    step: Callable[[], None]
    tracked: tuple


def mixer_case(name: str, grid: int, args, device=None) -> Case:
    torch.manual_seed(0)
    device = device or args.device
    module = MIXERS[name](args.dim, args.heads, args.window).to(device)
    x = torch.randn(args.batch, grid, grid, args.dim, device=device, requires_grad=True)

    def step():
        module.zero_grad(set_to_none=True)
        module(x).sum().backward()

    return Case(step, (module, x))


def b2_model(name: str, grid: int, args) -> FlashDiTTransformer2DModel:
    return FlashDiTTransformer2DModel.from_size(
        "FlashDiT-B/2", in_channels=4, sample_size=2 * grid, window_size=args.window, **MODELS[name]
    )


def model_case(name: str, grid: int, args, linear_backend: str) -> Case:
    torch.manual_seed(0)
    model = b2_model(name, grid, args).to(args.device)
    model.set_cpu_linear_backend(linear_backend)
    step, opt, x = latent_train_step(model, args.model_batch, grid, args.device, fused=True)
    return Case(step, (model, opt, x))


def main(args) -> None:
    machine = setup(args.threads)
    print(f"# device={args.device} {machine} torch={torch.__version__} fp32")
    print(f"# mixer: dim {args.dim}, {args.heads} heads, batch {args.batch}, window {args.window}, kernel 3")
    print(
        f"# forward+backward, median of >= {args.repeats} round-robin calls (>= {args.min_seconds} s each); "
        "MiB = peak live tensors incl. inputs\n"
    )

    rows = []
    for grid in args.grids:
        cases = {n: mixer_case(n, grid, args) for n in MIXERS}
        t = time_round_robin({n: c.step for n, c in cases.items()}, args.repeats, min_seconds=args.min_seconds)
        mem = {n: peak_tensor_mib(c.step, *c.tracked) for n, c in cases.items()}
        flops = {n: count_flops(mixer_case(n, grid, args, "meta").step) for n in ("global", "iwin")}
        flop_ratio = flops["global"] / flops["iwin"]
        rows.append(
            [f"{grid}x{grid}"]
            + [f"{t[n] * 1e3:.1f}" for n in MIXERS]
            + [f"{mem[n]:.0f}" for n in MIXERS]
            + [f"{t['global'] / t['iwin']:.2f}x", f"{flop_ratio:.2f}x"]
            + [f"{t['iwin'] / t['w-msa']:.2f}", f"{t['iw-msa'] / t['w-msa']:.2f}"]
            + [f"{t['global'] / t['iwin-sep']:.2f}x", f"{t['iwin-sep'] / t['iwin']:.2f}x"]
        )
        print(f"  grid {grid}: " + ", ".join(f"{n} {t[n] * 1e3:.1f} ms" for n in t), flush=True)
    header = (
        ["grid"]
        + [f"{n} ms" for n in MIXERS]
        + [f"{n} MiB" for n in MIXERS]
        + ["global / iwin", "FLOP ratio", "iwin / w-msa", "iw-msa / w-msa"]
        + ["global / iwin-sep", "iwin-sep / iwin"]
    )
    print("\n## Mixer forward+backward\n")
    print(markdown_table(header, rows))

    if not args.model_grids:
        return
    rows = []
    for grid in args.model_grids:
        keys = [(n, b) for b in args.linear_backends for n in MODELS]
        cases = {(n, b): model_case(n, grid, args, b) for n, b in keys}
        t = time_round_robin(
            {k: c.step for k, c in cases.items()}, args.model_repeats, min_seconds=args.model_min_seconds
        )
        mem = {k: peak_tensor_mib(c.step, *c.tracked) for k, c in cases.items()}
        flops = {
            n: latent_train_step_flops(lambda n=n, grid=grid: b2_model(n, grid, args), args.model_batch, grid)
            for n in MODELS
        }
        flop_ratio = flops["attention"] / flops["iwin"]
        for b in args.linear_backends:
            speed = t["attention", b] / t["iwin", b]
            rows.append(
                [f"{grid}x{grid} ({2 * grid}x{2 * grid} latent)", b]
                + [f"{t[n, b]:.2f}" for n in MODELS]
                + [f"{mem[n, b]:.0f}" for n in MODELS]
                + [f"{speed:.2f}x", f"{flop_ratio:.2f}x", f"{speed / flop_ratio:.0%}"]
            )
        print(f"  model grid {grid}: " + ", ".join(f"{n} ({b}) {t[n, b]:.2f} s" for n, b in t), flush=True)
    print(f"\n## FlashDiT-B/2 train step (batch {args.model_batch}, fused AdamW, 4 latent channels)\n")
    header = ["token grid", "linear", "iwin s", "attention s", "iwin MiB", "attention MiB", "attention / iwin"]
    header += ["FLOP ratio", "of FLOP ratio"]
    print(markdown_table(header, rows))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grids", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--model-grids", type=int, nargs="*", default=[16, 32, 64])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--model-batch", type=int, default=2)
    p.add_argument(
        "--linear-backends",
        nargs="+",
        choices=CPU_LINEAR_BACKENDS,
        default=list(CPU_LINEAR_BACKENDS),
        help="model rows: the token-wise linear layers on oneDNN, PyTorch's BLAS, or both side by side",
    )
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--model-repeats", type=int, default=3)
    p.add_argument(
        "--model-min-seconds", type=float, default=0.0, help="model rows: time each model at least this long"
    )
    p.add_argument("--min-seconds", type=float, default=2.0, help="mixer rows: time each variant at least this long")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
