"""Training with Hugging Face Accelerate: data, model, EMA, the flow-matching step, periodic EMA sample
grids, and export of the EMA weights as a ``FlashDiTPipeline``. Checkpoints and the metrics log are
:mod:`flashdit.checkpoint`'s.

``train_step`` is the one optimizer step: the loop below, the benchmarks (``make_train_step``) and the
study all run it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
from diffusers.optimization import get_scheduler
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import flow, schedulers
from .checkpoint import (
    check_checkpoint,
    check_resumable,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
    trim_metrics,
)
from .config import (
    MODEL_FROM_DATA,
    MODEL_FROM_SIZE,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    to_dict,
)
from .data import LatentShardDataset, ResumableBatchSampler, fashion_mnist
from .errors import LaunchError, TrainingDiverged, UserError
from .models.transformer import FLASHDIT_SIZES, FlashDiTTransformer2DModel
from .outputs import check_output_dir, locked_output, save_dir_atomically
from .pipeline import PIPELINE_ENTRIES, FlashDiTPipeline, export_pipeline
from .sharding import full_state_dict, is_sharded, shard_like
from .utils import atomic_path, image_grid, save_image

# train.lr_schedule -> diffusers.optimization.get_scheduler's name (linear warm-up from 0 over warmup_steps)
LR_SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}


STEP_STREAM = 7919  # offset of the steps' random stream from the seed that initialises the model


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
    """The transformer from the model config (the transformer's own options, field for field), with the registry
    size filling what the recipe leaves out, and channels, grid and classes taken from the data."""
    kwargs = dict(FLASHDIT_SIZES[cfg.size]) if cfg.size else {}
    # None leaves a field to the size or the data only where the config declares it so; elsewhere (kernel_size,
    # window_size) None is the value itself
    unset = MODEL_FROM_SIZE + MODEL_FROM_DATA
    kwargs |= {k: v for k, v in dataclasses.asdict(cfg).items() if k != "size" and not (v is None and k in unset)}
    missing = [k for k in MODEL_FROM_SIZE if k not in kwargs]
    if missing:
        raise ValueError(f"model config needs a size or explicit {missing}")
    from_data = dict(zip(MODEL_FROM_DATA, ("channels", "size", "num_classes")))
    for key, data_key in from_data.items():
        if kwargs.get(key, info[data_key]) != info[data_key]:
            raise ValueError(
                f"model.{key}={kwargs[key]} but the data has {data_key}={info[data_key]}; "
                f"remove model.{key} to take it from the data"
            )
        kwargs[key] = info[data_key]
    return FlashDiTTransformer2DModel(**kwargs)


def load_base_model(source: str, info: dict) -> FlashDiTTransformer2DModel:
    """The transformer of pipeline ``source`` (directory or hub id) to fine-tune; it must take the data's channels
    and classes (its grid size is only a default: the model is position-free)."""
    try:
        model = FlashDiTTransformer2DModel.from_pretrained(source, subfolder="transformer")
    except OSError as err:
        raise FileNotFoundError(f"train.init_from {source}: no FlashDiT pipeline transformer there ({err})") from None
    for key, data_key in (("in_channels", "channels"), ("num_classes", "num_classes")):
        if model.config[key] != info[data_key]:
            raise ValueError(
                f"train.init_from {source} has {key}={model.config[key]}, the data {data_key}={info[data_key]}: "
                "fine-tuning keeps the base model's channels and classes"
            )
    return model.train()


# train.lora.targets -> the modules they adapt (regular expression over module names, PEFT's target_modules)
LORA_TARGETS = {"attention": r"mixer\.attn\.(qkv|proj)", "mlp": r"mlp\.(w12|w3)"}


def add_lora(model: FlashDiTTransformer2DModel, lora) -> None:
    """Freeze ``model`` and add a PEFT LoRA adapter (``default``) on ``lora.targets`` in every block."""
    from peft import LoraConfig as PeftLoraConfig  # checked to be installed with the recipe (check_run_settings)

    pattern = r".*blocks\.\d+\.(" + "|".join(LORA_TARGETS[t] for t in dict.fromkeys(lora.targets)) + ")"
    model.requires_grad_(False)
    config = PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha if lora.alpha is not None else lora.rank,
        lora_dropout=lora.dropout,
        target_modules=pattern,
        init_lora_weights="gaussian",
    )
    model.add_adapter(config)


def merged_copy(model: FlashDiTTransformer2DModel) -> FlashDiTTransformer2DModel:
    """A plain copy of ``model`` with its LoRA adapter folded into the weights (``model`` itself when it has none)."""
    if not getattr(model, "_hf_peft_config_loaded", False):
        return model
    merged = copy.deepcopy(model)
    merged.fuse_lora()
    merged.unload_lora()
    return merged


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_params = list(ema.parameters())
    params = [p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema_params)]
    torch._foreach_lerp_(ema_params, params, 1 - decay)


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


def ema_warmup_note(t: TrainConfig) -> str | None:
    """What to tell a user whose ``ema_decay`` the warm-up ramp never reaches: then every decay at or above the
    ramp's last value gives the same EMA, and the setting does nothing."""
    if not t.ema_warmup or t.ema_decay >= 1:
        return None
    # the first step s with (1 + s)/(10 + s) >= decay, from below the closed form (it rounds either way)
    reached = max(0, math.floor((10 * t.ema_decay - 1) / (1 - t.ema_decay)) - 1)
    while ema_decay_at(reached, t.ema_decay, True) < t.ema_decay:
        reached += 1
    if reached <= t.max_steps:
        return None
    return (
        f"note: train.ema_decay={t.ema_decay} is never reached: with train.ema_warmup the decay at step s is "
        f"min(ema_decay, (1 + s)/(10 + s)), which reaches {t.ema_decay} at step {reached}; these "
        f"{t.max_steps} steps end at {ema_decay_at(t.max_steps, t.ema_decay, True):.4f}, so any ema_decay above that "
        "gives the same EMA"
    )


def diverged(what: str, step: int, output_dir, before_update: bool = True) -> TrainingDiverged:
    """The error that stops a run: the step, and the newest checkpoint (every one written has finite weights)."""
    last = list_checkpoints(output_dir) if output_dir is not None else []
    when = "stopped before the update" if before_update else "no checkpoint was written for it"
    return TrainingDiverged(
        f"the {what} at step {step}; {when}. The last good checkpoint is "
        f"{last[-1] if last else 'none (no checkpoint was written yet)'}. Resume from it with a lower "
        "train.lr (a changed lr applies on resume), train.max_grad_norm, or model.qk_norm=true."
    )


def check_finite(accelerator: Accelerator, loss: torch.Tensor, grad_norm: torch.Tensor, step: int, output_dir) -> None:
    """Stop before an update with a non-finite loss or gradient, so no checkpoint ever holds its result."""
    values = accelerator.reduce(torch.stack([loss.detach().float(), torch.as_tensor(grad_norm).float()]), "sum")
    if not torch.isfinite(values).all():
        loss_value, norm = values.tolist()
        what = f"loss became {loss_value}" if not math.isfinite(loss_value) else f"gradient norm became {norm}"
        raise diverged(what, step, output_dir)


def first_non_finite(modules: dict[str, torch.nn.Module]) -> str | None:
    """The name of the first parameter or buffer holding NaN or inf (this process's shard under FSDP), or None."""
    for prefix, module in modules.items():
        for name, tensor in (*module.named_parameters(), *module.named_buffers()):
            local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
            if local.is_floating_point() and not torch.isfinite(local).all():
                return f"{prefix}.{name}"
    return None


def check_weights_finite(accelerator: Accelerator, state: TrainState, output_dir: Path) -> None:
    """Before a checkpoint: every parameter and EMA tensor must be finite, on every process, or nothing is written
    and training stops naming the tensor."""
    model = accelerator.unwrap_model(state.model)
    bad = first_non_finite({"model": model, "ema": state.ema})
    flags = accelerator.reduce(torch.tensor([float(bad is not None)], device=accelerator.device), "sum")
    if flags.item() > 0:
        raise diverged(f"weights became non-finite ({bad or 'on another process'})", state.step, output_dir, False)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, t: TrainConfig):
    """diffusers' learning-rate schedule ``t.lr_schedule`` with ``t.warmup_steps`` of linear warm-up."""
    return get_scheduler(
        LR_SCHEDULES[t.lr_schedule], optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=t.max_steps
    )


