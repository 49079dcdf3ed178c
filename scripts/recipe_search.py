"""Recipe search for the Fashion-MNIST quickstart: which model, optimiser and sampler settings give the best
samples for a fixed budget of training time on 2 CPU cores (docs/recipe_search.md).

The budget is CPU time, but the runs may train anywhere: ``cost`` measures the seconds per training step of
every candidate model and batch on *this* machine (side by side, round robin), and a run trains for the
number of steps that fits its budget (30 min; 2 h for the long recipes). Rounds:

1. proxy: the old default recipe and one change at a time (geometry: window, depth vs width at equal cost;
   DWConv init; batch and learning rate; t sampling; flips), each at a third of the budget, scored on 500
   samples at guidance 1.5 and 3 (Euler 32).
2. full: the combination of each group's winner at the full budget, with EMA variants, the paper's window 4
   and the global-attention baseline; guidance swept 1-5 (Heun 32, 500 samples); the best run's sampler,
   step count, guidance interval and timestep shift swept too.
3. long: the combination at 2 h (the same model for 4x the steps, and twice the depth).
4. confirm: the best settings of the best runs on 2,000 samples (FID-2k, KID, class accuracy).

    python -m scripts.recipe_search cost                      # on the 2-core CPU machine: steps per budget
    python -m scripts.recipe_search search --device cuda      # the rounds (resumable: finished work is kept)
    python -m scripts.recipe_search report                    # tables -> docs/recipe_search.md

On a 2-core CPU alone, ``--plan cpu`` ran three geometry proxies, and ``--plan cpu-optim`` takes the default of
configs/fashion_mnist.yaml and changes its learning rate or its batch (a third of its time each,
300 samples at its stored sampling settings), then trains the winner, unless it is the default, for its whole time.

Every stage writes its result beside the run (``spec.json``, ``pipeline/``, ``scores.jsonl``) and is skipped
when present; a run whose recorded spec differs from the requested one is refused, never mixed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# The quickstart recipe before the search (configs/fashion_mnist.yaml as it was), cosine term off: on one
# grey channel it is inert (flow.flow_loss refuses it).
BASE = {
    "model.size": None,
    "model.patch_size": 2,
    "model.hidden_size": 128,
    "model.depth": 4,
    "model.num_heads": 2,
    "model.mixer": "iwin",
    "model.window_size": 4,
    "model.kernel_size": 3,
    "model.pos_embed": "none",
    "model.conv_init": "pytorch",
    "flow.t_sampling": "logit_normal",
    "flow.cosine_weight": 0.0,
    "data.kind": "fashion_mnist",
    "data.pad_to": 32,
    "data.random_flip": True,
    "train.global_batch_size": 64,
    "train.lr": 1.0e-3,
    "train.betas": [0.9, 0.99],
    "train.warmup_steps": 100,
    "train.lr_schedule": "cosine",
    "train.max_grad_norm": 1.0,
    "train.ema_decay": 0.999,
    "train.ema_warmup": True,
}

# One change at a time from BASE; the first option of each group is BASE itself.
GEOMETRIES = {
    "w128-d4-win4": {},
    "w128-d4-win8": {"model.window_size": 8},
    "w96-d8-win4": {"model.hidden_size": 96, "model.depth": 8},
    "w96-d8-win8": {"model.hidden_size": 96, "model.depth": 8, "model.window_size": 8},
    "w128-d8-win8": {"model.depth": 8, "model.window_size": 8},
    # patch 4: an 8x8 token grid, a quarter of the tokens, so four times the width for about the same FLOPs per image;
    # the wider GEMMs run nearer this CPU's matmul peak (docs/recipe_search.md: 1.7-2.0x faster steps side by side)
    "p4-w256-d4-win4": {"model.patch_size": 4, "model.hidden_size": 256, "model.num_heads": 4},
}
GROUPS = {
    "geometry": GEOMETRIES,
    "conv_init": {"pytorch": {}, "xavier": {"model.conv_init": "xavier"}},
    "optim": {
        "bs64-lr1e-3": {},
        "bs64-lr2e-3": {"train.lr": 2.0e-3},
        "bs64-lr5e-4": {"train.lr": 5.0e-4},
        "bs128-lr2e-3": {"train.global_batch_size": 128, "train.lr": 2.0e-3},
        "bs32-lr7e-4": {"train.global_batch_size": 32, "train.lr": 7.0e-4},
    },
    "t_sampling": {"logit-normal": {}, "uniform": {"flow.t_sampling": "uniform"}},
    "flip": {"flip": {}, "no-flip": {"data.random_flip": False}},
}
BATCHES = (32, 64, 128)
ATTENTION = {"model.mixer": "attention", "model.kernel_size": None, "model.pos_embed": "sincos"}
# The plan for a 2-core CPU alone (the whole grid above needs a GPU or many CPU hours): three proxies run side
# by side on the levers the grid's probes point at (window 8, depth vs width at the cheaper batch of 32, the
# official DWConv init), then the winner trains at full length as the quickstart (configs/fashion_mnist.yaml).
CPU_PROXIES = {
    "cpu-w128-d4-win8-bs32": {"model.window_size": 8, "train.global_batch_size": 32},
    "cpu-w96-d8-win8-bs32": {
        "model.hidden_size": 96,
        "model.depth": 8,
        "model.window_size": 8,
        "train.global_batch_size": 32,
    },
    "cpu-w128-d4-win8-bs32-xavier": {
        "model.window_size": 8,
        "train.global_batch_size": 32,
        "model.conv_init": "xavier",
    },
}
# The default the cpu-optim plan starts from, as changes from BASE: configs/fashion_mnist.yaml as it was before it
# took that plan's winning learning rate (4e-3 for 1e-3); and, read from the config, its step count (the 30-minute
# budget on this CPU, measured by training it: docs/recipe_search.md). Every run was scored, and its pipeline
# exported, with the sampling settings the default stored then (Euler 32); the few-step ladder has since given the
# shipped config UniPC at 6 steps (docs/few_step.md), so the search keeps its own.
DEFAULT = {**GEOMETRIES["p4-w256-d4-win4"], "train.global_batch_size": 32}
_SHIPPED = yaml.safe_load((ROOT / "configs" / "fashion_mnist.yaml").read_text())
DEFAULT_STEPS = _SHIPPED["train"]["max_steps"]
DEFAULT_SAMPLING = {
    "guidance_scale": 2.5,
    "guidance_interval": [0.1, 0.8],
    "timestep_shift": 0.5,
    "sampler": "euler",
    "num_inference_steps": 32,
}
# The 2-core plan for the levers the first one left out, on the default: learning rate and batch (at the square-root
# learning-rate scaling), one change at a time. Proxies train for a third of the default's time; the winner, if it is
# not the default, trains for the whole of it. Both are budgeted in the default's steps at equal time (steps x the
# cost ratio measured side by side), so the whole run compares with the default's own. No EMA decay: with the
# default's EMA warm-up, min(decay, (1 + s)/(10 + s)) reaches 0.999 only at step 8,990, so every decay from 0.998 up
# gives the same weights in these runs (an EMA 0.9995 proxy was bitwise the default's: docs/recipe_search.md).
# Learning rate 4e-3 was added after 5e-4 < 1e-3 < 2e-3 left the top of the range open.
OPTIM_PROXIES = {
    "optim-base": {},
    "optim-lr5e-4": {"train.lr": 5.0e-4},
    "optim-lr2e-3": {"train.lr": 2.0e-3},
    "optim-lr4e-3": {"train.lr": 4.0e-3},
    "optim-bs64-lr1.4e-3": {"train.global_batch_size": 64, "train.lr": 1.4e-3},
}
OPTIM_FRACTION = {"optim-proxy": 1 / 3, "optim-full": 1.0}
BUDGET_MINUTES = {"proxy": 10.0, "cpu-proxy": 4.0, "full": 30.0, "long": 120.0}
# start-up, sample grids and export inside the budget
RESERVE_MINUTES = {"proxy": 0.0, "cpu-proxy": 0.0, "full": 2.0, "long": 3.0}

PROXY_SWEEP = [dict(guidance_scale=g, sampler="euler", num_inference_steps=32) for g in (1.5, 3.0)]
GUIDANCE_SWEEP = [
    dict(guidance_scale=g, sampler="heun", num_inference_steps=32) for g in (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
]
SAMPLE_DEFAULTS = dict(timestep_shift=1.0, guidance_interval=[0.0, 1.0])
NUM_REFERENCE = 2000


# --------------------------------------------------------------------------------------------
# specs: a run is BASE + overrides, trained for the steps its budget buys


def model_key(overrides: dict) -> str:
    """What a step costs depends on the model and the batch only (global attention has no window)."""
    o = {**BASE, **overrides}
    size = f"w{o['model.hidden_size']}-d{o['model.depth']}"
    # patch size and heads appear only where they differ from BASE, so keys measured before they varied still hold
    for key, tag in (("model.patch_size", "p"), ("model.num_heads", "h")):
        if o[key] != BASE[key]:
            size += f"-{tag}{o[key]}"
    if o["model.mixer"] == "attention":
        return f"attention-{size}-bs{o['train.global_batch_size']}"
    return f"iwin-{size}-win{o['model.window_size']}-bs{o['train.global_batch_size']}"


def cost_keys() -> dict[str, dict]:
    """Every model/batch the rounds can ask for: the geometries, twice their depth (long), attention."""
    out = {}
    for geo in GEOMETRIES.values():
        for batch in BATCHES:
            for extra in ({}, ATTENTION, {"model.depth": 2 * {**BASE, **geo}["model.depth"]}):
                o = {**geo, "train.global_batch_size": batch, **extra}
                out[model_key(o)] = o
    return out


def cost_seconds(cost: dict, key: str) -> float:
    """Seconds per step on an idle machine: the ratio to the old default measured side by side (steal time on
    a shared VM slows both alike) times the old default's median over all measurements."""
    anchor = statistics.median(c["step_seconds"] / c["vs_old_default"] for c in cost.values())
    return round(cost[key]["vs_old_default"] * anchor, 4)


