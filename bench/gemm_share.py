"""How much of this machine's matrix-multiply throughput the model's forward pass achieves.

    python -m bench.gemm_share                     # FlashDiT-B/2 and its attention twin, 16x16 and 32x32 tokens
    python -m bench.gemm_share --size FlashDiT-S/2 --grids 16 --batch 8

Peak: the best median FLOP/s of fp32 matmuls, a square one and the model's own largest GEMM shape (the MLP), each
through PyTorch's BLAS (``torch.mm``) and through oneDNN (``flashdit.models.linear.linear_as_conv``). Achieved: the
forward's FLOPs (counted by ``torch.utils.flop_counter``: matmuls, attention, convolutions) divided by its median
time, with the token-wise linear layers on either backend (``set_cpu_linear_backend``). Everything is timed round
robin in one process, so the ratios are measured side by side.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import markdown_table, setup, time_round_robin
from flashdit import FlashDiTTransformer2DModel
from flashdit.models.linear import CPU_LINEAR_BACKENDS, linear_as_conv

ATTENTION = dict(mixer="attention", kernel_size=None, pos_embed="sincos")


def forward_case(size: str, grid: int, batch: int, device, backend: str, **overrides):
    torch.manual_seed(0)
    model = FlashDiTTransformer2DModel.from_size(size, in_channels=4, sample_size=2 * grid, **overrides)
    model = model.to(device).eval()
    model.set_cpu_linear_backend(backend)
    x = torch.randn(batch, 4, 2 * grid, 2 * grid, device=device)
    t, y = torch.rand(batch, device=device), torch.randint(0, 1000, (batch,), device=device)

    @torch.no_grad()
    def forward():
        model(x, t, y)

    with FlopCounterMode(display=False) as counter:
        forward()
    return forward, counter.get_total_flops(), model.config.hidden_size


def matmul_case(m: int, k: int, n: int, device, backend: str, calls: int = 8):
    """One timed call runs the product ``calls`` times: a single one takes a few ms, and the round robin would
    otherwise rerun every model forward until the matmuls alone had filled ``--min-seconds``."""
    a, w = torch.randn(m, k, device=device), torch.randn(n, k, device=device)
    wt = w.t().contiguous()

    def run():
        for _ in range(calls):
            linear_as_conv(a, w, None) if backend == "onednn" else torch.mm(a, wt)

    return run, calls * 2 * m * k * n


def main(args) -> None:
    machine = setup(args.threads)
    device = torch.device(args.device)
    cases, flops, hidden = {}, {}, None
    for grid in args.grids:
        for mixer, overrides in (("iwin", {}), ("attention", ATTENTION)):
            for backend in CPU_LINEAR_BACKENDS:
                name = f"{args.size} {grid}x{grid} {mixer}, linear {backend}"
                cases[name], flops[name], hidden = forward_case(
                    args.size, grid, args.batch, device, backend, **overrides
                )
    tokens = args.batch * args.grids[0] ** 2
    mlp_hidden = int(2 / 3 * int(hidden * 4.0))
    for shape, (m, k, n) in {
        f"{args.square}^3": (args.square, args.square, args.square),
        f"MLP {tokens}x{hidden}x{2 * mlp_hidden}": (tokens, hidden, 2 * mlp_hidden),
    }.items():
        for backend in CPU_LINEAR_BACKENDS:
            name = f"matmul {shape} {backend}"
            cases[name], flops[name] = matmul_case(m, k, n, device, backend)
    seconds = time_round_robin(cases, args.repeats, min_seconds=args.min_seconds)
    rate = {name: flops[name] / seconds[name] / 1e9 for name in cases}
    peak = max(v for k, v in rate.items() if k.startswith("matmul"))
    print(f"# device={device} {machine} torch={torch.__version__} fp32 batch={args.batch}")
    print(f"# median of >= {args.repeats} round-robin calls (>= {args.min_seconds} s each)\n")
    rows = [
        [
            name,
            f"{flops[name] / 1e9:.2f}",
            f"{seconds[name] * 1e3:.1f}",
            f"{rate[name]:.1f}",
            f"{rate[name] / peak:.0%}",
        ]
        for name in cases
    ]
    print(markdown_table(["case", "GFLOP", "ms", "GFLOP/s", "share of peak matmul"], rows))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="FlashDiT-B/2")
    p.add_argument("--grids", type=int, nargs="+", default=[16, 32])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--square", type=int, default=1024, help="side of the square matmul that measures the peak")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
