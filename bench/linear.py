"""Token-wise linear layer, forward + backward: ``F.linear`` (PyTorch's BLAS) against the same product as a 1×1
convolution on oneDNN (``flashdit.models.linear.linear_as_conv``), side by side, over the B/2 shapes and small
ones around the size below which ``TokenLinear`` keeps ``F.linear``.

    python -m bench.linear                 # fp32, B/2 layers at 512 and 8192 tokens, small products
    python -m bench.linear --small         # only the small products that set the thresholds
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench.common import markdown_table, setup, time_round_robin
from flashdit.models.linear import linear_as_conv, onednn_applies

# (tokens, in, out): B/2's qkv, proj, w12, w3 and output layer at batch 2 of 16x16 and 64x64 tokens
MODEL = [(rows, k, n) for rows in (512, 8192) for k, n in ((768, 2304), (768, 768), (768, 4096), (2048, 768))]
SMALL = [(rows, k, n) for rows in (64, 128, 256, 512) for k, n in ((768, 16), (128, 384), (256, 768), (768, 2304))]


def case(rows: int, k: int, n: int, fn):
    torch.manual_seed(0)
    x = torch.randn(rows, k, requires_grad=True)
    w = torch.randn(n, k, requires_grad=True)
    b = torch.randn(n, requires_grad=True)
    grad = torch.randn(rows, n)
    return lambda: fn(x, w, b).backward(grad)


def main(args) -> None:
    machine = setup(args.threads)
    shapes = SMALL if args.small else MODEL + SMALL
    print(f"# {machine} torch={torch.__version__} fp32; forward+backward")
    print(f"# median of >= {args.repeats} round-robin calls (>= {args.min_seconds} s each)\n")
    rows = []
    for m, k, n in shapes:
        t = time_round_robin(
            {"blas": case(m, k, n, F.linear), "onednn": case(m, k, n, linear_as_conv)},
            args.repeats,
            min_seconds=args.min_seconds,
        )
        flop = 6 * m * k * n
        route = "onednn" if onednn_applies(torch.empty(m, k), torch.empty(n, k)) else "blas"
        rows.append(
            [f"{m}x{k}->{n}"]
            + [f"{t[b] * 1e3:.3f}" for b in ("blas", "onednn")]
            + [f"{flop / t[b] / 1e9:.0f}" for b in ("blas", "onednn")]
            + [f"{t['blas'] / t['onednn']:.2f}x", route]
        )
    header = ["tokens x in -> out", "blas ms", "onednn ms", "blas GFLOP/s", "onednn GFLOP/s", "onednn speed-up"]
    print(markdown_table(header + ["TokenLinear takes"], rows))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="only the small products around the thresholds")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--min-seconds", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