def step_cost(cost: dict, overrides: dict) -> float:
    key = model_key(overrides)
    if key not in cost:
        raise SystemExit(f"no CPU cost for {key}: run `python -m scripts.recipe_search cost` on the CPU machine")
    return cost_seconds(cost, key)


def spec_for(name: str, round_: str, overrides: dict, steps: int, step_s: float, budget_minutes: float) -> dict:
    return {
        "name": name,
        "round": round_,
        "overrides": overrides,
        "steps": steps,
        "cpu_step_seconds": step_s,
        "cpu_minutes": round(steps * step_s / 60, 1),
        "budget_minutes": budget_minutes,
    }


def make_spec(name: str, round_: str, overrides: dict, cost: dict, scale: float = 1.0) -> dict:
    """BASE with ``overrides``, for the steps that fit its round's budget less the reserve."""
    step_s = step_cost(cost, overrides)
    budget = BUDGET_MINUTES[round_] * scale
    steps = max(1, int((budget - RESERVE_MINUTES[round_] * scale) * 60 / step_s))
    return spec_for(name, round_, overrides, steps, step_s, budget)


def equal_time_spec(name: str, round_: str, change: dict, cost: dict, scale: float = 1.0) -> dict:
    """The default with ``change``, for ``OPTIM_FRACTION[round_]`` of the default's steps at equal time."""
    overrides = {**DEFAULT, **change}
    step_s = step_cost(cost, overrides)
    budget_s = DEFAULT_STEPS * OPTIM_FRACTION[round_] * scale * step_cost(cost, DEFAULT)
    return spec_for(name, round_, overrides, max(1, round(budget_s / step_s)), step_s, round(budget_s / 60, 1))


