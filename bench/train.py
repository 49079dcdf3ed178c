"""Training throughput (images/s) of full optimizer steps: the Fashion-MNIST quickstart model, the latent recipe
(16×16×4 autoencoder latents, patch 1) and FlashDiT-S/2 on 256 px SD-VAE-sized latents (32×32×4, a 16×16 token
grid), each with the Iwin mixer and with global attention + sin-cos position embedding, measured side by side.

    python -m bench.train                # fp32, CPU threads as configured
    python -m bench.train --repeats 10 --s2-batch 16
    python -m bench.train --models latent --repeats 30

One step is the training loop's own (``flashdit.training.train_step``): t and noise, forward, flow loss (MSE;
+ cosine on multi-channel latents), backward, gradient norm and clipping, AdamW, LR schedule, EMA.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.common import markdown_table, setup, time_round_robin
from flashdit.config import load_config
from flashdit.training import make_train_step

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ["model.mixer=attention", "model.kernel_size=null", "model.pos_embed=sincos"]
MODELS = ("quickstart", "latent", "FlashDiT-S/2")


def make_step(cfg, info: dict, batch: int, device: torch.device):
    """The package's full training step (flashdit.training.train_step, EMA included) on a fixed batch."""
    cfg.train.global_batch_size = batch
    cfg.flow.cosine_weight = 1.0 if info["channels"] > 1 else 0.0  # the cosine term is inert on one channel
    step = make_train_step(cfg, info, device)
    return step, step.state.model.num_parameters()


def main(args) -> None:
    machine = setup(args.threads)
    device = torch.device(args.device)
    quick = load_config(ROOT / "configs" / "fashion_mnist.yaml")
    s2 = load_config(None, ["model.size=FlashDiT-S/2"])
    fm_info = dict(channels=1, size=32, num_classes=10)
    latent_info = dict(channels=4, size=32, num_classes=1000)
    ae_info = dict(channels=4, size=16, num_classes=10)
    ae_recipe = ROOT / "configs" / "fashion_mnist_latent.yaml"
    ae = load_config(ae_recipe)
    latent_batch = args.latent_batch or ae.train.global_batch_size
    quick_batch = args.quick_batch or quick.train.global_batch_size
    cases = {
        ("quickstart", "iwin"): (quick, fm_info, quick_batch),
        ("quickstart", "attention"): (
            load_config(ROOT / "configs" / "fashion_mnist_attention.yaml"),
            fm_info,
            quick_batch,
        ),
        ("latent", "iwin"): (ae, ae_info, latent_batch),
        ("latent", "attention"): (load_config(ae_recipe, BASELINE), ae_info, latent_batch),
        ("FlashDiT-S/2 256px", "iwin"): (s2, latent_info, args.s2_batch),
        ("FlashDiT-S/2 256px", "attention"): (
            load_config(None, ["model.size=FlashDiT-S/2", *BASELINE]),
            latent_info,
            args.s2_batch,
        ),
    }
    print(f"# device={device} {machine} torch={torch.__version__} fp32")
    print(f"# median of >= {args.repeats} round-robin steps per model (>= {args.min_seconds} s each)\n")
    rows = []
    for model_name in dict.fromkeys(k[0] for k in cases if k[0].split()[0] in args.models):
        steps, params, batch = {}, {}, {}
        for mixer in ("iwin", "attention"):
            cfg, info, b = cases[(model_name, mixer)]
            steps[mixer], params[mixer] = make_step(cfg, info, b, device)
            batch[mixer] = b
        t = time_round_robin(steps, args.repeats, min_seconds=args.min_seconds)
        for mixer in ("iwin", "attention"):
            rows.append(
                [
                    model_name,
                    mixer,
                    f"{params[mixer] / 1e6:.2f}M",
                    str(batch[mixer]),
                    f"{t[mixer]:.3f}",
                    f"{batch[mixer] / t[mixer]:.1f}",
                    f"{t['attention'] / t[mixer]:.2f}x",
                ]
            )
        print(f"  {model_name}: " + ", ".join(f"{m} {batch[m] / s:.1f} img/s" for m, s in t.items()), flush=True)
    print()
    print(markdown_table(["model", "mixer", "params", "batch", "step s", "images/s", "speed vs attention"], rows))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--quick-batch", type=int, default=None, help="default: the quickstart config's batch")
    p.add_argument("--latent-batch", type=int, default=None, help="default: the latent recipe's batch")
    p.add_argument("--s2-batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-seconds", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
