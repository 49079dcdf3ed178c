"""The latent study: FlashDiT in the mission's own regime, VAE latents on the paper's 16x16 grid
(docs/latent_study.md).

Every stage runs the toolkit's own command lines, as a user would, and is skipped when its output exists, so an
interrupted study resumes (``python -m scripts.latent_study`` again). Records (recipes, training logs, scores) are
copied into ``docs/latent_study/`` as stages finish; weights stay under ``--work`` (``runs/latent_study``).

1. ``ae``: autoencoder candidates, each for a third of the final autoencoder's steps: latent channels C in
   {1, 2, 4} at the recipe's KL weight, then KL weights at the best C. Each is measured by its reconstruction (PSNR
   and rFID-1000 of real test images) and by what it is for: its latents extracted, a short latent FlashDiT
   (``--proxy-steps``) trained on them, FID-500 and class accuracy of its samples at guidance 1.5 and 2.5.
2. ``final``: the chosen autoencoder for its whole ``configs/autoencoder_fashion_mnist.yaml`` (15 min on 2 cores),
   rFID-2000 against the reference ``eval_fid.py`` uses, then the latents every latent run trains on.
3. ``latent``: ``configs/fashion_mnist_latent.yaml`` (FlashDiT) and the same recipe with global attention and a
   sin-cos position embedding. Attention's step costs 1.15x FlashDiT's on these 2 cores, so the comparison row
   gets the steps that fit FlashDiT's time (``ATTENTION_STEPS``, the rule of the pixel ladder), two training seeds
   each. Guidance is swept on 500 samples of each row's seed 0, then FID-2k, KID, precision/recall and class
   accuracy of every run at its row's best scale.

    python -m scripts.latent_study                 # everything (resumable)
    python -m scripts.latent_study --stages ae     # one stage
    python -m scripts.latent_study --report-only   # docs/latent_study/tables.md from what has finished
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "latent_study"
REFERENCE = "refs/fashion_mnist_test_2000.npz"
AE_CONFIG = "configs/autoencoder_fashion_mnist.yaml"
LATENT_CONFIG = "configs/fashion_mnist_latent.yaml"
DATA = "/usr/share/datasets/fashion-mnist"
ATTENTION = ["model.mixer=attention", "model.kernel_size=null", "model.pos_embed=sincos"]
# FlashDiT's 3,100 steps / attention's step cost relative to FlashDiT's, 1.16 and 1.13 in two side-by-side runs of
# `python -m bench.train --models latent` (docs/benchmarks.md)
ATTENTION_STEPS = 2700
# sampling of every score below but the guidance scale: the quickstart's stored settings
SAMPLING = ["--sampler", "euler", "--steps", "32", "--guidance-interval", "0.1", "0.8", "--shift", "0.5"]
PROXY_GUIDANCE = (1.5, 2.5)
SWEEP_GUIDANCE = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
SEEDS = (0, 1)
# row -> its overrides of the latent recipe
LATENT_ROWS = {"flashdit": [], "attention": [*ATTENTION, f"train.max_steps={ATTENTION_STEPS}"]}


def ae_candidates(best_c: int | None) -> dict[str, list[str]]:
    """Name -> overrides of the autoencoder recipe. The KL candidates wait for the best C."""
    out = {f"ae-c{c}-kl1e-6": [f"model.latent_channels={c}"] for c in (4, 2, 1)}
    if best_c is not None:
        for kl in ("1e-4", "1e-2"):
            out[f"ae-c{best_c}-kl{kl}"] = [f"model.latent_channels={best_c}", f"loss.kl_weight={kl}"]
    return out


def sh(cmd: list[str], log: Path) -> None:
    """Run one command of the toolkit (its progress bars go to ``log``); a failure stops the study."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(cmd), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "a") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = log.read_text()[-1500:]
        raise SystemExit(f"latent_study.py: error: {' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{tail}")


def py(*args: str) -> list[str]:
    return [sys.executable, *args]


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def keep(src: Path, name: str, *files: str) -> None:
    """Copy a run's small records into docs/latent_study/<name>/."""
    dst = DOCS / name
    dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        if (src / f).is_file():
            shutil.copyfile(src / f, dst / Path(f).name)