def config_for(spec: dict, out: Path, data_path: str | None):
    from flashdit.config import load_config

    values = {**BASE, **spec["overrides"]}
    steps = spec["steps"]
    values.update(
        {
            "train.output_dir": str(out / spec["name"]),
            "train.max_steps": steps,
            "train.sample_every": 0,
            "train.checkpoint_every": max(1, steps // 2),
            "train.keep_checkpoints": 1,
            "train.trackers": [],
            "train.log_every": 100,
            "data.path": data_path,
        }
    )
    if spec.get("round", "").startswith("optim-"):  # the exported pipeline samples as it was scored
        values.update({f"sample.{k}": v for k, v in DEFAULT_SAMPLING.items()})
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in values.items()])


# --------------------------------------------------------------------------------------------
# stage: CPU cost per step


def measure_cost(args) -> dict:
    """Seconds per full training step (EMA included) of every model and batch the rounds can use, timed
    round robin with the old default in one process (medians), with ``--threads`` threads."""
    import torch

    from bench.common import time_round_robin
    from flashdit.training import make_train_step

    torch.set_num_threads(args.threads)
    info = dict(channels=1, size=32, num_classes=10)
    path = Path(args.cost)
    done = json.loads(path.read_text())["steps"] if path.is_file() else {}
    old_default = make_train_step(
        config_for({"name": "cost", "overrides": {}, "steps": 1}, Path("/tmp"), None), info, torch.device("cpu")
    )
    for key, overrides in cost_keys().items():
        if key in done:
            continue
        # two models at a time: many live models slow each other's steps (allocator page faults)
        cfg = config_for({"name": "cost", "overrides": overrides, "steps": 1}, Path("/tmp"), None)
        step = make_train_step(cfg, info, torch.device("cpu"))
        t = time_round_robin({"this": step, "old": old_default}, repeats=args.repeats, min_seconds=args.min_seconds)
        done[key] = {"step_seconds": round(t["this"], 4), "vs_old_default": round(t["this"] / t["old"], 3)}
        print(f"{key}: {t['this']:.3f} s/step ({t['this'] / t['old']:.2f}x the old default)", flush=True)
        write_json(path, {"threads": args.threads, "torch": torch.__version__, "steps": done})
        del step
    return done