@dataclass
class TrainState:
    """What a step changes. ``accelerator`` None runs plain PyTorch on the model's device (benchmarks)."""

    model: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    accelerator: Accelerator | None = None
    step: int = 0
    params: list = field(init=False)

    def __post_init__(self):
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    @classmethod
    def create(cls, cfg: ExperimentConfig, info: dict, fused: bool = True) -> TrainState:
        """The model (fresh and seeded by the caller, or ``train.init_from``'s, with ``train.lora`` adapters),
        its EMA copy, AdamW over the trainable parameters and the LR schedule. ``fused``: PyTorch's fused AdamW
        kernel (CPU and CUDA; 1.26x faster FlashDiT-B/2 steps on CPU than the default per-tensor loop,
        ``bench/optimizer.py``); off under FSDP, whose sharded parameters take the default implementation."""
        t = cfg.train
        model = load_base_model(t.init_from, info) if t.init_from else build_model(cfg.model, info)
        if t.lora is not None:
            add_lora(model, t.lora)
        if t.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        ema = copy.deepcopy(model).requires_grad_(False).eval()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            trainable, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay, fused=True if fused else None
        )
        return cls(model, ema, optimizer, build_lr_scheduler(optimizer, t))


def train_step(state: TrainState, micro_batches, cfg: ExperimentConfig, output_dir: Path | None = None):
    """One optimizer step over ``grad_accum_steps`` micro-batches ``(x1, y)``: noise and times, the flow loss,
    backward, the gradient norm (clipped at ``max_grad_norm``), the finiteness guard (with an accelerator),
    AdamW, the LR schedule and the EMA. Returns ``(loss, terms, grad_norm)`` of the last micro-batch as tensors:
    nothing is read back to the host here except the guard's one check."""
    acc, t = state.accelerator, cfg.train
    for x1, y in micro_batches:
        with acc.accumulate(state.model) if acc else nullcontext():
            x0 = torch.randn_like(x1)
            tt = flow.sample_t(x1.shape[0], cfg.flow.t_sampling, cfg.flow.t_mean, cfg.flow.t_std, x1.device)
            with acc.autocast() if acc else nullcontext():
                v = state.model(flow.interpolate(x1, x0, tt), tt, y).sample
            loss, terms = flow.flow_loss(v, flow.velocity_target(x1, x0), cfg.flow.cosine_weight)
            loss = loss.mean()
            acc.backward(loss) if acc else loss.backward()
            if acc is None or acc.sync_gradients:
                # without clipping, an infinite threshold still measures the norm (logged, and checked)
                clip = acc.clip_grad_norm_ if acc else torch.nn.utils.clip_grad_norm_
                grad_norm = clip(state.params, t.max_grad_norm or math.inf)
                if isinstance(grad_norm, DTensor):  # FSDP: the norm over all shards
                    grad_norm = grad_norm.full_tensor()
                if acc is not None:
                    check_finite(acc, loss, grad_norm, state.step + 1, output_dir)
            state.optimizer.step()
            state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.scheduler.step()
    model = acc.unwrap_model(state.model) if acc else state.model
    ema_update(state.ema, model, ema_decay_at(state.step, t.ema_decay, t.ema_warmup))
    return loss, terms, grad_norm