def seconds_of_steps(metrics: Path, batch: int) -> float:
    """The training loop's own seconds, summed over the log windows of ``metrics.jsonl``."""
    seconds, last = 0.0, 0
    for line in metrics.read_text().splitlines():
        entry = json.loads(line)
        if "images_per_sec" in entry:
            seconds += (entry["step"] - last) * batch / entry["images_per_sec"]
            last = entry["step"]
    return seconds


def median_step(metrics: Path, batch: int) -> float:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return statistics.median(batch / r["images_per_sec"] for r in rows[1:] if "images_per_sec" in r)


# --------------------------------------------------------------------------------------------
# the commands


def resume_or_restart(out: Path) -> list[str]:
    """``--resume`` for a run with a checkpoint; a run stopped before its first one is the study's own partial
    work and starts over (the trainers rightly refuse to write into a directory that already holds a run)."""
    if (out / "checkpoints").is_dir():
        return ["--resume"]
    if out.is_dir():
        shutil.rmtree(out)
    return []


def train_autoencoder(name: str, overrides: list[str], steps: int | None, work: Path) -> Path:
    out = work / name
    if not (out / "vae" / "config.json").is_file():
        extra = [f"train.max_steps={steps}", f"train.sample_every={steps}"] if steps else []
        cmd = ["-m", "accelerate.commands.launch", "--num_cpu_threads_per_process", "2", "-m", "flashdit.autoencoder"]
        cmd += ["--config", AE_CONFIG, "--output-dir", str(out), "--set", "train.trackers=[]", *overrides, *extra]
        sh(py(*cmd, *resume_or_restart(out)), out.with_suffix(".log"))
    keep(out, name, "config.yaml", "metrics.jsonl", "reconstruction.json")
    return out / "vae"


def evaluate_autoencoder(name: str, vae: Path, n: int) -> dict:
    report = DOCS / name / f"reconstruction_{n}.json"
    if not report.is_file():
        cmd = py("-m", "flashdit.autoencoder", "--evaluate", str(vae), "--reference", REFERENCE)
        sh([*cmd, "--num-images", str(n), "--out", str(report)], vae.parent.with_suffix(".log"))
    return read_json(report)


def extract(name: str, vae: Path, work: Path) -> Path:
    out = work / f"latents-{name}"
    if not (out / "metadata.json").is_file():
        cmd = py("-m", "flashdit.extract", "--source", DATA, "--vae", str(vae), "--resolution", "32")
        sh([*cmd, "--out", str(out), "--batch-size", "256"], out.with_suffix(".log"))
    return out


def train_latent(name: str, latents: Path, overrides: list[str], work: Path) -> Path:
    out = work / name
    if not (out / "pipeline" / "model_index.json").is_file():
        cmd = ["-m", "accelerate.commands.launch", "--num_cpu_threads_per_process", "2", "train.py"]
        cmd += ["--config", LATENT_CONFIG, "--output-dir", str(out)]
        cmd += ["--set", f"data.path={latents}", "train.trackers=[]", *overrides]
        sh(py(*cmd, *resume_or_restart(out)), out.with_suffix(".log"))
    keep(out, name, "config.yaml", "metrics.jsonl")
    return out / "pipeline"


def score(name: str, pipeline: Path, guidance: float, n: int, work: Path, prc: bool = False) -> dict:
    """``eval_fid.py`` on ``n`` samples at ``guidance`` with the study's sampling settings; returns its metrics."""
    tag = f"cfg{guidance}_n{n}"
    record = DOCS / name / f"scores_{tag}.json"
    if not record.is_file():
        out = work / "eval" / f"{name}_{tag}"
        metrics = ["fid", "kid", *(["prc"] if prc else [])]
        cmd = py("eval_fid.py", "--model", str(pipeline), "--num-samples", str(n), "--reference", REFERENCE)
        cmd += ["--metrics", *metrics, "--classifier", "fashion-mnist", "--cfg", str(guidance), *SAMPLING]
        cmd += ["--out", str(out), "--quiet", "--batch-size", "100", "--kid-subset-size", str(min(n, 1000))]
        sh(cmd, out.with_suffix(".log"))
        report = read_json(out / "metrics.json")
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"command": " ".join(cmd[1:]), **report}, indent=1))
    return read_json(record)["metrics"]


# --------------------------------------------------------------------------------------------
# stages


PROXY_TIE = 3.0  # FID-500 points: differences below this are within the proxy's seed-to-seed spread