# --------------------------------------------------------------------------------------------
# stage: train and score one run (a worker process)


def reference(args):
    from flashdit.data import load_idx_split, pad_images
    from flashdit.evaluation import Reference

    path = Path(args.out) / f"reference_test_32px_{NUM_REFERENCE}.npz"
    if path.is_file():
        from flashdit.evaluation import load_reference

        return load_reference(path)

    images = pad_images(load_idx_split(args.data, "test")[0][:NUM_REFERENCE], 32)
    ref = Reference.from_features(inception(args)(images)["pool"], "fashion-mnist:test[:2000]", [32, 32])
    ref.save(path)
    return ref


_INCEPTION = None


def inception(args):
    global _INCEPTION
    if _INCEPTION is None:
        from flashdit.evaluation import InceptionFeatures

        _INCEPTION = InceptionFeatures(args.inception_weights, device=args.device, batch_size=64)
    return _INCEPTION


def setting_key(setting: dict, n: int) -> str:
    return json.dumps({**SAMPLE_DEFAULTS, **setting, "num_samples": n}, sort_keys=True)


def read_scores(run_dir: Path) -> dict[str, dict]:
    path = run_dir / "scores.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["key"]: r for r in rows}


def score(run_dir: Path, settings: list[dict], n: int, args) -> list[dict]:
    """FID / KID against the real test set and the judge's class accuracy for each sampling setting."""
    import numpy as np
    import torch

    from flashdit.classifier import JUDGE_CACHE, class_accuracy, fashion_mnist_classifier
    from flashdit.evaluation import balanced_labels, compute_metrics
    from flashdit.pipeline import load_pipeline
    from flashdit.sampling import generate

    done = read_scores(run_dir)
    todo = [s for s in settings if setting_key(s, n) not in done]
    if todo:
        pipe = load_pipeline(str(run_dir / "pipeline"), args.device)
        pipe.set_progress_bar_config(disable=True)
        judge, judge_acc = fashion_mnist_classifier(Path(args.cache) / JUDGE_CACHE.name if args.cache else JUDGE_CACHE)
        ref = reference(args)
        labels = balanced_labels(n, 10)
        for setting in todo:
            start = time.perf_counter()
            call = {**SAMPLE_DEFAULTS, **setting}
            images = []
            with torch.no_grad():
                for _, batch in generate(pipe, labels, list(range(n)), args.sample_batch, output_type="np", **call):
                    images.extend(batch)
            images = (np.clip(np.stack(images), 0, 1) * 255).round().astype(np.uint8)
            feats = inception(args)(images)
            m = compute_metrics(feats, ref, ["fid", "kid"], kid_subset_size=min(1000, n))
            acc = class_accuracy(judge, images, np.asarray(labels))
            row = {
                "key": setting_key(setting, n),
                **call,
                "num_samples": n,
                "fid": round(m["fid"], 2),
                "kid": round(m["kid_mean"], 5),
                "class_accuracy": round(acc["class_accuracy"], 4),
                "per_class": acc["class_accuracy_per_class"],
                "judge_test_accuracy": judge_acc,
                "seconds": round(time.perf_counter() - start, 1),
            }
            with open(run_dir / "scores.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            done[row["key"]] = row
            if n == args.confirm_samples:
                grid = dict(images=images[:200], labels=np.asarray(labels[:200]))
                np.savez_compressed(run_dir / "confirm_samples.npz", **grid)
    return [done[setting_key(s, n)] for s in settings]


def worker(args) -> None:
    """Train one run (spec.json in its directory) and score its round's sweep."""
    import torch

    from flashdit.training import train

    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 like the CPU
    torch.backends.cudnn.allow_tf32 = False
    run_dir = Path(args.out) / args.run
    spec = json.loads((run_dir / "spec.json").read_text())
    if not (run_dir / "pipeline" / "model_index.json").is_file():
        start = time.perf_counter()
        train(config_for(spec, Path(args.out), args.data), resume=True)
        write_json(run_dir / "train_time.json", {"device": args.device, "seconds": round(time.perf_counter() - start)})
    if spec["round"].startswith("optim-"):
        n = args.num_samples if spec["round"] == "optim-proxy" else args.confirm_samples
        score(run_dir, [DEFAULT_SAMPLING], n, args)
        return
    sweep = PROXY_SWEEP if spec["round"] in ("proxy", "cpu-proxy") else GUIDANCE_SWEEP
    score(run_dir, sweep, args.num_samples, args)


# --------------------------------------------------------------------------------------------
# the rounds


def write_json(path: Path, data) -> None:
    from flashdit.utils import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def prepare(spec: dict, out: Path) -> None:
    run_dir = out / spec["name"]
    path = run_dir / "spec.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != spec:
            raise SystemExit(f"{run_dir} was made with another spec ({old}); delete it or use another --out")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(path, spec)


def run_all(specs: list[dict], args) -> None:
    """Train and score the runs in worker processes, ``--workers`` at a time (longest first)."""
    out = Path(args.out)
    for spec in specs:
        prepare(spec, out)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": path}

    def one(spec):
        cmd = [sys.executable, "-m", "scripts.recipe_search", "worker", "--run", spec["name"], *common_argv(args)]
        with open(out / spec["name"] / "log.txt", "a") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
        print(f"  {spec['name']}: {'done' if rc == 0 else f'FAILED (exit {rc}, see its log.txt)'}", flush=True)
        return rc

    order = sorted(specs, key=lambda s: -s["steps"] * s["cpu_step_seconds"])
    with ThreadPoolExecutor(args.workers) as pool:
        codes = list(pool.map(one, order))
    failed = [s["name"] for s, rc in zip(order, codes) if rc]
    if failed:
        print(f"failed: {failed}; the search goes on without them (rerun to retry; finished runs are kept)")


def best(run_dir: Path, n: int | None = None) -> dict:
    """The run's best setting on ``n`` samples (default: the sweeps' count, the smallest): lowest FID."""
    rows = list(read_scores(run_dir).values())
    if not rows:
        return {"fid": float("inf")}
    n = n or min(r["num_samples"] for r in rows)
    rows = [r for r in rows if r["num_samples"] == n]
    return min(rows, key=lambda r: r["fid"])


def proxy_specs(cost: dict, scale: float) -> list[dict]:
    specs = [make_spec("proxy-base", "proxy", {}, cost, scale)]
    for group, options in GROUPS.items():
        for option, overrides in list(options.items())[1:]:
            specs.append(make_spec(f"proxy-{group}-{option}", "proxy", overrides, cost, scale))
    return specs


def combine(out: Path) -> tuple[dict, dict]:
    """Each group's winner among its proxy runs (lowest best FID-500); returns overrides and the choices."""
    overrides, chosen = {}, {}
    for group, options in GROUPS.items():
        names = list(options)
        fids = {o: best(out / ("proxy-base" if i == 0 else f"proxy-{group}-{o}"))["fid"] for i, o in enumerate(names)}
        chosen[group] = min(fids, key=fids.get)
        overrides.update(options[chosen[group]])
    return overrides, chosen


def full_specs(combo: dict, cost: dict, scale: float) -> list[dict]:
    o = {**BASE, **combo}
    other_window = {"model.window_size": 4 if o["model.window_size"] == 8 else 8}
    return [
        make_spec("full-best", "full", combo, cost, scale),
        make_spec("full-best-ema0.9995", "full", {**combo, "train.ema_decay": 0.9995}, cost, scale),
        make_spec("full-best-ema0.998", "full", {**combo, "train.ema_decay": 0.998}, cost, scale),
        make_spec(f"full-best-win{other_window['model.window_size']}", "full", {**combo, **other_window}, cost, scale),
        make_spec("full-attention", "full", {**combo, **ATTENTION}, cost, scale),
        make_spec("long-best", "long", combo, cost, scale),
        make_spec("long-best-2xdepth", "long", {**combo, "model.depth": 2 * o["model.depth"]}, cost, scale),
    ]


def sampler_sweep(guidance: float) -> list[dict]:
    sweep = []
    for g in sorted({guidance, guidance + 1.0}):
        sweep += [
            dict(guidance_scale=g, sampler=s, num_inference_steps=n)
            for s, n in (("euler", 32), ("euler", 64), ("heun", 16), ("heun", 32), ("sde", 64))
        ]
        sweep += [
            dict(guidance_scale=g, sampler="heun", num_inference_steps=32, guidance_interval=[lo, 1.0])
            for lo in (0.1, 0.2)
        ]
        sweep += [dict(guidance_scale=g, sampler="heun", num_inference_steps=32, timestep_shift=0.5)]
    return sweep


def search(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cost = json.loads(Path(args.cost).read_text())["steps"]
    reference(args)  # once, before the workers need it
    if args.plan == "cpu":
        run_all([make_spec(name, "cpu-proxy", o, cost, args.scale) for name, o in CPU_PROXIES.items()], args)
        ranked = sorted(CPU_PROXIES, key=lambda name: best(out / name)["fid"])
        print(f"ranked by FID-{args.num_samples}: {ranked}", flush=True)
        return
    if args.plan == "cpu-optim":
        optim_search(args, cost)
        return

    print("round 1: proxies", flush=True)
    run_all(proxy_specs(cost, args.scale), args)
    combo, chosen = combine(out)
    write_json(out / "combination.json", {"overrides": combo, "chosen": chosen})
    print(f"combination: {chosen}", flush=True)

    print("round 2: full budget and long recipes", flush=True)
    specs = full_specs(combo, cost, args.scale)
    run_all(specs, args)

    print("round 3: samplers for the best full run", flush=True)
    full = [s["name"] for s in specs if s["round"] == "full" and s["name"] != "full-attention"]
    top = min(full, key=lambda name: best(out / name)["fid"])
    g = best(out / top)["guidance_scale"]
    score(out / top, sampler_sweep(g), args.num_samples, args)

    print("round 4: 2,000 samples", flush=True)
    chosen_sampling = {
        k: v
        for k, v in best(out / top).items()
        if k in ("guidance_scale", "sampler", "num_inference_steps", "timestep_shift", "guidance_interval")
    }
    write_json(out / "best.json", {"run": top, "sampling": chosen_sampling})
    for name in [top, "full-attention", "long-best", "long-best-2xdepth"]:
        b = best(out / name)
        if "guidance_scale" not in b:
            continue
        setting = {**chosen_sampling, "guidance_scale": b["guidance_scale"]}
        row = score(out / name, [setting], args.confirm_samples, args)[0]
        print(f"  {name}: FID {row['fid']}, class accuracy {row['class_accuracy']}", flush=True)


def optim_search(args, cost: dict) -> None:
    """Proxies of the default's optimiser levers, ranked by FID at its stored sampling settings; the winner,
    unless it is the default itself (already trained in full: configs/fashion_mnist.yaml), at full length."""
    out = Path(args.out)
    run_all([equal_time_spec(name, "optim-proxy", o, cost, args.scale) for name, o in OPTIM_PROXIES.items()], args)
    fids = {name: best(out / name)["fid"] for name in OPTIM_PROXIES}
    ranked = sorted(fids, key=fids.get)
    print(f"ranked by FID-{args.num_samples}: " + ", ".join(f"{n} {fids[n]}" for n in ranked), flush=True)
    winner = ranked[0]
    write_json(out / "optim_winner.json", {"ranked": ranked, "fid": fids, "winner": winner})
    if winner == "optim-base":
        print("the default wins its proxies: nothing to train at full length", flush=True)
        return
    name = winner.replace("optim-", "optim-full-")
    full = equal_time_spec(name, "optim-full", OPTIM_PROXIES[winner], cost, args.scale)
    run_all([full], args)
    row = best(out / name, args.confirm_samples)
    print(f"{name}: FID-{args.confirm_samples} {row['fid']}, class accuracy {row['class_accuracy']}", flush=True)


# --------------------------------------------------------------------------------------------
# report


def fmt_overrides(overrides: dict) -> str:
    return ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in overrides.items()) or "(old default)"


def report(args) -> Path:
    out = Path(args.out)
    lines = [
        "# Recipe search: results",
        "",
        f"Written by `python -m scripts.recipe_search report` from `{out}`; "
        "FID and KID against 2,000 real test images, class accuracy by the judge CNN; n samples per score.",
        "",
    ]
    runs = sorted(p.parent for p in out.glob("*/spec.json"))
    rows = []
    for run_dir in runs:
        spec = json.loads((run_dir / "spec.json").read_text())
        scores = read_scores(run_dir)
        if not scores:
            continue
        b = best(run_dir)
        t = json.loads((run_dir / "train_time.json").read_text()) if (run_dir / "train_time.json").is_file() else {}
        rows.append(
            (
                spec["round"],
                spec["name"],
                fmt_overrides(spec["overrides"]),
                spec["steps"],
                spec["cpu_minutes"],
                t.get("seconds"),
                b,
            )
        )
    order = {"cpu-proxy": 0, "proxy": 1, "optim-proxy": 2, "full": 3, "optim-full": 4, "long": 5}
    lines += [
        "| round | run | changes from the old default | steps | CPU min | training wall s | best setting | "
        "n | FID | KID | class acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (order[r[0]], r[6]["fid"])):
        b = r[6]
        lines.append(
            f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]} | {b['guidance_scale']} "
            f"({b['sampler']} {b['num_inference_steps']}) | {b['num_samples']} | {b['fid']} | "
            f"{b['kid']:.4f} | {b['class_accuracy']:.3f} |"
        )
    lines += [
        "",
        "## Every score",
        "",
        "| run | n | guidance | sampler | steps | interval | shift | FID | KID | class acc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run_dir in runs:
        for r in read_scores(run_dir).values():
            lines.append(
                f"| {run_dir.name} | {r['num_samples']} | {r['guidance_scale']} | {r['sampler']} | "
                f"{r['num_inference_steps']} | {r['guidance_interval']} | {r['timestep_shift']} | "
                f"{r['fid']} | {r['kid']:.4f} | {r['class_accuracy']:.3f} |"
            )
    path = Path(args.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(path)
    return path


# --------------------------------------------------------------------------------------------


def common_argv(args) -> list[str]:
    argv = [
        "--out",
        args.out,
        "--cost",
        args.cost,
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        *(["--cache", args.cache] if args.cache else []),
        "--sample-batch",
        str(args.sample_batch),
        "--scale",
        str(args.scale),
        "--num-samples",
        str(args.num_samples),
        "--confirm-samples",
        str(args.confirm_samples),
    ]
    if args.data:
        argv += ["--data", args.data]
    if args.inception_weights:
        argv += ["--inception-weights", args.inception_weights]
    return argv


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["cost", "search", "report", "worker"])
    p.add_argument("--out", default="runs/recipe_search")
    p.add_argument(
        "--cost",
        default=str(ROOT / "docs" / "recipe_search_cost.json"),
        help="CPU seconds per step of each model and batch (written by the cost stage)",
    )
    p.add_argument("--report", default=str(ROOT / "docs" / "recipe_search_results.md"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=1, help="runs trained at once (search)")
    p.add_argument(
        "--plan",
        choices=["grid", "cpu", "cpu-optim"],
        default="grid",
        help="(search) the grid, the 2-core plan, or the 2-core plan for the default's learning rate and batch",
    )
    p.add_argument("--threads", type=int, default=2, help="CPU threads per run (cost: the budget's cores)")
    p.add_argument("--data", default=None, help="Fashion-MNIST IDX directory (default: Debian's)")
    p.add_argument("--cache", default=None, help="directory of the judge CNN (default: flashdit's, $FLASHDIT_CACHE)")
    p.add_argument("--inception-weights", default=None)
    p.add_argument("--sample-batch", type=int, default=250)
    p.add_argument("--scale", type=float, default=1.0, help="multiply every budget (smoke tests: 0.001)")
    p.add_argument("--num-samples", type=int, default=500, help="samples per setting in the sweeps")
    p.add_argument("--confirm-samples", type=int, default=2000, help="samples per confirmed setting")
    p.add_argument("--run", help="(worker) the run to train and score")
    p.add_argument("--repeats", type=int, default=3, help="(cost) timed rounds")
    p.add_argument("--min-seconds", type=float, default=2.0, help="(cost) least timed seconds per case")
    return p.parse_args(argv)


def main(args) -> None:
    {"cost": measure_cost, "search": search, "report": report, "worker": worker}[args.stage](args)


if __name__ == "__main__":
    main(parse_args())
