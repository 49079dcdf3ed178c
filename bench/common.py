"""Shared benchmark helpers: interleaved median timing, FLOP counts and peak tensor memory.

Timings of the variants being compared are taken round-robin in one process, so machine noise hits
all of them alike; figures are medians. Odd rounds run the variants in reverse order, so no variant always
follows the same one (a variant that runs right after one that freed large buffers pays for faulting the
memory back in). FLOPs come from ``torch.utils.flop_counter`` on the meta device, with the backward of a
grouped (depthwise) convolution counted per group (PyTorch's formula ignores the groups there).

Peak memory is the peak of live tensor bytes during one call (parameters, gradients, optimizer state,
inputs and activations), tracked per tensor by PyTorch's ``MemTracker``: exact and repeatable
on CPU, where allocator statistics do not exist.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from flashdit.allocator import configure_cpu_allocator


def setup(threads: int) -> str:
    """Every benchmark's first step: the thread count, and the CPU allocator the command-line tools run with
    (``flashdit.allocator``; ``FLASHDIT_CPU_ALLOCATOR=system`` or ``THP_MEM_ALLOC_ENABLE=1`` to compare others).
    Returns the two for the table header."""
    torch.set_num_threads(threads)
    return f"threads={torch.get_num_threads()} allocator={configure_cpu_allocator()}"


def time_round_robin(
    fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 1, min_seconds: float = 0.0
) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved across functions; at least
    ``repeats`` rounds, and more until every function has run for ``min_seconds`` in total."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    order = list(fns)
    while min(len(ts) for ts in times.values()) < repeats or min(sum(ts) for ts in times.values()) < min_seconds:
        for name in order:
            fn = fns[name]
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
        order.reverse()
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_tensor_mib(fn: Callable[[], None], *tracked) -> float:
    """Peak live tensor memory (MiB, all devices) while ``fn()`` runs; ``tracked`` are the modules,
    optimizers and inputs that exist before the call, so they count too."""
    tracker = MemTracker()
    tracker.track_external(*tracked)
    with tracker:
        fn()
    peak = tracker.get_tracker_snapshot("peak")
    return sum(sum(per_type.values()) for per_type in peak.values()) / 2**20


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def latent_train_step(model: torch.nn.Module, batch: int, grid: int, device, **adamw):
    """One AdamW step (forward, MSE against the input, backward, update) of a 4-channel latent model on a fixed
    random batch of ``grid``x``grid`` tokens at patch 2. Returns ``(step, optimizer, x)``."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **adamw)
    x = torch.randn(batch, 4, 2 * grid, 2 * grid, device=device)
    t = torch.rand(batch, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        (model(x, t, y).sample - x).square().mean().backward()
        opt.step()

    return step, opt, x


def _conv_backward_flops(
    grad_out_shape,
    x_shape,
    w_shape,
    bias,
    stride,
    padding,
    dilation,
    transposed,
    output_padding,
    groups,
    output_mask,
    **kwargs,
) -> int:
    """Input and weight gradients of a convolution each cost one forward convolution, grouped or not."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def count_flops(fn: Callable[[], None]) -> int:
    """FLOPs of ``fn()`` (matmuls, attention, convolutions); run it on meta tensors to count without computing."""
    with FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops}
    ) as c:
        fn()
    return c.get_total_flops()


def latent_train_step_flops(model_fn: Callable[[], torch.nn.Module], batch: int, grid: int, channels: int = 4) -> int:
    """FLOPs of one forward+backward of ``latent_train_step`` (the optimizer's element-wise work is not counted) on
    ``channels``-channel inputs at patch 2, counted on the meta device: ``model_fn`` builds the model there."""
    with torch.device("meta"):
        model = model_fn()
        x = torch.randn(batch, channels, 2 * grid, 2 * grid)
        t, y = torch.rand(batch), torch.zeros(batch, dtype=torch.long)
    model._check_inputs = lambda hidden_states, timestep, class_labels: (timestep, class_labels)  # no .item() on meta
    return count_flops(lambda: (model(x, t, y).sample - x).square().mean().backward())