def choose(results: dict) -> dict:
    """The candidate with the best proxy FID-500, or, among those within ``PROXY_TIE`` of it, the one that
    reconstructs best (lowest rFID-1000)."""
    best = min(r["best"]["fid"] for r in results.values())
    ties = [r for r in results.values() if r["best"]["fid"] <= best + PROXY_TIE]
    return min(ties, key=lambda r: r["reconstruction"]["rfid"])


def stage_ae(args, work: Path) -> tuple[int, float]:
    """The autoencoder candidates; returns the chosen (C, KL weight)."""
    results = {}
    proxy = ["train.max_steps=" + str(args.proxy_steps)]
    best_c = None
    for round_ in (0, 1):
        for name, overrides in ae_candidates(best_c).items():
            if name in results:
                continue
            vae = train_autoencoder(name, overrides, args.ae_proxy_steps, work)
            rec = evaluate_autoencoder(name, vae, 1000)
            latents = extract(name, vae, work)
            c = int(name.split("-c")[1].split("-")[0])
            flow = ["flow.cosine_weight=0"] if c == 1 else []  # the cosine over one channel is inert
            dit = train_latent(f"proxy-{name}", latents, [*proxy, *flow, "train.sample_every=0"], work)
            scores = {g: score(f"proxy-{name}", dit, g, 500, work) for g in PROXY_GUIDANCE}
            best = min(scores.values(), key=lambda m: m["fid"])
            results[name] = {"c": c, "overrides": overrides, "reconstruction": rec, "proxy": scores, "best": best}
            print(
                f"== {name}: PSNR {rec['psnr']}, rFID-1000 {rec['rfid']}, proxy FID-500 {best['fid']:.1f}", flush=True
            )
        if round_ == 0:
            best_c = min((r for r in results.values()), key=lambda r: r["best"]["fid"])["c"]
    (DOCS / "ae_sweep.json").write_text(json.dumps(results, indent=1, default=str))
    chosen = choose(results)
    kl = next((o.split("=")[1] for o in chosen["overrides"] if o.startswith("loss.kl_weight")), "1e-6")
    return chosen["c"], float(kl)


def stage_final(args, work: Path) -> Path:
    """The recipe's autoencoder, trained whole; its rFID-2000; the latents of the latent runs."""
    vae = train_autoencoder("autoencoder", [], None, work)
    evaluate_autoencoder("autoencoder", vae, 2000)
    metrics = work / "autoencoder" / "metrics.jsonl"
    record = {"seconds_of_steps": round(seconds_of_steps(metrics, 64), 1)}
    (DOCS / "autoencoder" / "time.json").write_text(json.dumps(record, indent=1))
    return extract("autoencoder", vae, work)


def stage_latent(args, work: Path, latents: Path) -> None:
    for row, overrides in LATENT_ROWS.items():
        pipes = {}
        for seed in args.seeds:
            pipes[seed] = train_latent(f"{row}-s{seed}", latents, [*overrides, f"train.seed={seed}"], work)
            report()
            if seed == 0:
                for g in SWEEP_GUIDANCE:
                    score(f"{row}-s0", pipes[0], g, 500, work)
                    report()
        for seed, pipe in pipes.items():
            score(f"{row}-s{seed}", pipe, best_guidance(row), 2000, work, prc=True)
            report()


def best_guidance(row: str) -> float:
    sweep = {g: read_json(DOCS / f"{row}-s0" / f"scores_cfg{g}_n500.json") for g in SWEEP_GUIDANCE}
    return min((g for g in sweep if sweep[g]), key=lambda g: sweep[g]["metrics"]["fid"])


