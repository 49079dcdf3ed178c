"""Run directories on disk: atomic, resumable checkpoints and the metrics log.

Model, EMA and optimizer are stored full (gathered from the shards under FSDP), so a run resumes on any
number of processes. A checkpoint ``checkpoints/step_0001000/`` holds ``model.safetensors``, ``ema.safetensors``,
``optimizer.pt`` / ``scheduler.pt`` (read back with ``weights_only=True``), ``rng_rank{r}.pt`` per
process and ``state.json``. It is written under a temporary name and renamed when complete, so a
crash mid-write leaves the previous checkpoint as the newest complete one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .sharding import full_state_dict, is_sharded, load_full_state_dict, load_optimizer_state, optimizer_state
from .utils import atomic_path

if TYPE_CHECKING:
    from accelerate import Accelerator

CHECKPOINT_PREFIX = "step_"
CHECKPOINT_NAME = re.compile(rf"{CHECKPOINT_PREFIX}\d+")
CHECKPOINT_FILES = ("model.safetensors", "ema.safetensors", "optimizer.pt", "scheduler.pt", "state.json")


def checkpoint_step(path: Path) -> int:
    """The training step a checkpoint directory named ``step_<n>`` was written at."""
    return int(path.name[len(CHECKPOINT_PREFIX) :])


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary, unfinished ones are ignored)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CHECKPOINT_NAME.fullmatch(p.name)]  # not step_1_backup
    return sorted(found, key=checkpoint_step)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def save_checkpoint(
    accelerator: Accelerator, output_dir: Path, step: int, model, ema, optimizer, scheduler, state: dict, keep: int
) -> Path:
    """Write every process's part under a temporary name, then rename it complete (main process)."""
    root = output_dir / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step:07d}"
    tmp = root / f".tmp_{CHECKPOINT_PREFIX}{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng_rank{accelerator.process_index}.pt")
    model = accelerator.unwrap_model(model)
    if accelerator.is_main_process or is_sharded(model):  # gathering shards takes every process
        weights, ema_weights, optim = full_state_dict(model), full_state_dict(ema), optimizer_state(model, optimizer)
    if accelerator.is_main_process:
        save_file(weights, tmp / "model.safetensors")
        save_file(ema_weights, tmp / "ema.safetensors")
        torch.save(optim, tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "num_processes": accelerator.num_processes}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def check_checkpoint(path: Path) -> None:
    missing = [n for n in CHECKPOINT_FILES if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is incomplete: missing {missing}")


def load_checkpoint(accelerator: Accelerator, path: Path, model, ema, optimizer, scheduler) -> dict:
    """Load states in place; returns ``state.json`` plus this process's RNG states under ``"rng"``
    (restored by the caller once nothing else will draw from the generators before the next step)."""
    check_checkpoint(path)
    try:
        model = accelerator.unwrap_model(model)
        load_full_state_dict(model, load_file(path / "model.safetensors"))
        load_full_state_dict(ema, load_file(path / "ema.safetensors"))
        optim = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        load_optimizer_state(model, optimizer, optim)
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        state = json.loads((path / "state.json").read_text())
    except (RuntimeError, OSError, ValueError, SafetensorError) as err:
        raise RuntimeError(f"checkpoint {path} could not be read ({err}); it may be corrupted") from err
    rng = path / f"rng_rank{accelerator.process_index}.pt"
    if state.get("num_processes") == accelerator.num_processes and rng.is_file():
        state["rng"] = torch.load(rng, weights_only=True)
    else:
        accelerator.print(f"note: {path} was written by {state.get('num_processes')} processes; RNG streams restart")
    return state


def find_resume_checkpoint(output_dir: Path, resume: str | bool | None) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run. A fresh run refuses an output directory that
    already holds a run, and a resume refuses to start below newer checkpoints (it would prune them)."""
    found = list_checkpoints(output_dir)
    if not resume:
        if found or (output_dir / "metrics.jsonl").is_file():
            held = found[-1].name if found else "metrics.jsonl"
            raise ValueError(
                f"train.output_dir {output_dir} already holds a run ({held}); continue it with --resume, or "
                "choose another --output-dir"
            )
        return None
    checkpoint = Path(resume) if isinstance(resume, str) else (found[-1] if found else None)
    if checkpoint is None:
        return None
    if not checkpoint.is_dir():
        raise ValueError(f"--resume {checkpoint}: no such checkpoint directory")
    if CHECKPOINT_NAME.fullmatch(checkpoint.name):
        start = checkpoint_step(checkpoint)
        newer = [p.name for p in found if checkpoint_step(p) > start]
        if newer:
            raise ValueError(
                f"--resume {checkpoint}: {output_dir / 'checkpoints'} holds newer checkpoints {newer}, which the "
                "resumed run would overwrite or prune; move them elsewhere first, or resume from the newest"
            )
    return checkpoint


def trim_metrics(path: Path, step: int) -> None:
    """Drop the log lines a resumed run will write again, and any partial line a crash left."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept))