def gathered_ema(state: TrainState) -> FlashDiTTransformer2DModel:
    """The EMA model as one plain module (gathered from its shards under FSDP: call it on every process)."""
    if not is_sharded(state.ema):
        return state.ema
    plain = FlashDiTTransformer2DModel.from_config(state.ema.config)
    plain.load_state_dict(full_state_dict(state.ema))
    return plain.eval()


def make_train_step(cfg: ExperimentConfig, info: dict, device: torch.device, seed: int = 0):
    """``train_step`` of ``cfg`` on a fixed random batch, as a closure, for benchmarks and cost measurements."""
    t = cfg.train
    torch.manual_seed(seed)
    state = TrainState.create(cfg, info)
    state.model.to(device).train()
    state.ema.to(device)
    x1 = torch.randn(t.global_batch_size, info["channels"], info["size"], info["size"], device=device)
    y = torch.randint(0, info["num_classes"], (t.global_batch_size,), device=device)

    def step():
        return train_step(state, [(x1, y)], cfg)

    step.state = state  # the model, EMA and optimizer it trains
    return step


def check_run_settings(cfg: ExperimentConfig) -> None:
    """What the recipe's declared ranges cannot say alone, checked before any set-up."""
    t = cfg.train
    if t.global_batch_size % t.grad_accum_steps:
        raise UserError(
            f"train.global_batch_size={t.global_batch_size} must be divisible by train.grad_accum_steps="
            f"{t.grad_accum_steps}"
        )
    if t.lora is not None:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise UserError("train.lora needs the peft package: pip install 'flashdit[lora]'") from None


