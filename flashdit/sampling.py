"""Batched generation with one seed per image, shared by sample.py and eval_fid.py.

Image ``i`` is drawn from ``torch.Generator().manual_seed(seeds[i])`` alone, so a set of
(seed, label) pairs gives the same images whatever the batch size, batch order or process count.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .pipeline import FlashDiTPipeline


def generate(
    pipe: FlashDiTPipeline,
    labels: Sequence[int | str],
    seeds: Sequence[int],
    batch_size: int = 16,
    output_type: str = "pil",
    **call_kwargs,
) -> Iterator[tuple[int, list]]:
    """Yield ``(start, images)`` batch by batch: images ``start ... start + len(images) - 1``.

    Args:
        pipe: the pipeline.
        labels: one class id or name per image.
        seeds: one seed per image.
        batch_size: images per pipeline call.
        output_type: as for the pipeline (``"pil"``, ``"np"``, ``"pt"``).
        call_kwargs: sampling settings passed to the pipeline (guidance_scale, num_inference_steps, ...).
    """
    if len(labels) != len(seeds):
        raise ValueError(f"got {len(labels)} labels and {len(seeds)} seeds; one seed per image")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    for start in range(0, len(labels), batch_size):
        stop = min(start + batch_size, len(labels))
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[start:stop]]
        out = pipe(list(labels[start:stop]), generator=generators, output_type=output_type, **call_kwargs)
        yield start, list(out.images)
