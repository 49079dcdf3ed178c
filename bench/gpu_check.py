"""The GPU check: one command that runs FlashDiT's accelerator-only checks and measures it on one GPU, in under 8
minutes, and prints the tables docs/benchmarks.md takes.

    python -m bench.gpu_check --out gpu_check.json        # on a GPU (from the repository root)
    python -m bench.gpu_check --smoke                     # on CPU: tiny sizes through the same code (CI runs this)

1. ``tests``: the accelerator-only tests (``pytest -m gpu``; they skip on CPU).
2. ``flex``: a FlashDiT's output and every parameter gradient with ``set_attention_backend("flex")`` (all windows of
   an image in one flex_attention call) against PyTorch's SDPA path. PyTorch has no FlexAttention backward on CPU:
   there the smoke version compares the forward only.
3. ``recipe``: the latent recipe's train step (configs/fashion_mnist_latent.yaml) in fp32, under bf16 autocast, and
   with its blocks compiled (``torch.compile``): losses finite and close, seconds per step.
4. ``xl``: FlashDiT-XL/1 against the same model with global attention and a sin-cos position embedding, train-step
   images/s (bf16 autocast, AdamW) at 16x16 and 32x32 latents of 32 channels, with SDPA and with flex attention;
   the two models of a row are timed round robin in one process, so the ratio is side by side.
5. ``sampling``: images/s of FlashDiT-XL/1 sampling 16x16 latents (Euler, 32 steps, guidance from t = 0.11).

The smoke version swaps XL/1 for a width-64 model, the batches for 2 and the timings for a round or two.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from bench.common import markdown_table, setup, time_round_robin
from flashdit import FlashDiTTransformer2DModel
from flashdit.config import load_config
from flashdit.pipeline import FlashDiTPipeline
from flashdit.training import make_train_step

ROOT = Path(__file__).resolve().parent.parent
ATTENTION = dict(mixer="attention", kernel_size=None, pos_embed="sincos")
SMOKE_SIZE = dict(hidden_size=64, depth=2, num_heads=2, patch_size=1)


def compile_backend(args) -> str:
    """Inductor on a GPU; the smoke version traces the same graphs with the eager backend (no C++ build on CPU)."""
    return "eager" if args.smoke else "inductor"


def section(title: str) -> None:
    print(f"\n## {title}\n", flush=True)


def run_tests(args) -> dict:
    """``pytest -m gpu``: the tests that need an accelerator (they skip without one)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", str(ROOT / "tests")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    print(f"`{' '.join(cmd[2:])}`: {last} (exit {proc.returncode}, {time.perf_counter() - start:.0f} s)")
    return {"returncode": proc.returncode, "summary": last}


def tiny_or(size: str, smoke: bool, **kwargs) -> FlashDiTTransformer2DModel:
    if smoke:
        return FlashDiTTransformer2DModel(**SMOKE_SIZE, **kwargs)
    return FlashDiTTransformer2DModel.from_size(size, **kwargs)


def check_flex(args, device: torch.device) -> dict:
    """Flex attention against SDPA: the output, and on GPUs every parameter gradient."""
    torch.manual_seed(0)
    size = "FlashDiT-S/1"  # small enough for fp32 gradients on any GPU; windows over a 16x16 grid
    model = tiny_or(size, args.smoke, in_channels=4, sample_size=16).to(device)
    for p in model.parameters():  # adaLN-Zero starts every block at the identity: randomise it
        torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(2, 4, 16, 16, device=device)
    t, y = torch.rand(2, device=device), torch.tensor([1, 3], device=device)
    backward = device.type == "cuda"
    results = {}
    for backend in ("sdpa", "flex"):
        model.reset_attention_backend() if backend == "sdpa" else model.set_attention_backend("flex")
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(backward):
            out = model(x, t, y).sample
            if backward:
                out.square().mean().backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        results[backend] = (out.detach(), grads)
    model.reset_attention_backend()
    (o1, g1), (o2, g2) = results["sdpa"], results["flex"]
    out_err = (o1 - o2).abs().max().item()
    grad_err = (
        max(((g1[n] - g2[n]).abs().max() / g1[n].abs().max().clamp_min(1e-12)).item() for n in g1) if g1 else None
    )
    ok = out_err < 1e-4 and (grad_err is None or grad_err < 1e-3)
    print(
        markdown_table(
            ["check", "max |flex - sdpa|", "tolerance"],
            [
                ["output", f"{out_err:.2e}", "1e-4"],
                ["gradients (max relative)", "no CPU backward" if grad_err is None else f"{grad_err:.2e}", "1e-3"],
            ],
        )
    )
    return {"output_max_abs": out_err, "grad_max_rel": grad_err, "ok": ok}