def check_data_settings(cfg: ExperimentConfig, info: dict) -> None:
    """What depends on the data, checked before the model is built."""
    n = info["num_classes"]
    bad = [c for c in cfg.sample.classes or [] if c >= n]
    if bad:
        raise UserError(f"sample.classes {bad} are not class ids of the data, which has {n} classes: [0, {n})")
    if cfg.flow.cosine_weight and info["channels"] == 1:
        raise UserError(
            f"flow.cosine_weight={cfg.flow.cosine_weight} on 1-channel data: the cosine over channels of one channel "
            "is only the sign of v, whose gradient is zero; set flow.cosine_weight=0"
        )


def apply_optimizer_settings(accelerator: Accelerator, optimizer, scheduler, t: TrainConfig, step: int) -> None:
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
        for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
            group["lr"] = t.lr * factor(step)
        accelerator.print(f"note: the config changes {', '.join(dict.fromkeys(changed))}: applied from step {step}")


# --------------------------------------------------------------------------------------------
# pipeline export and sample grids


def make_pipeline(transformer, info: dict, cfg: ExperimentConfig, vae=None) -> FlashDiTPipeline:
    """A pipeline around ``transformer`` with the data's VAE, latent statistics, class names and the
    config's sampling settings."""
    if info.get("vae") and vae is None:
        vae = AutoencoderKL.from_pretrained(info["vae"]["source"], subfolder=info["vae"].get("subfolder"))
    stats = info.get("stats")
    sampler = cfg.sample.sampler
    scheduler = FlowMatchEulerDiscreteScheduler()  # the SDE sampler is FlashDiT's own; the others are schedulers
    return FlashDiTPipeline(
        transformer,
        scheduler if sampler == "sde" else schedulers.scheduler_for(sampler, scheduler.config),
        vae=vae,
        id2label=dict(enumerate(info["class_names"])),
        latents_mean=stats[0] if stats else None,
        latents_std=stats[1] if stats else None,
        scaling_factor=info.get("scaling_factor") if info.get("normalization") == "scaling_factor" else None,
        sampling=cfg.sample.to_dict(),
    )


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


def launch_rank() -> int:
    """This process's rank in its launch (``accelerate launch`` / torchrun set ``RANK``), known before Accelerate
    starts."""
    return int(os.environ.get("RANK", "0"))


def train(cfg: ExperimentConfig, resume: str | bool | None = None) -> Path:
    """Train; returns the exported pipeline directory (or, after ``train.stop_after``, the checkpoint).
    ``resume=True`` picks the newest complete checkpoint.

    Before any data or model is built: the settings are checked, the output directory is taken for this run (a
    second run into it is refused while this one lasts) and the checkpoint to resume is checked."""
    output_dir = Path(cfg.train.output_dir)
    check_run_settings(cfg)
    with locked_output(output_dir, "train.output_dir", take=launch_rank() == 0):
        checkpoint = find_resume_checkpoint(output_dir, resume)
        if checkpoint is not None:
            check_resumable(checkpoint, cfg.train.global_batch_size)
        return _train(cfg, checkpoint, resume)


