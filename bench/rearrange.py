"""einops against hand-written view/permute: the window partition (plain and interleaved), its inverse and the
unpatchify, alone and inside a FlashDiT train step, timed round robin in one process.

    python -m bench.rearrange            # 2 threads; --repeats N

``flashdit`` writes these rearrangements with einops (``WindowGrid.partition`` / ``merge``, ``interleave`` /
``restore``, the transformer's unpatchify). The reference below is the view/permute code they replaced; the two are
checked equal before any timing. The step rows swap the reference into ``WindowGrid`` for one of the two models.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

import torch

from bench.common import latent_train_step, markdown_table, setup, time_round_robin
from flashdit import FlashDiTTransformer2DModel
from flashdit.models.mixer import WindowGrid


def view_partition(grid: WindowGrid, x: torch.Tensor) -> torch.Tensor:
    B, rest = x.shape[0], x.shape[3:]
    tail = tuple(range(5, 5 + len(rest)))
    if grid.interleaved:
        x = x.view(B, grid.Mh, grid.Hg, grid.Mw, grid.Wg, *rest)
        return x.permute(0, 2, 4, 1, 3, *tail)
    x = x.view(B, grid.Hg, grid.Mh, grid.Wg, grid.Mw, *rest)
    return x.permute(0, 1, 3, 2, 4, *tail)


def view_merge(grid: WindowGrid, x: torch.Tensor) -> torch.Tensor:
    B, rest = x.shape[0], x.shape[5:]
    tail = tuple(range(5, 5 + len(rest)))
    x = x.permute(0, 3, 1, 4, 2, *tail) if grid.interleaved else x.permute(0, 1, 3, 2, 4, *tail)
    return x.reshape(B, grid.Hg * grid.Mh, grid.Wg * grid.Mw, *rest)


@contextlib.contextmanager
def view_permute_windows():
    """``WindowGrid`` with the hand-written view/permute instead of einops, while the block runs."""
    saved = WindowGrid.partition, WindowGrid.merge
    WindowGrid.partition, WindowGrid.merge = view_partition, view_merge
    try:
        yield
    finally:
        WindowGrid.partition, WindowGrid.merge = saved


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    header = setup(args.threads)
    torch.manual_seed(0)

    rows = []
    for side, interleaved in ((16, True), (16, False), (64, True)):
        grid = WindowGrid.for_grid(side, side, 4, interleaved)
        x = torch.randn(32, side, side, 128)
        windows = grid.to_windows(x)
        assert torch.equal(grid.partition(x), view_partition(grid, x))
        assert torch.equal(grid.from_windows(windows), x)
        w6 = view_partition(grid, x)
        assert torch.equal(grid.merge(w6), view_merge(grid, w6))
        fns = {
            "einops": lambda g=grid, x=x: g.merge(g.partition(x).contiguous()).contiguous(),
            "view/permute": lambda g=grid, x=x: view_merge(g, view_partition(g, x).contiguous()).contiguous(),
        }
        t = time_round_robin(fns, args.repeats)
        kind = "interleaved" if interleaved else "plain"
        rows.append([f"partition + merge, {kind}, {side}x{side}, B=32, C=128", *(f"{t[k] * 1e3:.3f}" for k in fns)])
        rows[-1].append(f"{t['einops'] / t['view/permute']:.3f}")

    # a FlashDiT train step at the paper's grid: every block partitions and merges its windows
    models = {}
    for name in ("einops", "view/permute"):
        torch.manual_seed(0)
        models[name] = FlashDiTTransformer2DModel(
            sample_size=32, patch_size=2, in_channels=4, hidden_size=128, depth=4, num_heads=2
        )
    steps = {name: latent_train_step(m, batch=16, grid=16, device="cpu")[0] for name, m in models.items()}

    def reference_step():
        with view_permute_windows():
            steps["view/permute"]()

    t = time_round_robin({"einops": steps["einops"], "view/permute": reference_step}, max(5, args.repeats // 3))
    rows.append(["train step, width 128, depth 4, 16x16 tokens, B=16", *(f"{t[k] * 1e3:.1f}" for k in t)])
    rows[-1].append(f"{t['einops'] / t['view/permute']:.3f}")
    print(f"# {header}, torch {torch.__version__}; medians in ms, ratio = einops / view-permute")
    print(markdown_table(["operation", "einops", "view/permute", "ratio"], rows))
    ratios = [float(r[-1]) for r in rows]
    print(f"median ratio {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
