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
from safetensors.torch import load_file, save_file

from .errors import UserError
from .sharding import full_state_dict, is_sharded, load_full_state_dict, load_optimizer_state, optimizer_state
from .utils import atomic_path, write_errors

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
    with write_errors(tmp / f"rng_rank{accelerator.process_index}.pt"):
        torch.save(rng_state(), tmp / f"rng_rank{accelerator.process_index}.pt")
    model = accelerator.unwrap_model(model)
    if accelerator.is_main_process or is_sharded(model):  # gathering shards takes every process
        weights, ema_weights, optim = full_state_dict(model), full_state_dict(ema), optimizer_state(model, optimizer)
    if accelerator.is_main_process:
        with write_errors(tmp / "model.safetensors"):
            save_file(weights, tmp / "model.safetensors")
        with write_errors(tmp / "ema.safetensors"):
            save_file(ema_weights, tmp / "ema.safetensors")
        with write_errors(tmp / "optimizer.pt"):
            torch.save(optim, tmp / "optimizer.pt")
        with write_errors(tmp / "scheduler.pt"):
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        with write_errors(tmp / "state.json"):
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


def _corrupted(path: Path, err: BaseException) -> UserError:
    reason = " ".join(str(err).split())[:300] or type(err).__name__
    return UserError(
        f"checkpoint {path} could not be read ({type(err).__name__}: {reason}); it may be corrupted or made for "
        "another model config: resume from another checkpoint (--resume PATH)"
    )


def read_state(path: Path) -> dict:
    """A checkpoint's ``state.json`` (step, global batch size, processes), checked to be complete."""
    check_checkpoint(path)
    try:
        state = json.loads((path / "state.json").read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError("no step in state.json")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise _corrupted(path, err) from None
    return state


def check_resumable(path: Path, global_batch_size: int) -> dict:
    """Before anything is built: ``path`` is a complete checkpoint of the same global batch (the data order
    continues only with it). Returns its ``state.json``."""
    state = read_state(path)
    if state.get("global_batch_size", global_batch_size) != global_batch_size:
        raise UserError(
            f"--resume {path} was trained with train.global_batch_size={state['global_batch_size']}, this run uses "
            f"{global_batch_size}; the data order would not continue. Set train.global_batch_size="
            f"{state['global_batch_size']} to resume it"
        )
    return state


def load_checkpoint(accelerator: Accelerator, path: Path, model, ema, optimizer, scheduler) -> dict:
    """Load states in place; returns ``state.json`` plus this process's RNG states under ``"rng"``
    (restored by the caller once nothing else will draw from the generators before the next step)."""
    state = read_state(path)
    rng = path / f"rng_rank{accelerator.process_index}.pt"
    try:
        model = accelerator.unwrap_model(model)
        load_full_state_dict(model, load_file(path / "model.safetensors"))
        load_full_state_dict(ema, load_file(path / "ema.safetensors"))
        optim = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        load_optimizer_state(model, optimizer, optim)
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        if state.get("num_processes") == accelerator.num_processes and rng.is_file():
            state["rng"] = torch.load(rng, weights_only=True)
    except Exception as err:  # truncated files (EOFError), other layouts (KeyError), size mismatches (RuntimeError)
        raise _corrupted(path, err) from None
    if "rng" not in state:
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