def _train(cfg: ExperimentConfig, checkpoint: Path | None, resume) -> Path:
    t = cfg.train
    output_dir = Path(t.output_dir)
    accelerator = Accelerator(
        cpu=t.cpu,
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.grad_accum_steps,
        log_with=t.trackers or None,
        project_dir=t.output_dir,
    )
    state, info, batches = setup_run(cfg, accelerator, checkpoint, resume)

    def step():
        device = accelerator.device
        micro = (
            (x.to(device, non_blocking=True), y.to(device, non_blocking=True))
            for x, y in (next(batches) for _ in range(t.grad_accum_steps))
        )
        return train_step(state, micro, cfg, output_dir)

    def sample(step: int) -> None:
        ema = gathered_ema(state)  # every process: gathering FSDP shards is a collective
        if accelerator.is_main_process:
            write_sample_grid(accelerator, make_pipeline(ema, info, cfg), cfg, info, output_dir, step)

    if run_loop(accelerator, state, t, step, sample, micro_batches_per_step=t.grad_accum_steps):
        return list_checkpoints(output_dir)[-1]

    # export the EMA weights (LoRA: folded into the pipeline, and the adapter on its own)
    accelerator.wait_for_everyone()
    out = output_dir / "pipeline"
    ema = gathered_ema(state)
    if accelerator.is_main_process:
        export_pipeline(make_pipeline(merged_copy(ema), info, cfg), out)
        accelerator.print(f"exported the EMA pipeline to {out}")
        if cfg.train.lora is not None:
            save_lora(state.ema, output_dir / "lora")
            accelerator.print(f"saved the EMA LoRA adapter to {output_dir / 'lora'}")
    accelerator.end_training()
    return out


def run_loop(
    accelerator: Accelerator,
    state: TrainState,
    t: RunConfig,
    step: Callable[[], tuple],
    sample: Callable[[int], None] | None = None,
    micro_batches_per_step: int = 1,
) -> bool:
    """The loop every trainer shares: ``step()`` (one optimizer step, returning ``(loss, terms, grad_norm)``) until
    ``t.max_steps``, a progress bar, the log every ``t.log_every`` steps, a checkpoint (its weights checked finite
    first) every ``t.checkpoint_every``, ``sample(step)`` every ``t.sample_every``. Returns True when it stopped
    early at ``t.stop_after`` (after a checkpoint; the run resumes with ``--resume``)."""
    output_dir = Path(t.output_dir)
    bar = tqdm(total=t.max_steps, initial=state.step, disable=not accelerator.is_main_process, desc="train")
    meter = Throughput()
    while state.step < t.max_steps:
        state.model.train()
        loss, terms, grad_norm = step()
        meter.add(t.global_batch_size)
        n = state.step
        if n % t.log_every == 0 or n == t.max_steps:
            logs = log_step(accelerator, output_dir, state, loss, terms, grad_norm, meter.rate())
            bar.set_postfix(
                loss=f"{logs['loss']:.4f}",
                gnorm=f"{logs['grad_norm']:.2f}",
                lr=f"{logs['lr']:.2e}",
                img_s=f"{logs['images_per_sec']:.0f}",
            )
        bar.update()
        stopping = t.stop_after is not None and n >= t.stop_after
        if n % t.checkpoint_every == 0 or n == t.max_steps or stopping:
            run_state = {
                "step": n,
                "global_batch_size": t.global_batch_size,
                "micro_batches": n * micro_batches_per_step,
            }
            check_weights_finite(accelerator, state, output_dir)
            parts = (state.model, state.ema, state.optimizer, state.scheduler)
            save_checkpoint(accelerator, output_dir, n, *parts, run_state, t.keep_checkpoints)
        if sample is not None and t.sample_every and (n % t.sample_every == 0 or n == t.max_steps):
            sample(n)
        if stopping:
            bar.close()
            accelerator.print(f"stopped at step {n} (train.stop_after); resume with --resume")
            accelerator.end_training()
            return True
    bar.close()
    return False


