"""The few-step ladder: how few model evaluations per image give the stored setting's quality, scheduler by scheduler
(docs/few_step.md).

For each of diffusers' flow schedulers (Euler, Heun, DPM-Solver++ 2M, UniPC) and each budget of 4, 6, 8, 12, 16 and
32 model evaluations per image, the most integration steps that fit the budget (a guided evaluation counts twice; the
guidance interval saves some) are scored like every other quality figure: ``eval_fid.py`` on 2,000 samples, FID and
KID against 2,000 real test images, the judge's class accuracy. The model's stored guidance, interval and shift are
used throughout; its stored setting itself is the baseline row. ``--sweep`` scores guidance scale x timestep shift
(x guidance interval) at one budget instead; ``--speed`` times settings against the stored one, round robin in one
process.

    python -m scripts.few_step --model runs/fashion_mnist/pipeline        # resumable: finished points are kept
    python -m scripts.few_step --sweep unipc --sweep-budget 10            # 500 samples a point
    python -m scripts.few_step --speed unipc:6:1.0                        # SAMPLER:STEPS[:SHIFT[:GUIDANCE]]
    python -m scripts.few_step --model ... --report-only                  # docs/few_step tables and the plot
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "few_step"
PLOT = ROOT / "docs" / "images" / "few_step_fid.png"
REFERENCE = "refs/fashion_mnist_test_2000.npz"
SCHEDULERS = ("euler", "heun", "dpm++", "unipc")
BUDGETS = (4, 6, 8, 12, 16, 32)


def resolve(pipe, shift=None, cfg=None, interval=None) -> tuple[float, float, tuple[float, float]]:
    """``(timestep shift, guidance scale, guidance interval)``: the model's stored ones, each replaced by the one
    given."""
    from flashdit.settings import SamplingSettings

    stored = SamplingSettings.from_dict(pipe.config.sampling)
    return (
        stored.timestep_shift if shift is None else shift,
        stored.guidance_scale if cfg is None else cfg,
        stored.guidance_interval if interval is None else interval,
    )


def evaluations(pipe, sampler: str, steps: int, shift: float, cfg: float, interval) -> int:
    """Model evaluations per image of one call (a guided step counts twice)."""
    from flashdit import flow, schedulers

    guidance = flow.Guidance(cfg, interval, pipe.config.sampling.get("cfg_channels"))
    _, scheduler = pipe.resolve_sampler(sampler)
    return schedulers.model_evaluations(schedulers.set_timesteps(scheduler, steps, shift, "cpu"), guidance)


def steps_for(
    pipe, sampler: str, budget: int, shift: float | None = None, cfg: float | None = None, interval=None
) -> tuple[int, int] | None:
    """The most integration steps whose model evaluations per image fit ``budget``: ``(steps, evaluations)``, at
    the stored guidance scale, interval and timestep shift, or the ones given."""
    shift, cfg, interval = resolve(pipe, shift, cfg, interval)
    best = None
    for n in range(1, budget + 1):
        nfe = evaluations(pipe, sampler, n, shift, cfg, interval)
        if nfe <= budget:
            best = (n, nfe)
    return best


def reused(record: Path, model: str) -> dict:
    """A finished record, refused unless it was measured on this very model (a rerun never mixes two models)."""
    from flashdit.utils import model_fingerprint

    result = json.loads(record.read_text())
    if result["settings"].get("model_fingerprint") != model_fingerprint(model):
        raise SystemExit(
            f"few_step.py: error: {record} was measured on another model than {model}; "
            f"move {DOCS} aside to measure this one"
        )
    return result


def record_path(sampler: str, steps: int, n: int, cfg=None, shift=None, interval=None) -> Path:
    """Where a point's record lives: ``<sampler>_<steps>steps_n<N>.json``, a sweep's under ``sweep/``."""
    name = f"{sampler}_{steps}steps"
    if cfg is not None or shift is not None:
        name = f"sweep/{name}_cfg{cfg}_shift{shift}"
    if interval is not None:
        name += f"_interval{interval[0]}-{interval[1]}"
    return DOCS / f"{name}_n{n}.json"


def score(
    model: str,
    sampler: str,
    steps: int,
    n: int,
    work: Path,
    cfg: float | None = None,
    shift: float | None = None,
    interval: tuple[float, float] | None = None,
) -> dict:
    """``eval_fid.py`` at one setting, or its finished record. ``cfg``/``shift``/``interval`` replace the stored
    guidance scale, timestep shift and guidance interval (the sweep's points, recorded under ``sweep/``)."""
    from flashdit.utils import atomic_path

    record = record_path(sampler, steps, n, cfg, shift, interval)
    if record.is_file():
        return reused(record, model)
    out = work / record.relative_to(DOCS).with_suffix("")
    cmd = [sys.executable, "eval_fid.py", "--model", model, "--num-samples", str(n), "--reference", REFERENCE]
    cmd += [
        "--metrics",
        "fid",
        "kid",
        "--classifier",
        "fashion-mnist",
        "--sampler",
        sampler,
        "--steps",
        str(steps),
    ]
    cmd += ["--cfg", str(cfg)] if cfg is not None else []
    cmd += ["--shift", str(shift)] if shift is not None else []
    cmd += ["--guidance-interval", str(interval[0]), str(interval[1])] if interval is not None else []
    cmd += ["--out", str(out), "--quiet", "--batch-size", "100", "--kid-subset-size", str(min(n, 1000))]
    print("$", " ".join(cmd[1:]), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".log"), "a") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"few_step: eval_fid.py failed ({proc.returncode}); see {out.with_suffix('.log')}")
    report = {"command": " ".join(cmd[1:]), **json.loads((out / "metrics.json").read_text())}
    record.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(record) as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    return report


