"""Two CPU processes (gloo) with the transformer and its EMA sharded by FSDP2: the package's train_step,
checkpoint save/load and EMA gathering. Run A trains 3 steps; run B trains 2, checkpoints, reloads into a
fresh sharded model and trains the third. Writes what it measured to argv[1]/result.json (rank 0).

    torchrun --nproc_per_node 2 tests/workers/fsdp_resume.py OUT
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch.distributed.fsdp import fully_shard

from flashdit.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from flashdit.config import load_config
from flashdit.models.transformer import FlashDiTTransformer2DModel
from flashdit.sharding import full_state_dict, is_sharded, shard_like
from flashdit.training import TrainState, build_lr_scheduler, gathered_ema, train_step

out = Path(sys.argv[1])
acc = Accelerator(cpu=True)
rank = acc.process_index
overrides = [
    "model.hidden_size=32",
    "model.depth=2",
    "model.num_heads=2",
    "model.patch_size=2",
    "model.size=null",
    "train.lr=1e-2",
    "train.warmup_steps=0",
    "train.ema_decay=0.5",
    "flow.cosine_weight=0",
]
cfg = load_config(None, overrides)
info = dict(channels=1, size=8, num_classes=10)
g = torch.Generator().manual_seed(0)
x1, y = torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
batch = [(x1[2 * rank : 2 * rank + 2], y[2 * rank : 2 * rank + 2])]  # each process its half


def sharded_state() -> TrainState:
    torch.manual_seed(0)
    state = TrainState.create(cfg, info)
    for block in state.model.blocks:
        fully_shard(block)
    fully_shard(state.model)
    state.ema = shard_like(state.ema, state.model)
    # FSDP2 replaces the parameters: the optimizer is built on the sharded ones (Accelerate's prepare does this)
    state.optimizer = torch.optim.AdamW(state.model.parameters(), lr=cfg.train.lr, betas=cfg.train.betas)
    state.scheduler = build_lr_scheduler(state.optimizer, cfg.train)
    state.params = list(state.model.parameters())
    return state


def run(steps: int, state: TrainState) -> None:
    for _ in range(steps):
        train_step(state, batch, cfg)


torch.manual_seed(100 + rank)
a = sharded_state()
run(3, a)
want_model, want_ema = full_state_dict(a.model), full_state_dict(a.ema)

torch.manual_seed(100 + rank)
b = sharded_state()
run(2, b)
path = save_checkpoint(acc, out, 2, b.model, b.ema, b.optimizer, b.scheduler, {"step": 2}, keep=2)
c = sharded_state()
restored = load_checkpoint(acc, path, c.model, c.ema, c.optimizer, c.scheduler)
set_rng_state(restored["rng"])
c.step = 2
run(1, c)
got_model, got_ema = full_state_dict(c.model), full_state_dict(c.ema)
plain = gathered_ema(c)

if rank == 0:
    local = sum(p.to_local().numel() for p in a.model.parameters())
    full = sum(v.numel() for v in want_model.values())
    saved = FlashDiTTransformer2DModel.from_config(a.model.config)
    saved.load_state_dict(load_file(path / "ema.safetensors"))  # the checkpoint loads into a plain model
    result = {
        "sharded": is_sharded(a.model) and is_sharded(a.ema),
        "local_fraction": local / full,
        "resume_exact_model": all(torch.equal(want_model[k], got_model[k]) for k in want_model),
        "resume_exact_ema": all(torch.equal(want_ema[k], got_ema[k]) for k in want_ema),
        "ema_moved": any(not torch.equal(want_ema[k], want_model[k]) for k in want_ema),
        "gathered_ema_is_plain": not is_sharded(plain)
        and all(torch.equal(plain.state_dict()[k], got_ema[k]) for k in got_ema),
        "num_processes": acc.num_processes,
    }
    (out / "result.json").write_text(json.dumps(result))
acc.wait_for_everyone()