def setup_run(cfg: ExperimentConfig, accelerator: Accelerator, checkpoint: Path | None, resume):
    """Data, model, EMA, optimiser and schedule, restored from ``checkpoint`` when given; the run's
    ``config.yaml`` and trackers. Returns ``(state, data info, micro-batch iterator)``."""
    t = cfg.train
    world = check_launch(accelerator, t.output_dir)
    if t.global_batch_size % (world * t.grad_accum_steps):
        raise ValueError(
            f"train.global_batch_size={t.global_batch_size} must be divisible by processes ({world}) x "
            f"grad_accum_steps ({t.grad_accum_steps})"
        )
    micro_batch = t.global_batch_size // (world * t.grad_accum_steps)
    set_seed(t.seed, device_specific=True)
    dataset = build_dataset(cfg)
    info = dataset.info
    check_data_settings(cfg, info)
    sharded = accelerator.distributed_type == DistributedType.FSDP
    state = TrainState.create(cfg, info, fused=not sharded)
    # The steps' randomness (noise, t, label dropout, the loader's worker seeds) restarts from a stream of its own
    # once the model is built: its initialisation draws a model-dependent number of values, and runs of one seed
    # should see the same noise whatever the architecture. A resumed run restores the stream from its checkpoint.
    set_seed(t.seed + STEP_STREAM, device_specific=True)
    if t.lora is not None and sharded:
        raise ValueError("train.lora with FSDP is not supported: LoRA fine-tunes fit one device; drop the FSDP config")
    state.model, state.optimizer = accelerator.prepare(state.model, state.optimizer)
    state.accelerator = accelerator
    state.params = [p for p in state.model.parameters() if p.requires_grad]
    # under FSDP the EMA is sharded like the model, so its update stays local to each process
    state.ema = shard_like(state.ema.to(accelerator.device), accelerator.unwrap_model(state.model))
    if t.compile:
        accelerator.unwrap_model(state.model).compile(dynamic=False)

    batches = start_run(
        accelerator, state, cfg.train, checkpoint, resume, dataset, cfg.data, micro_batch, to_dict(cfg)
    )
    return state, info, batches


def check_launch(accelerator: Accelerator, output_dir) -> int:
    """The number of processes, checked to be the number launched: Accelerate runs an FSDP or DeepSpeed config on a
    machine without GPUs as independent single processes, each of which would train alone into ``output_dir``."""
    world = accelerator.num_processes
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != world:
        raise LaunchError(
            f"launched {launched} processes but Accelerate runs {world} (distributed type "
            f"{accelerator.distributed_type.value}): each would train alone into {output_dir}. FSDP and DeepSpeed "
            "configs need GPUs; on CPUs launch with --multi_gpu and set train.cpu=true (gloo)"
        )
    return world


def start_run(
    accelerator: Accelerator,
    state: TrainState,
    t: RunConfig,
    checkpoint: Path | None,
    resume,
    dataset,
    data: DataConfig,
    micro_batch: int,
    config_values: dict,
    accum_steps: int = 1,
):
    """The end of every trainer's set-up: restore ``checkpoint`` into ``state`` (weights, EMA, optimiser, schedule,
    RNG streams), the resumable batch order from the restored step, the run's ``config.yaml`` and the trackers.
    Returns the micro-batch iterator."""
    output_dir = Path(t.output_dir)
    accum_steps = getattr(t, "grad_accum_steps", accum_steps)
    restored = {}
    if resume and checkpoint is None:
        accelerator.print(f"no checkpoint in {output_dir / 'checkpoints'}; starting from scratch")
        if accelerator.is_main_process:  # a run stopped before its first checkpoint: its log is written again
            trim_metrics(output_dir / "metrics.jsonl", 0)
    if note := ema_warmup_note(t):
        accelerator.print(note)
    if checkpoint is not None:
        restored = load_checkpoint(accelerator, checkpoint, state.model, state.ema, state.optimizer, state.scheduler)
        state.step = restored["step"]
        apply_optimizer_settings(accelerator, state.optimizer, state.scheduler, t, state.step)
        if accelerator.is_main_process:
            trim_metrics(output_dir / "metrics.jsonl", state.step)
        accelerator.print(f"resumed from {checkpoint} at step {state.step}")
    sampler = ResumableBatchSampler(
        len(dataset),
        micro_batch,
        accelerator.process_index,
        accelerator.num_processes,
        t.seed,
        data.random_flip,
        position=state.step * accum_steps,
    )
    pin = accelerator.device.type == "cuda"
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=data.num_workers, pin_memory=pin)
    batches = iter(loader)  # creating the iterator draws from the global RNG: restore it afterwards
    if "rng" in restored:
        set_rng_state(restored["rng"])

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(output_dir / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(config_values, sort_keys=False))
    if t.trackers:
        accelerator.init_trackers("flashdit", config=flat_dict(config_values))
    return batches