def sweep(pipe, args, work: Path) -> None:
    """Guidance scale x timestep shift (x guidance interval, with ``--interval-grid``) for each ``--sweep``
    scheduler at the most steps that fit ``--sweep-budget``: the shift moves the grid across the guidance interval
    and guidance 1 costs one evaluation a step, so the steps may differ from point to point."""
    for sampler in args.sweep:
        for interval in args.interval_grid or [None]:
            for shift in args.shift_grid:
                for cfg in args.cfg_grid:
                    fit = steps_for(pipe, sampler, args.sweep_budget, shift, cfg, interval)
                    if fit is None:
                        continue
                    result = score(args.model, sampler, fit[0], args.sweep_samples, work, cfg, shift, interval)
                    print(
                        f"== sweep {sampler} {fit[0]} steps ({fit[1]} evaluations) cfg {cfg} shift {shift} "
                        f"interval {interval or 'stored'}: FID {result['metrics']['fid']:.2f}"
                    )


def sweep_rows(pipe, n: int) -> list[dict]:
    """Every sweep record at ``n`` samples, with its settings and evaluations per image."""
    rows = []
    for record in sorted((DOCS / "sweep").glob(f"*_n{n}.json")):
        got = json.loads(record.read_text())
        s = got["settings"]
        key = (s["sampler"], s["num_inference_steps"], s["timestep_shift"], s["guidance_scale"])
        interval = tuple(s["guidance_interval"])
        nfe = evaluations(pipe, *key[:3], key[3], interval)
        rows.append(dict(zip(("sampler", "steps", "shift", "cfg"), key), interval=interval, nfe=nfe, **got))
    return rows