def fmt(value, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def report() -> str:
    """docs/latent_study/tables.md: every table of the study from the records that exist (partial while it runs)."""
    out = [
        "# Latent study: tables",
        "",
        "Written by `python -m scripts.latent_study` (or `--report-only`) from the",
        "",
    ]
    out[-2] += " records in this folder; rows appear as their runs finish."
    sweep = read_json(DOCS / "ae_sweep.json") or {}
    if sweep:
        out += ["## Autoencoder candidates (400 steps each; proxy: an 800-step latent FlashDiT, FID-500)", ""]
        out += [
            "| candidate | PSNR | rFID-1000 | proxy FID-500, cfg 1.5 | cfg 2.5 | proxy class accuracy (best cfg) |"
        ]
        out += ["|---|---|---|---|---|---|"]
        for name, r in sweep.items():
            proxy, best = r["proxy"], r["best"]
            fids = [fmt(proxy.get(str(g), proxy.get(g, {})).get("fid")) for g in PROXY_GUIDANCE]
            rec = r["reconstruction"]
            out.append(
                f"| {name} | {rec['psnr']} | {rec['rfid']} | {' | '.join(fids)} | {best['class_accuracy']:.3f} |"
            )
        out.append("")
    rec, spent = (
        read_json(DOCS / "autoencoder" / "reconstruction_2000.json"),
        read_json(DOCS / "autoencoder" / "time.json"),
    )
    if rec:
        minutes = fmt(spent["seconds_of_steps"] / 60) if spent else ""
        out += ["## The recipe's autoencoder (configs/autoencoder_fashion_mnist.yaml)", ""]
        out += ["| PSNR (2,000 test images) | rFID-2000 | minutes of steps |", "|---|---|---|"]
        out += [f"| {rec['psnr']} | {rec['rfid']} | {minutes} |", ""]
    rows = []
    for row in LATENT_ROWS:
        sweep_rows = {g: read_json(DOCS / f"{row}-s0" / f"scores_cfg{g}_n500.json") for g in SWEEP_GUIDANCE}
        done = {g: r["metrics"] for g, r in sweep_rows.items() if r}
        if done:
            out += [f"## Guidance sweep, {row}, seed 0 (500 samples)", ""]
            out += ["| guidance | FID-500 | KID | class accuracy |", "|---|---|---|---|"]
            for g, m in done.items():
                out.append(
                    f"| {g} | {fmt(m['fid'])} | {fmt(m.get('kid_mean'), 4)} | {fmt(m.get('class_accuracy'), 3)} |"
                )
            out.append("")
        for seed in SEEDS:
            name, metrics = f"{row}-s{seed}", DOCS / f"{row}-s{seed}" / "metrics.jsonl"
            if not metrics.is_file():
                continue
            final = next((read_json(f) for f in sorted((DOCS / name).glob("scores_cfg*_n2000.json"))), None)
            m = final["metrics"] if final else {}
            cfg = final["settings"]["guidance_scale"] if final and "settings" in final else ""
            minutes, step = seconds_of_steps(metrics, 32) / 60, median_step(metrics, 32)
            cells = [fmt(m.get("fid")), fmt(m.get("kid_mean"), 4), fmt(m.get("precision"), 3), fmt(m.get("recall"), 3)]
            cells.append(fmt(m.get("class_accuracy"), 3))
            rows.append(f"| {name} | {minutes:.1f} (median step {step:.3f} s) | {cfg} | {' | '.join(cells)} |")
    if rows:
        out += ["## Latent FlashDiT against global attention + sin-cos (FID-2k at the row's best guidance)", ""]
        out += ["| run | minutes of steps | guidance | FID-2k | KID | precision | recall | class accuracy |"]
        out += ["|---|---|---|---|---|---|---|---|", *rows, ""]
    text = "\n".join(out)
    (DOCS / "tables.md").write_text(text)
    return text


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", nargs="*", default=["ae", "final", "latent"], choices=["ae", "final", "latent"])
    p.add_argument("--work", default="runs/latent_study", help="weights, latents and evaluation shards")
    p.add_argument("--ae-proxy-steps", type=int, default=400, help="autoencoder candidates: a third of 1,200")
    p.add_argument("--proxy-steps", type=int, default=800, help="the latent FlashDiT that scores a candidate")
    p.add_argument("--seeds", type=int, nargs="*", default=list(SEEDS))
    p.add_argument("--report-only", action="store_true", help="write docs/latent_study/tables.md and stop")
    args = p.parse_args()
    work = ROOT / args.work
    DOCS.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        print(report())
        return
    if "ae" in args.stages:
        c, kl = stage_ae(args, work)
        from flashdit.autoencoder import AutoencoderConfig
        from flashdit.config import load_config

        recipe = load_config(ROOT / AE_CONFIG, cls=AutoencoderConfig)
        if (recipe.model.latent_channels, recipe.loss.kl_weight) != (c, kl):
            raise SystemExit(f"== chosen: C={c}, kl_weight={kl}: set them in {AE_CONFIG}, then run the later stages")
    latents = stage_final(args, work) if "final" in args.stages or "latent" in args.stages else None
    if "latent" in args.stages:
        stage_latent(args, work, latents)
    report()


if __name__ == "__main__":
    main()