class Throughput:
    """Images per second since the last ``rate()``."""

    def __init__(self):
        self.start, self.images = time.perf_counter(), 0

    def add(self, n: int) -> None:
        self.images += n

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.images / max(now - self.start, 1e-9)
        self.start, self.images = now, 0
        return rate


def log_step(
    accelerator: Accelerator, output_dir: Path, state: TrainState, loss, terms, grad_norm, images_per_sec: float
) -> dict:
    """Reduce over processes, read back to the host (only here, at log steps), and write to the trackers and
    ``metrics.jsonl``."""
    logs = {"loss": accelerator.reduce(loss.detach(), "mean").item()}
    for name, value in terms.items():  # per-sample loss terms (the flow's mse and cos, the autoencoder's rec and kl)
        logs[name] = accelerator.reduce(value.mean().detach(), "mean").item()
    logs |= {"grad_norm": float(grad_norm), "lr": state.scheduler.get_last_lr()[0], "images_per_sec": images_per_sec}
    accelerator.log(logs, step=state.step)
    if accelerator.is_main_process:
        with open(output_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": state.step, **logs}) + "\n")
    return logs


def write_sample_grid(accelerator, pipe, cfg: ExperimentConfig, info: dict, output_dir: Path, step: int) -> None:
    grid = sample_grid(pipe, cfg, info["num_classes"])
    save_image(grid, output_dir / "samples" / f"step_{step:07d}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"samples": np.asarray(grid.convert("RGB"))}, step=step, dataformats="HWC")


def save_lora(model: FlashDiTTransformer2DModel, out_dir: Path) -> Path:
    """The adapter alone in diffusers' pipeline format (``pytorch_lora_weights.safetensors``, keys ``transformer.*``,
    with its PEFT config), written atomically; load it with ``pipe.load_lora_weights(out_dir)`` on the base
    pipeline."""
    from peft.utils import get_peft_model_state_dict

    layers = get_peft_model_state_dict(model)
    metadata = model.peft_config["default"].to_dict()

    def save(tmp: Path) -> None:
        FlashDiTPipeline.save_lora_weights(
            tmp, transformer_lora_layers=layers, transformer_lora_adapter_metadata=metadata
        )

    name = "pytorch_lora_weights.safetensors"
    return save_dir_atomically(save, out_dir, {name}, name, "LoRA adapter")


def export_checkpoint(cfg: ExperimentConfig, checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Export a checkpoint's EMA weights as a pipeline directory (no training)."""
    checkpoint = Path(checkpoint)
    check_output_dir(out_dir, PIPELINE_ENTRIES, "model_index.json", "FlashDiT pipeline")  # before any work
    check_checkpoint(checkpoint)
    info = build_dataset(cfg).info
    model = TrainState.create(cfg, info).ema  # the run's architecture, adapters included
    try:
        model.load_state_dict(load_file(checkpoint / "ema.safetensors"))
    except (RuntimeError, OSError, SafetensorError) as err:
        raise RuntimeError(f"{checkpoint}/ema.safetensors could not be loaded into this model config: {err}") from err
    return export_pipeline(make_pipeline(merged_copy(model.eval()), info, cfg), out_dir)


def flat_dict(d: dict, prefix: str = "") -> dict:
    """Nested dicts as one level of dotted keys; values other than scalars as strings (tracker-safe)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_dict(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out
