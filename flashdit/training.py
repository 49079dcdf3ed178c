"""Training with Hugging Face Accelerate: data, model, EMA, the flow-matching step, atomic resumable
checkpoints, periodic EMA sample grids, and export of the EMA weights as a ``FlashDiTPipeline``.

A checkpoint ``checkpoints/step_0001000/`` holds ``model.safetensors``, ``ema.safetensors``,
``optimizer.pt`` / ``scheduler.pt`` (read back with ``weights_only=True``), ``rng_rank{r}.pt`` per
process and ``state.json``. It is written under a temporary name and renamed when complete, so a
crash mid-write leaves the previous checkpoint as the newest complete one.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import flow
from .config import ExperimentConfig, ModelConfig, to_dict
from .data import LatentShardDataset, ResumableBatchSampler, fashion_mnist
from .models.transformer import FLASHDIT_SIZES, FlashDiTTransformer2DModel
from .pipeline import FlashDiTPipeline, export_pipeline
from .utils import atomic_path, image_grid, save_image

CHECKPOINT_PREFIX = "step_"
CHECKPOINT_NAME = re.compile(rf"{CHECKPOINT_PREFIX}\d+")


class TrainingDiverged(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# building blocks


def build_dataset(cfg: ExperimentConfig):
    data = cfg.data
    if data.kind == "fashion_mnist":
        ds = fashion_mnist(data.path, "train", pad_to=data.pad_to)
    else:
        if data.path is None:
            raise ValueError("data.path must point at a latent directory written by `python -m flashdit.extract`")
        ds = LatentShardDataset(data.path)
    if data.limit is not None:
        ds = FirstN(ds, data.limit)
    return ds


class FirstN(torch.utils.data.Dataset):
    """The first ``n`` examples of a dataset (smoke tests, over-fitting checks)."""

    def __init__(self, dataset, n: int):
        self.dataset, self.n, self.info = dataset, min(n, len(dataset)), dataset.info

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item):
        return self.dataset[item]


def build_model(cfg: ModelConfig, info: dict) -> FlashDiTTransformer2DModel:
    """The transformer from the model config, with channels, grid and classes taken from the data."""
    if cfg.size and cfg.size not in FLASHDIT_SIZES:
        raise ValueError(f"model.size {cfg.size!r} is not one of {sorted(FLASHDIT_SIZES)}")
    kwargs = dict(FLASHDIT_SIZES[cfg.size]) if cfg.size else {}
    for key in ("patch_size", "hidden_size", "depth", "num_heads"):
        if getattr(cfg, key) is not None:
            kwargs[key] = getattr(cfg, key)
    missing = [k for k in ("patch_size", "hidden_size", "depth", "num_heads") if k not in kwargs]
    if missing:
        raise ValueError(f"model config needs a size or explicit {missing}")
    from_data = {"in_channels": "channels", "sample_size": "size", "num_classes": "num_classes"}
    for key, data_key in from_data.items():
        value = getattr(cfg, key)
        if value is not None and value != info[data_key]:
            raise ValueError(
                f"model.{key}={value} but the data has {data_key}={info[data_key]}; "
                f"remove model.{key} to take it from the data"
            )
        kwargs[key] = info[data_key]
    for key in ("mlp_ratio", "class_dropout_prob", "mixer", "window_size", "kernel_size", "pos_embed", "qk_norm",
                "qkv_bias", "modulation", "conv_init"):
        kwargs[key] = getattr(cfg, key)
    return FlashDiTTransformer2DModel(**kwargs)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_params = list(ema.parameters())
    params = [p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema_params)]
    torch._foreach_lerp_(ema_params, params, 1 - decay)


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def check_finite(accelerator: Accelerator, loss: torch.Tensor, grad_norm: torch.Tensor, step: int, output_dir) -> None:
    """Stop before an update with a non-finite loss or gradient, so no checkpoint ever holds its result."""
    values = accelerator.reduce(torch.stack([loss.detach().float(), torch.as_tensor(grad_norm).float()]), "sum")
    if not torch.isfinite(values).all():
        last = list_checkpoints(output_dir)
        loss_value, norm = values.tolist()
        what = f"loss became {loss_value}" if not math.isfinite(loss_value) else f"gradient norm became {norm}"
        raise TrainingDiverged(
            f"the {what} at step {step}; stopped before the update. The last good checkpoint is "
            f"{last[-1] if last else 'none (no checkpoint was written yet)'}. Resume from it with a lower "
            "train.lr (a changed lr applies on resume), train.max_grad_norm, or model.qk_norm=true."
        )


def make_train_step(cfg: ExperimentConfig, info: dict, device: torch.device, seed: int = 0):
    """One full optimizer step of ``cfg`` on a fixed random batch, as a closure, for benchmarks and cost
    measurements: t and noise, forward, flow loss, backward, clipping, AdamW, EMA update."""
    t = cfg.train
    torch.manual_seed(seed)
    model = build_model(cfg.model, info).to(device).train()
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    x1 = torch.randn(t.global_batch_size, info["channels"], info["size"], info["size"], device=device)
    y = torch.randint(0, info["num_classes"], (t.global_batch_size,), device=device)

    def step():
        x0 = torch.randn_like(x1)
        tt = flow.sample_t(x1.shape[0], cfg.flow.t_sampling, cfg.flow.t_mean, cfg.flow.t_std, device)
        v = model(flow.interpolate(x1, x0, tt), tt, y).sample
        loss, _ = flow.flow_loss(v, flow.velocity_target(x1, x0), cfg.flow.cosine_weight)
        loss.mean().backward()
        if t.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_update(ema, model, t.ema_decay)

    return step


# --------------------------------------------------------------------------------------------
# checkpoints


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary, unfinished ones are ignored)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CHECKPOINT_NAME.fullmatch(p.name)]  # not step_1_backup
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, model, ema, optimizer, scheduler,
                    state: dict, keep: int) -> Path:  # fmt: skip
    """Write every process's part under a temporary name, then rename it complete (main process)."""
    root = output_dir / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step:07d}"
    tmp = root / f".tmp_{CHECKPOINT_PREFIX}{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng_rank{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file(accelerator.unwrap_model(model).state_dict(), tmp / "model.safetensors")
        save_file(ema.state_dict(), tmp / "ema.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
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


def _check_checkpoint(path: Path) -> None:
    needed = ["model.safetensors", "ema.safetensors", "optimizer.pt", "scheduler.pt", "state.json"]
    missing = [n for n in needed if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is incomplete: missing {missing}")


def load_checkpoint(accelerator: Accelerator, path: Path, model, ema, optimizer, scheduler) -> dict:
    """Load states in place; returns ``state.json`` plus this process's RNG states under ``"rng"``
    (restored by the caller once nothing else will draw from the generators before the next step)."""
    _check_checkpoint(path)
    try:
        accelerator.unwrap_model(model).load_state_dict(load_file(path / "model.safetensors"))
        ema.load_state_dict(load_file(path / "ema.safetensors"))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
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


def check_run_settings(cfg: ExperimentConfig) -> None:
    t = cfg.train
    for name in ("log_every", "checkpoint_every"):
        value = getattr(t, name)
        if value < 1:
            raise ValueError(f"train.{name}={value} must be a positive number of steps")
    if t.sample_every < 0:
        raise ValueError(f"train.sample_every={t.sample_every} must be >= 0 (0: no sample grids)")
    if t.max_steps < 1:
        raise ValueError(f"train.max_steps={t.max_steps} must be positive")


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
        start = int(checkpoint.name[len(CHECKPOINT_PREFIX) :])
        newer = [p.name for p in found if int(p.name[len(CHECKPOINT_PREFIX) :]) > start]
        if newer:
            raise ValueError(
                f"--resume {checkpoint}: {output_dir / 'checkpoints'} holds newer checkpoints {newer}, which the "
                "resumed run would overwrite or prune; move them elsewhere first, or resume from the newest"
            )
    return checkpoint


def apply_optimizer_settings(accelerator: Accelerator, optimizer, scheduler, t, step: int) -> None:
    """A resumed run takes lr, betas and weight decay from the config, not from the checkpoint (the schedule
    is always the config's): a changed value applies from the resumed step on, and is announced."""
    changed = []
    for group in optimizer.param_groups:
        for key, value in (("initial_lr", t.lr), ("betas", tuple(t.betas)), ("weight_decay", t.weight_decay)):
            old = tuple(group[key]) if key == "betas" else group[key]
            if old != value:
                changed.append(f"{'lr' if key == 'initial_lr' else key} {old} -> {value}")
                group[key] = value
    if changed:
        scheduler.base_lrs = [t.lr for _ in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = t.lr * lr_factor(step, t.warmup_steps, t.max_steps, t.lr_schedule)
        accelerator.print(f"note: the config changes {', '.join(dict.fromkeys(changed))}: applied from step {step}")


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


# --------------------------------------------------------------------------------------------
# pipeline export and sample grids


def make_pipeline(transformer, info: dict, cfg: ExperimentConfig, vae=None) -> FlashDiTPipeline:
    """A pipeline around ``transformer`` with the data's VAE, latent statistics and class names."""
    if info.get("vae") and vae is None:
        vae = AutoencoderKL.from_pretrained(info["vae"]["source"], subfolder=info["vae"].get("subfolder"))
    stats = info.get("stats")
    s = cfg.sample
    return FlashDiTPipeline(
        transformer,
        FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        id2label=dict(enumerate(info["class_names"])),
        latents_mean=stats[0] if stats else None,
        latents_std=stats[1] if stats else None,
        scaling_factor=info.get("scaling_factor") if info.get("normalization") == "scaling_factor" else None,
        sampling=dict(
            guidance_scale=s.guidance_scale, num_inference_steps=s.num_inference_steps, sampler=s.sampler,
            timestep_shift=s.timestep_shift, guidance_interval=list(s.guidance_interval),
        ),
    )  # fmt: skip


def sample_grid(pipe: FlashDiTPipeline, cfg: ExperimentConfig, num_classes: int):
    """One row per class, ``per_class`` images each, fixed seeds (image i uses seed i)."""
    classes = cfg.sample.classes or list(range(min(10, num_classes)))
    labels = [c for c in classes for _ in range(cfg.sample.per_class)]
    gens = [torch.Generator().manual_seed(i) for i in range(len(labels))]
    pipe.set_progress_bar_config(disable=True)
    images = pipe(labels, generator=gens).images
    return image_grid(images, nrow=cfg.sample.per_class)


# --------------------------------------------------------------------------------------------
# the loop


def train(cfg: ExperimentConfig, resume: str | bool | None = None) -> Path:
    """Train; returns the exported pipeline directory. ``resume=True`` picks the newest complete checkpoint."""
    t = cfg.train
    output_dir = Path(t.output_dir)
    check_run_settings(cfg)  # before any set-up: a bad value fails at once
    checkpoint = find_resume_checkpoint(output_dir, resume)
    accelerator = Accelerator(
        cpu=t.cpu,
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.grad_accum_steps,
        log_with=t.trackers or None,
        project_dir=t.output_dir,
    )
    world = accelerator.num_processes
    if t.global_batch_size % (world * t.grad_accum_steps):
        raise ValueError(
            f"train.global_batch_size={t.global_batch_size} must be divisible by processes ({world}) x "
            f"grad_accum_steps ({t.grad_accum_steps})"
        )
    micro_batch = t.global_batch_size // (world * t.grad_accum_steps)
    set_seed(t.seed, device_specific=True)

    # 1. data, model, EMA, optimiser
    dataset = build_dataset(cfg)
    info = dataset.info
    model = build_model(cfg.model, info)
    if t.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, t.warmup_steps, t.max_steps, t.lr_schedule)
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(accelerator.device)
    if t.compile:
        accelerator.unwrap_model(model).compile(dynamic=False)

    # 2. resume
    step, state = 0, {}
    if resume and checkpoint is None:
        accelerator.print(f"no checkpoint in {output_dir / 'checkpoints'}; starting from scratch")
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint, model, ema, optimizer, scheduler)
        if state["global_batch_size"] != t.global_batch_size:
            raise ValueError(
                f"{checkpoint} was trained with global batch {state['global_batch_size']}, this run uses "
                f"{t.global_batch_size}; the data order would not continue"
            )
        step = state["step"]
        apply_optimizer_settings(accelerator, optimizer, scheduler, t, step)
        if accelerator.is_main_process:
            trim_metrics(output_dir / "metrics.jsonl", step)
        accelerator.print(f"resumed from {checkpoint} at step {step}")
    sampler = ResumableBatchSampler(
        len(dataset), micro_batch, accelerator.process_index, world, t.seed, cfg.data.random_flip,
        position=step * t.grad_accum_steps,
    )  # fmt: skip
    loader = DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers, pin_memory=accelerator.device.type == "cuda"
    )
    batches = iter(loader)  # creating the iterator draws from the global RNG: restore it afterwards
    if checkpoint is not None and "rng" in state:
        _set_rng_state(state["rng"])

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(output_dir / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if t.trackers:
        accelerator.init_trackers("flashdit", config=_flat(to_dict(cfg)))

    # 3. loop
    params = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(total=t.max_steps, initial=step, disable=not accelerator.is_main_process, desc="train")
    window_start, window_images, grad_norm = time.perf_counter(), 0, torch.tensor(0.0)
    while step < t.max_steps:
        model.train()
        for _ in range(t.grad_accum_steps):
            x1, y = next(batches)
            x1, y = x1.to(accelerator.device, non_blocking=True), y.to(accelerator.device, non_blocking=True)
            with accelerator.accumulate(model):
                x0 = torch.randn_like(x1)
                tt = flow.sample_t(x1.shape[0], cfg.flow.t_sampling, cfg.flow.t_mean, cfg.flow.t_std, x1.device)
                with accelerator.autocast():
                    v = model(flow.interpolate(x1, x0, tt), tt, y).sample
                loss, terms = flow.flow_loss(v, flow.velocity_target(x1, x0), cfg.flow.cosine_weight)
                loss = loss.mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    # without clipping, an infinite threshold still measures the norm (logged, and checked)
                    grad_norm = accelerator.clip_grad_norm_(params, t.max_grad_norm or math.inf)
                    check_finite(accelerator, loss, grad_norm, step + 1, output_dir)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        step += 1
        scheduler.step()
        ema_update(ema, accelerator.unwrap_model(model), ema_decay_at(step, t.ema_decay, t.ema_warmup))
        window_images += t.global_batch_size

        if step % t.log_every == 0 or step == t.max_steps:
            mean_loss = accelerator.reduce(loss.detach(), "mean").item()
            elapsed = time.perf_counter() - window_start
            logs = {
                "loss": mean_loss,
                "mse": accelerator.reduce(terms["mse"].mean().detach(), "mean").item(),
                "grad_norm": float(grad_norm),
                "lr": scheduler.get_last_lr()[0],
                "images_per_sec": window_images / max(elapsed, 1e-9),
            }
            if "cos" in terms:
                logs["cos"] = accelerator.reduce(terms["cos"].mean().detach(), "mean").item()
            accelerator.log(logs, step=step)
            if accelerator.is_main_process:
                with open(output_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"step": step, **logs}) + "\n")
            bar.set_postfix(
                loss=f"{mean_loss:.4f}", gnorm=f"{float(grad_norm):.2f}", lr=f"{logs['lr']:.2e}",
                img_s=f"{logs['images_per_sec']:.0f}",
            )
            window_start, window_images = time.perf_counter(), 0
        bar.update()

        stopping = t.stop_after is not None and step >= t.stop_after
        if step % t.checkpoint_every == 0 or step == t.max_steps or stopping:
            state = {
                "step": step,
                "global_batch_size": t.global_batch_size,
                "micro_batches": step * t.grad_accum_steps,
            }
            save_checkpoint(accelerator, output_dir, step, model, ema, optimizer, scheduler, state, t.keep_checkpoints)
        if t.sample_every and (step % t.sample_every == 0 or step == t.max_steps) and accelerator.is_main_process:
            grid = sample_grid(make_pipeline(ema, info, cfg), cfg, info["num_classes"])
            save_image(grid, output_dir / "samples" / f"step_{step:07d}.png")
            for tracker in accelerator.trackers:
                if tracker.name == "tensorboard":
                    tracker.log_images({"samples": np.asarray(grid.convert("RGB"))}, step=step, dataformats="HWC")
        if stopping:
            bar.close()
            accelerator.print(f"stopped at step {step} (train.stop_after); resume with --resume")
            accelerator.end_training()
            return list_checkpoints(output_dir)[-1]
    bar.close()

    # 4. export the EMA weights
    accelerator.wait_for_everyone()
    out = output_dir / "pipeline"
    if accelerator.is_main_process:
        export_pipeline(make_pipeline(ema, info, cfg), out)
        accelerator.print(f"exported the EMA pipeline to {out}")
    accelerator.end_training()
    return out


def export_checkpoint(cfg: ExperimentConfig, checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Export a checkpoint's EMA weights as a pipeline directory (no training)."""
    checkpoint = Path(checkpoint)
    _check_checkpoint(checkpoint)
    info = build_dataset(cfg).info
    model = build_model(cfg.model, info)
    try:
        model.load_state_dict(load_file(checkpoint / "ema.safetensors"))
    except (RuntimeError, OSError, SafetensorError) as err:
        raise RuntimeError(f"{checkpoint}/ema.safetensors could not be loaded into this model config: {err}") from err
    return export_pipeline(make_pipeline(model.eval(), info, cfg), out_dir)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