def sweep_report(pipe, n: int, baseline: dict | None) -> Path:
    """Every sweep record at ``n`` samples, one table per scheduler and guidance interval: timestep shift down,
    guidance scale across, each cell FID (steps / evaluations per image)."""
    rows = sweep_rows(pipe, n)
    lines = []
    if baseline:
        lines += [f"stored setting ({baseline['label']}): FID-{n} {baseline['metrics']['fid']:.1f}", ""]
    for sampler, interval in sorted({(r["sampler"], r["interval"]) for r in rows}):
        mine = [r for r in rows if (r["sampler"], r["interval"]) == (sampler, interval)]
        cfgs = sorted({r["cfg"] for r in mine})
        lines += [
            f"{sampler}, guidance for {interval[0]:g} <= t <= {interval[1]:g}: FID-{n} (steps / evaluations)",
            "",
        ]
        lines += ["| shift | " + " | ".join(f"guidance {c:g}" for c in cfgs) + " |", "|---|" + "---|" * len(cfgs)]
        for shift in sorted({r["shift"] for r in mine}):
            cells = {r["cfg"]: r for r in mine if r["shift"] == shift}
            fids = [
                f"{cells[c]['metrics']['fid']:.1f} ({cells[c]['steps']} / {cells[c]['nfe']})" if c in cells else ""
                for c in cfgs
            ]
            lines.append(f"| {shift:g} | " + " | ".join(fids) + " |")
        lines.append("")
    lines += [
        f"Every point, best first (FID-{n}, KID, class accuracy)",
        "",
        "| scheduler | steps | evaluations | shift | guidance | interval | FID | KID | class accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["metrics"]["fid"]):
        m = r["metrics"]
        lines.append(
            f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {r['shift']:g} | {r['cfg']:g} | "
            f"{r['interval'][0]:g}–{r['interval'][1]:g} | {m['fid']:.1f} | {m['kid_mean']:.4f} | "
            f"{m['class_accuracy']:.3f} |"
        )
    table = DOCS / f"sweep_n{n}.md"
    table.write_text("\n".join(lines) + "\n")
    return table


def parse_speed(spec: str) -> tuple[str, int, float | None, float | None]:
    """``SAMPLER:STEPS[:SHIFT[:GUIDANCE]]`` (left out: stored) as ``(sampler, steps, shift, guidance)``."""
    parts = spec.split(":")
    try:
        sampler, steps, *rest = parts
        steps, (shift, cfg) = int(steps), ([float(v) for v in rest] + [None, None])[:2]
    except ValueError:
        raise ValueError(spec) from None
    bad = steps < 1 or (shift is not None and shift <= 0) or (cfg is not None and cfg < 0)
    if len(parts) > 4 or sampler not in SCHEDULERS or bad:
        raise ValueError(spec)
    return sampler, steps, shift, cfg


def speed(pipe, settings: list[tuple], args) -> dict:
    """Images/s of each ``(sampler, steps, shift, guidance)`` (None: stored), round robin in one process; the first
    is the stored setting, the ratio's base."""
    import torch

    from bench.common import setup, time_round_robin
    from flashdit.utils import atomic_path

    pipe.set_progress_bar_config(disable=True)
    interval = resolve(pipe)[2]  # every setting is timed at the stored guidance interval
    full = []
    for sampler, steps, shift, cfg in settings:
        shift, cfg, _ = resolve(pipe, shift, cfg)
        full.append((f"{sampler} {steps} steps, shift {shift:g}, guidance {cfg:g}", sampler, steps, shift, cfg))
    machine = setup(2)
    labels = [i % 10 for i in range(args.speed_batch)]

    def call(sampler, steps, shift, cfg):
        def run():
            gens = [torch.Generator().manual_seed(i) for i in range(len(labels))]
            pipe(
                labels,
                sampler=sampler,
                num_inference_steps=steps,
                timestep_shift=shift,
                guidance_scale=cfg,
                generator=gens,
                output_type="np",
            )

        return run

    fns = {key: call(*rest) for key, *rest in full}
    seconds = time_round_robin(fns, repeats=args.speed_repeats)
    base = seconds[full[0][0]]
    done = {
        key: {
            "evaluations_per_image": evaluations(pipe, sampler, steps, shift, cfg, interval),
            "images_per_second": args.speed_batch / seconds[key],
            "speedup": base / seconds[key],
            "batch": args.speed_batch,
            "repeats": args.speed_repeats,
            "machine": machine,
        }
        for key, sampler, steps, shift, cfg in full
    }
    for key, v in done.items():
        print(
            f"{key}: {v['evaluations_per_image']} evaluations, {v['images_per_second']:.1f} images/s, "
            f"{v['speedup']:.2f}x the stored setting"
        )
    with atomic_path(DOCS / "speed.json") as tmp:
        tmp.write_text(json.dumps(done, indent=1))
    return done


def report(rows: list[dict], baseline: dict | None, speeds: dict, tuned: list[dict] = ()) -> Path:
    """The ladder's table (and the speed table) in ``tables.md``, and the plot: one line per scheduler at the stored
    settings, the sweep's points at the same sample count (``tuned``) as stars."""
    lines = [
        "| scheduler | budget | steps | evaluations per image | FID-2k | KID | class accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    if baseline:
        m = baseline["metrics"]
        lines.append(
            f"| stored setting ({baseline['label']}) | — | {baseline['steps']} | {baseline['nfe']} | {m['fid']:.1f} "
            f"| {m['kid_mean']:.4f} | {m['class_accuracy']:.3f} |"
        )
    for r in sorted(rows, key=lambda r: (r["budget"], SCHEDULERS.index(r["sampler"]))):
        m = r["metrics"]
        lines.append(
            f"| {r['sampler']} | {r['budget']} | {r['steps']} | {r['nfe']} | {m['fid']:.1f} | {m['kid_mean']:.4f} "
            f"| {m['class_accuracy']:.3f} |"
        )
    if speeds:
        first = next(iter(speeds.values()))
        lines += [
            "",
            f"| setting (images/s: batch {first['batch']}, median of {first['repeats']}, round robin) "
            "| evaluations per image | images/s | × the stored setting |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {k} | {v['evaluations_per_image']} | {v['images_per_second']:.2f} | {v['speedup']:.2f} |"
            for k, v in speeds.items()
        ]
    table = DOCS / "tables.md"
    table.write_text("\n".join(lines) + "\n")
    if not (rows or tuned or baseline):
        return table  # nothing to draw yet
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return table
    fig, ax = plt.subplots(figsize=(8.5, 4.2), dpi=110)
    colours = {}
    for sampler in SCHEDULERS:
        pts = sorted((r["nfe"], r["metrics"]["fid"]) for r in rows if r["sampler"] == sampler)
        if pts:
            colours[sampler] = ax.plot(*zip(*pts), marker="o", label=sampler)[0].get_color()
    labelled = set()
    for r in tuned:
        label = f"{r['sampler']}, shift {r['shift']:g}, guidance {r['cfg']:g} (sweep)"
        if label in labelled:
            label = "_nolegend_"  # one legend entry per setting
        labelled.add(label)
        ax.plot(r["nfe"], r["metrics"]["fid"], marker="*", ms=12, ls="", color=colours.get(r["sampler"]), label=label)
    if baseline:
        ax.axhline(
            baseline["metrics"]["fid"],
            color="grey",
            ls="--",
            label=f"stored: {baseline['label']} ({baseline['nfe']} evals)",
        )
        ax.axhline(1.1 * baseline["metrics"]["fid"], color="grey", ls=":", label="+10 %")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")  # a failing scheduler (Heun at 3 steps: FID 227) must not flatten the others
    ticks = []
    for t in sorted({r["nfe"] for r in [*rows, *tuned]} | ({baseline["nfe"]} if baseline else set())):
        if not ticks or t >= 1.15 * ticks[-1]:  # labels that do not run into each other on the log axis
            ticks.append(t)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    fids = [r["metrics"]["fid"] for r in [*rows, *tuned]]
    yticks = [
        y for y in (20, 25, 30, 40, 50, 60, 80, 100, 150, 200, 300) if fids and min(fids) / 1.3 <= y <= max(fids) * 1.3
    ]
    ax.set_yticks(yticks, [str(y) for y in yticks])
    ax.minorticks_off()
    ax.set_xlabel("model evaluations per image (a guided one counts twice)")
    ax.set_ylabel("FID-2k")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(PLOT)
    return table


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/fashion_mnist/pipeline")
    p.add_argument("--num-samples", type=int, default=2000)
    p.add_argument("--schedulers", nargs="*", default=list(SCHEDULERS), choices=SCHEDULERS)
    p.add_argument("--budgets", type=int, nargs="*", default=list(BUDGETS))
    p.add_argument("--work", default="runs/few_step")
    p.add_argument(
        "--speed",
        nargs="*",
        default=[],
        metavar="SAMPLER:STEPS[:SHIFT[:GUIDANCE]]",
        help="time these against the stored setting",
    )
    p.add_argument("--speed-batch", type=int, default=100)
    p.add_argument("--speed-repeats", type=int, default=3)
    p.add_argument("--report-only", action="store_true")
    g = p.add_argument_group("sweep (instead of the ladder): guidance scale x timestep shift at one budget")
    g.add_argument("--sweep", nargs="*", default=[], choices=SCHEDULERS, metavar="SCHEDULER")
    g.add_argument("--sweep-budget", type=int, default=10, help="evaluations per image (default 10)")
    g.add_argument("--sweep-samples", type=int, default=500)
    g.add_argument("--cfg-grid", type=float, nargs="+", default=[1.5, 2.0, 2.5, 3.0])
    g.add_argument("--shift-grid", type=float, nargs="+", default=[0.3, 0.5, 0.7, 1.0, 1.5])
    g.add_argument("--interval-grid", nargs="*", default=[], metavar="LOW:HIGH", help="default: the stored interval")
    args = p.parse_args()
    for name in ("num_samples", "sweep_budget", "sweep_samples", "speed_batch", "speed_repeats"):
        if getattr(args, name) < 1:
            p.error(f"argument --{name.replace('_', '-')}: must be at least 1, got {getattr(args, name)}")
    if min(args.cfg_grid) < 0 or min(args.shift_grid) <= 0:
        p.error("argument --cfg-grid/--shift-grid: guidance must be >= 0 and shift > 0")
    try:
        args.speed = [parse_speed(spec) for spec in args.speed]
    except ValueError as e:
        p.error(
            f"argument --speed: {e}: must be SAMPLER:STEPS[:SHIFT[:GUIDANCE]], SAMPLER one of {', '.join(SCHEDULERS)}"
        )
    try:
        args.interval_grid = [tuple(float(v) for v in i.split(":")) for i in args.interval_grid]
    except ValueError:
        p.error(f"argument --interval-grid: {' '.join(args.interval_grid)}: each must be LOW:HIGH, e.g. 0.1:0.8")
    if any(len(i) != 2 or not 0 <= i[0] <= i[1] <= 1 for i in args.interval_grid):
        p.error("argument --interval-grid: each must be LOW:HIGH with 0 <= LOW <= HIGH <= 1")
    from flashdit.pipeline import load_pipeline
    from flashdit.settings import SamplingSettings

    pipe = load_pipeline(args.model, "cpu")
    stored = SamplingSettings.from_dict(pipe.config.sampling)
    for record in sorted(DOCS.glob("**/*steps*_n*.json")):  # before any work, not after the next point
        reused(record, args.model)
    work = ROOT / args.work
    if stored.sampler not in SCHEDULERS:
        raise SystemExit(
            f"few_step.py: error: {args.model} stores sampler {stored.sampler!r}; the ladder's baseline is the stored "
            f"setting, so it must be one of {', '.join(SCHEDULERS)} (sample.sampler in the recipe)"
        )

    def stored_baseline(n: int) -> dict | None:
        """The stored setting scored on ``n`` samples (None with --report-only before it was)."""
        steps = stored.num_inference_steps
        if args.report_only and not record_path(stored.sampler, steps, n).is_file():
            return None
        nfe = evaluations(pipe, stored.sampler, steps, *resolve(pipe))
        label = f"{stored.sampler} {steps} steps, guidance {stored.guidance_scale:g}, shift {stored.timestep_shift:g}"
        return {**score(args.model, stored.sampler, steps, n, work), "steps": steps, "nfe": nfe, "label": label}

    if args.sweep:
        baseline = stored_baseline(args.sweep_samples)
        if not args.report_only:
            sweep(pipe, args, work)
        print(f"wrote {sweep_report(pipe, args.sweep_samples, baseline)}")
        return
    rows = []
    baseline = stored_baseline(args.num_samples)
    for budget in args.budgets:
        for sampler in args.schedulers:
            fit = steps_for(pipe, sampler, budget)
            if fit is None:
                continue
            steps, nfe = fit
            path = DOCS / f"{sampler}_{steps}steps_n{args.num_samples}.json"
            if args.report_only and not path.is_file():
                continue
            result = score(args.model, sampler, steps, args.num_samples, work)
            rows.append({"sampler": sampler, "budget": budget, "steps": steps, "nfe": nfe, **result})
            print(f"== {sampler} {steps} steps ({nfe} evaluations): FID {result['metrics']['fid']:.2f}")
    if args.speed:
        speeds = speed(pipe, [(stored.sampler, stored.num_inference_steps, None, None)] + args.speed, args)
    else:
        speeds = json.loads((DOCS / "speed.json").read_text()) if (DOCS / "speed.json").is_file() else {}
    print(f"wrote {report(rows, baseline, speeds, sweep_rows(pipe, args.num_samples))}")


if __name__ == "__main__":
    main()