def recipe_steps(args, device: torch.device) -> dict:
    """The latent recipe's step in fp32, bf16 autocast and compiled blocks: finite losses, seconds per step."""
    overrides = ["train.global_batch_size=" + str(2 if args.smoke else 32)]
    if args.smoke:
        overrides += [f"model.{k}={v}" for k, v in SMOKE_SIZE.items()]
    cfg = load_config(ROOT / "configs" / "fashion_mnist_latent.yaml", overrides)
    info = dict(channels=4, size=16, num_classes=10)
    variants = {}
    for name in ("fp32", "bf16 autocast", "bf16 autocast + compiled blocks"):
        step = make_train_step(cfg, info, device, seed=0)
        model = step.state.model
        if "compiled" in name:
            model.set_cpu_linear_backend("blas")
            for block in model.blocks:  # regional compilation: one graph, reused by every block
                block.compile(dynamic=False, backend=compile_backend(args))
        autocast = "bf16" in name

        def run(step=step, autocast=autocast):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                return step()

        start = time.perf_counter()
        first = run()[0].item()  # compiles, when it does
        variants[name] = {"fn": run, "first_seconds": time.perf_counter() - start, "first_loss": first}
    times = time_round_robin({n: v["fn"] for n, v in variants.items()}, repeats=args.repeats)
    rows, out = [], {}
    reference = variants["fp32"]["first_loss"]
    for name, v in variants.items():  # the first loss: the same weights and batch in every variant
        out[name] = {"seconds": times[name], "first_loss": v["first_loss"], "first_call_seconds": v["first_seconds"]}
        rows.append(
            [name, f"{v['first_loss']:.4f}", f"{times[name] * 1000:.1f}", f"{times['fp32'] / times[name]:.2f}x"]
            + [f"{v['first_seconds']:.1f}"]
        )
    print(markdown_table(["step", "first loss", "ms/step", "vs fp32", "first call s"], rows))
    out["ok"] = all(
        math.isfinite(v["first_loss"]) and abs(v["first_loss"] - reference) <= 0.02 * abs(reference)
        for v in variants.values()
    )
    return out


def xl_throughput(args, device: torch.device) -> dict:
    """FlashDiT-XL/1 against global attention: train-step images/s, side by side, per grid and attention backend."""
    grids = (8, 16) if args.smoke else (16, 32)
    rows, out = [], {}
    for grid in grids:
        batch = 2 if args.smoke else (32 if grid == 16 else 8)
        for backend in ("sdpa", "flex") if device.type == "cuda" else ("sdpa",):  # no flex backward on CPU
            steps = {}
            for name, extra in (("flashdit", {}), ("attention", ATTENTION)):
                torch.manual_seed(0)
                model = tiny_or("FlashDiT-XL/1", args.smoke, in_channels=32, sample_size=grid, **extra).to(device)
                if backend == "flex":
                    model.set_attention_backend("flex")
                    for block in model.blocks:  # flex_attention is fast only compiled
                        block.compile(dynamic=False, backend=compile_backend(args))
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
                x = torch.randn(batch, 32, grid, grid, device=device)
                t, y = torch.rand(batch, device=device), torch.randint(0, 1000, (batch,), device=device)

                def step(model=model, opt=opt, x=x, t=t, y=y):
                    opt.zero_grad(set_to_none=True)
                    with torch.autocast(device.type, dtype=torch.bfloat16):
                        loss = (model(x, t, y).sample.float() - x).square().mean()
                    loss.backward()
                    opt.step()

                steps[name] = step
            seconds = time_round_robin(steps, repeats=args.repeats, warmup=2)
            ips = {n: batch / s for n, s in seconds.items()}
            out[f"{grid}x{grid} {backend}"] = {"images_per_second": ips, "ratio": ips["flashdit"] / ips["attention"]}
            rows.append(
                [
                    f"{grid}x{grid}",
                    backend,
                    str(batch),
                    f"{ips['flashdit']:.1f}",
                    f"{ips['attention']:.1f}",
                    f"{ips['flashdit'] / ips['attention']:.2f}x",
                ]
            )
            del steps
            if device.type == "cuda":
                torch.cuda.empty_cache()
    size = "width-64 smoke model" if args.smoke else "FlashDiT-XL/1"
    print(markdown_table(["latents", "attention", "batch", f"{size} img/s", "global attention img/s", "ratio"], rows))
    return out


def sampling(args, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = tiny_or("FlashDiT-XL/1", args.smoke, in_channels=32, sample_size=16).to(device).eval()
    pipe = FlashDiTPipeline(model, FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    batch, steps = (2, 4) if args.smoke else (32, 32)
    labels = list(range(batch))

    def call():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pipe(
                labels,
                guidance_scale=4.0,
                num_inference_steps=steps,
                guidance_interval=(0.11, 1.0),
                output_type="latent",
            )

    seconds = time_round_robin({"sample": call}, repeats=args.repeats)["sample"]
    print(
        markdown_table(
            ["model", "batch", "Euler steps", "images/s"],
            [["smoke" if args.smoke else "FlashDiT-XL/1", str(batch), str(steps), f"{batch / seconds:.2f}"]],
        )
    )
    return {"images_per_second": batch / seconds, "batch": batch, "steps": steps}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CPU): the code paths, not the figures")
    p.add_argument(
        "--only",
        nargs="*",
        default=["tests", "flex", "recipe", "xl", "sampling"],
        choices=["tests", "flex", "recipe", "xl", "sampling"],
    )
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default: 5, smoke: 1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="write every figure as JSON here")
    args = p.parse_args(argv)
    args.repeats = args.repeats or (1 if args.smoke else 5)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.smoke:
        p.error("no GPU here: run with --smoke for the CPU smoke version")
    machine = setup(args.threads)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"# gpu_check on {name}, torch {torch.__version__}, {machine}{' (smoke)' if args.smoke else ''}")
    start, report = time.perf_counter(), {"device": name, "torch": torch.__version__, "smoke": args.smoke}
    stages = {
        "tests": run_tests,
        "flex": check_flex,
        "recipe": recipe_steps,
        "xl": xl_throughput,
        "sampling": sampling,
    }
    titles = {
        "tests": "accelerator-only tests",
        "flex": "flex attention against SDPA",
        "recipe": "the latent recipe's step",
        "xl": "FlashDiT-XL/1 against global attention (train images/s)",
        "sampling": "sampling",
    }
    for key in args.only:
        section(titles[key])
        report[key] = stages[key](args) if key == "tests" else stages[key](args, device)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(f"\n# {report['seconds']:.0f} s in all")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
