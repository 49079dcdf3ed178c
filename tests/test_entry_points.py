"""Smoke tests: every benchmark and script entry point runs end to end on tiny settings (one thread, one
repeat) and prints its table, or refuses an empty output folder with one line."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

ONE_THREAD = ["--threads", "1", "--repeats", "1"]


def run(script: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", script.removesuffix(".py").replace("/", "."), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]


def test_bench_mixer_prints_ratios_for_every_variant():
    out = run(
        "bench/mixer.py",
        "--grids",
        "8",
        "--model-grids",
        "--dim",
        "32",
        "--heads",
        "2",
        "--batch",
        "1",
        "--min-seconds",
        "0",
        *ONE_THREAD,
    ).stdout
    rows = table_rows(out)
    assert rows and rows[-1][0] == "8x8" and all(cell for cell in rows[-1])


@pytest.mark.slow
def test_bench_train_times_the_package_step_for_both_mixers():
    batches = ["--quick-batch", "2", "--latent-batch", "2", "--s2-batch", "1"]
    out = run("bench/train.py", *batches, "--min-seconds", "0", *ONE_THREAD).stdout
    rows = {(r[0], r[1]): r for r in table_rows(out)[1:]}
    models = ("quickstart", "latent", "FlashDiT-S/2 256px")
    assert set(rows) == {(m, x) for m in models for x in ("iwin", "attention")}
    assert rows[("quickstart", "attention")][-1] == "1.00x" and float(rows[("quickstart", "iwin")][5]) > 0
    only = run("bench/train.py", *batches, "--models", "latent", "--min-seconds", "0", *ONE_THREAD).stdout
    assert {r[0] for r in table_rows(only)[1:]} == {"latent"}


def test_bench_widths_times_every_candidate_against_the_quickstart():
    out = run("bench/widths.py", "--batch", "2", "--min-seconds", "0", *ONE_THREAD).stdout
    rows = table_rows(out)[1:]
    assert [r[1] for r in rows] == ["5.02M", "7.81M", "7.39M", "11.22M"]  # parameters of each candidate
    assert rows[0][-1] == "1.00x" and all(float(r[2]) > 0 for r in rows)


def test_bench_sampling_covers_the_samplers():
    out = run("bench/sampling.py", "--grids", "4", "--batch", "1", "--steps", "1", *ONE_THREAD).stdout
    samplers = [r[1] for r in table_rows(out)[1:]]
    assert samplers == ["euler, cfg all t", "euler, cfg t>=0.11", "heun, cfg all t", "heun, cfg t>=0.11"]


def test_scripts_refuse_or_report_an_empty_output_folder(tmp_path):
    study = run("scripts/study.py", "--report-only", "--no-figures", "--out", str(tmp_path / "s"), ok=False)
    assert study.returncode != 0 and "no scored runs" in study.stderr and "Traceback" not in study.stderr
    depth = run("scripts/depth_study.py", "--report-only", "--out", str(tmp_path / "d"), ok=False)
    assert depth.returncode != 0 and "no trained runs" in depth.stderr and "Traceback" not in depth.stderr
    report = tmp_path / "report.md"
    run("scripts/recipe_search.py", "report", "--out", str(tmp_path / "r"), "--report", str(report))
    assert report.is_file()


def test_bench_optimizer_compares_the_three_adamw_implementations():
    out = run(
        "bench/optimizer.py",
        "--size",
        "FlashDiT-S/2",
        "--grid",
        "4",
        "--batch",
        "1",
        "--min-seconds",
        "0",
        *ONE_THREAD,
    ).stdout
    rows = {(r[0], r[1]): r for r in table_rows(out)[1:]}
    assert set(rows) == {(m, i) for m in ("iwin", "attention") for i in ("loop", "foreach", "fused")}
    assert rows[("iwin", "loop")][3] == "1.00x" and rows[("attention", "fused")][4] == "1.00x"


def test_bench_gemm_share_reports_each_forward_against_the_matmul_peak():
    out = run(
        "bench/gemm_share.py",
        "--size",
        "FlashDiT-S/2",
        "--grids",
        "4",
        "--batch",
        "1",
        "--square",
        "64",
        "--min-seconds",
        "0",
        *ONE_THREAD,
    ).stdout
    rows = {r[0]: r for r in table_rows(out)[1:]}
    models = {f"FlashDiT-S/2 4x4 {m}, linear {b}" for m in ("iwin", "attention") for b in ("onednn", "blas")}
    assert models | {f"matmul 64^3 {b}" for b in ("onednn", "blas")} <= set(rows)
    assert max(float(r[4].rstrip("%")) for r in rows.values()) == 100.0
    assert float(rows["FlashDiT-S/2 4x4 iwin, linear onednn"][1]) > 0  # FLOPs were counted


def test_bench_linear_times_both_backends_and_names_the_route_taken():
    rows = table_rows(run("bench/linear.py", "--small", "--min-seconds", "0", *ONE_THREAD).stdout)[1:]
    routes = {r[0]: r[-1] for r in rows}
    assert len(rows) == 16 and routes["64x768->2304"] == "blas" and routes["512x768->2304"] == "onednn"
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)


def test_round_robin_timer_alternates_the_order_of_the_variants():
    from bench.common import time_round_robin

    calls = []
    time_round_robin({n: (lambda n=n: calls.append(n)) for n in "abc"}, repeats=3, warmup=0)
    assert calls == list("abc" + "cba" + "abc")


def test_flop_count_counts_a_depthwise_convolution_per_group():
    import torch

    from bench.common import count_flops

    B, C, H, W, K = 2, 8, 5, 6, 3
    conv = torch.nn.Conv2d(C, C, K, padding=1, groups=C)
    x = torch.randn(B, C, H, W, requires_grad=True)
    one_pass = 2 * B * C * H * W * K * K  # a multiply and an add per tap, output and channel
    assert count_flops(lambda: conv(x)) == one_pass
    # backward: the input gradient and the weight gradient each cost one pass
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * one_pass
    dense = torch.nn.Conv2d(C, C, K, padding=1)
    assert count_flops(lambda: dense(x).sum().backward()) == 3 * C * one_pass


ALLOCATOR_PROBE = """
import ctypes, resource, sys, torch
from flashdit.cli import run

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks "
                                                "fordblks keepcost").split()]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2

def probe():
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB: above glibc's largest mmap threshold (32 MiB)
    mapped = libc.mallinfo2().hblkhd  # bytes in mmap'd blocks (the imports made a few MiB before run())
    del x
    for _ in range(3):  # what every training step does: free its buffers, allocate them again
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.ones(64 * 2**20 // 4)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        del x
    print(mapped, faults)

run(probe)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(__import__("ctypes").CDLL(None), "mallinfo2"),
    reason="glibc >= 2.33 only",
)
def test_clis_reuse_freed_cpu_memory_without_page_faults_unless_told_not_to():
    def run_probe(**env):
        base = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "FLASHDIT_CPU_ALLOCATOR")}
        proc = subprocess.run(
            [sys.executable, "-c", ALLOCATOR_PROBE],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**base, **env},
            timeout=300,
        )
        return proc, [int(v) for v in proc.stdout.split()]

    pages = 64 * 2**20 // 4096
    proc, (mapped, faults) = run_probe()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert mapped < 64 * 2**20 and faults < pages // 10  # served from the heap, and the second buffer reuses the first
    proc, (mapped, faults) = run_probe(FLASHDIT_CPU_ALLOCATOR="system")
    assert mapped >= 64 * 2**20 and faults >= pages // 2  # mapped afresh and faulted in, page by page
    proc, _ = run_probe(FLASHDIT_CPU_ALLOCATOR="jemalloc")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "-c: error: FLASHDIT_CPU_ALLOCATOR='jemalloc' is not one of ['reuse', 'system']"
    )


def test_bench_profile_step_lists_ops_of_both_models():
    args = ["--size", "FlashDiT-S/2", "--grid", "4", "--batch", "1", "--rounds", "2", "--top", "100", "--threads", "1"]
    rows = {r[0]: r for r in table_rows(run("bench/profile_step.py", *args).stdout)[1:]}
    assert {"aten::addmm", "aten::convolution_backward", "**step (all ops)**"} <= set(rows)
    assert all(float(rows["**step (all ops)**"][i]) > 0 for i in (1, 2))  # both models were profiled


def test_depth_study_refuses_a_run_made_with_other_settings(tmp_path):
    made = tmp_path / "attention-d4-s0"
    made.mkdir()
    (made / "spec.json").write_text('{"row": "attention-d4", "steps": 3}')
    proc = run("scripts/depth_study.py", "--out", str(tmp_path), "--only", "attention-d4", "--seeds", "0", ok=False)
    assert proc.returncode != 0 and "was made with" in proc.stderr and "Traceback" not in proc.stderr
    assert not (made / "checkpoints").exists()  # refused before any training


def test_depth_study_takes_every_seeds_guidance_from_seed_0s_sweep(tmp_path):
    # a sitting of seed 1 alone must not sweep seed 1 again: it needs seed 0's sweep, and refuses before any work
    proc = run("scripts/depth_study.py", "--out", str(tmp_path), "--only", "conv-d8", "--seeds", "1", ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "conv-d8 has no guidance sweep yet" in proc.stderr and "add seed 0" in proc.stderr
    assert not any(tmp_path.iterdir())

    from scripts import depth_study

    sweep = tmp_path / "conv-d8-s0"
    sweep.mkdir()
    fids = {1.0: 70.0, 1.5: 62.0, 2.0: 64.0, 3.0: 66.0, 4.0: 75.0}
    with open(sweep / "scores.jsonl", "w") as f:
        for g, fid in fids.items():
            f.write(json.dumps({"guidance": g, "num_samples": 300, "size": 32, "fid": fid}) + "\n")
    args = depth_study.parse_args(["--out", str(tmp_path), "--only", "conv-d8", "--seeds", "1"])  # now accepted
    assert depth_study.best_guidance("conv-d8", args) == 1.5


def test_depth_study_rows_stay_on_the_papers_16x16_grid_whatever_the_quickstart_patch():
    from flashdit.config import load_config
    from scripts import depth_study

    assert load_config(ROOT / "configs" / "fashion_mnist.yaml").model.patch_size == 4  # the quickstart moved on
    for row in depth_study.ROWS:
        cfg = depth_study.row_config(row, 0, depth_study.parse_args(["--steps", "3"]))
        assert cfg.data.pad_to // cfg.model.patch_size == 16, row


def test_depth_study_refuses_runs_made_before_the_shipped_recipe_changed(tmp_path):
    """The spec holds the whole resolved recipe, so a changed quickstart config (here its learning rate) between
    two sittings is refused, naming the setting, instead of resuming old runs under the new recipe."""
    from flashdit.config import load_config
    from scripts import depth_study

    args = depth_study.parse_args(["--steps", "3", "--out", str(tmp_path)])
    spec = depth_study.run_spec("flashdit-d4-win4", 0, args)
    shipped = load_config(ROOT / "configs" / "fashion_mnist.yaml")
    assert spec["config"]["train"]["lr"] == shipped.train.lr
    assert spec["config"]["model"]["window_size"] == 4 and spec["config"]["model"]["patch_size"] == 2
    out = depth_study.run_dir("flashdit-d4-win4", 0, args)
    depth_study.check_spec(out, spec)  # first sitting: written
    depth_study.check_spec(out, depth_study.run_spec("flashdit-d4-win4", 0, args))  # same recipe: accepted
    stale = json.loads((out / "spec.json").read_text())
    stale["config"]["train"]["lr"] = shipped.train.lr / 2
    (out / "spec.json").write_text(json.dumps(stale))
    with pytest.raises(
        SystemExit, match=rf"was made with other settings \(config\.train\.lr={shipped.train.lr / 2} there"
    ):
        depth_study.check_spec(out, spec)


def test_the_committed_depth_study_runs_still_match_the_recipe_they_were_made_with():
    """The study's records in docs/depth_study are accepted by today's recipe: the quickstart's stored sampler
    changed since (docs/few_step.md), and the study pins the one its runs were made with."""
    from scripts import depth_study

    args = depth_study.parse_args([])
    checked = 0
    for row in depth_study.ROWS:
        for seed in (0, 1):
            out = depth_study.run_dir(row, seed, args)
            if (out / "spec.json").is_file():
                depth_study.check_spec(out, depth_study.run_spec(row, seed, args))  # raises SystemExit if not
                checked += 1
    assert checked == 2 * len(depth_study.ROWS)


def test_depth_study_keeps_records_in_git_and_retrains_only_for_stages_left(tmp_path):
    """A fresh checkout has a run's committed record but not its weights: the training stage is skipped, and the
    run is trained again only when a stage that needs the weights has not recorded its result."""
    from scripts import depth_study

    ignore = (ROOT / "docs" / "depth_study" / ".gitignore").read_text()
    for kept in ("spec.json", "train.json", "scores.jsonl", "loss.json"):
        assert f"!/*/{kept}" in ignore
    assert depth_study.parse_args([]).out == "docs/depth_study"

    args = depth_study.parse_args(["--steps", "2", "--out", str(tmp_path)])
    row = "flashdit-d4-win4"
    out = depth_study.run_dir(row, 0, args)
    depth_study.check_spec(out, depth_study.run_spec(row, 0, args))
    (out / "train.json").write_text(json.dumps({"steps": 2, "wall_seconds": 12.5}))
    assert depth_study.train_run(row, 0, args) == {"steps": 2, "wall_seconds": 12.5}
    assert not (out / "checkpoints").exists() and not (out / "pipeline").exists()  # the record suffices

    pipeline = depth_study.trained_pipeline(row, 0, args)  # a stage needs the weights: trained again
    assert (pipeline / "model_index.json").is_file()
    record = json.loads((out / "train.json").read_text())
    assert record["wall_seconds"] == 12.5 and len(record["retrained"]) == 1
    assert depth_study.trained_pipeline(row, 0, args) == pipeline  # present now: not trained a third time
    assert len(json.loads((out / "train.json").read_text())["retrained"]) == 1


def test_depth_study_times_a_resumed_run_by_its_training_log_not_by_the_last_sitting(tmp_path):
    """A run stopped mid-way and resumed records where it resumed, and the seconds of steps that its training log
    holds for the whole run (the log windows' steps over their images/s), not only the last sitting's wall clock."""
    from scripts import depth_study

    log = tmp_path / "metrics.jsonl"
    entries = [{"step": 50, "images_per_sec": 16.0}, {"step": 60, "fid": 3.0}, {"step": 100, "images_per_sec": 32.0}]
    log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert depth_study.seconds_of_steps(log, 32) == pytest.approx(50 * 32 / 16 + 50 * 32 / 32)

    args = depth_study.parse_args(["--steps", "4", "--out", str(tmp_path / "study")])
    row = "flashdit-d4-win4"
    out = depth_study.run_dir(row, 0, args)
    depth_study.check_spec(out, depth_study.run_spec(row, 0, args))
    first = depth_study.row_config(row, 0, args, out)
    first.train.stop_after = 2
    depth_study.train(first)  # the first sitting, stopped after step 2 (its checkpoint)
    record = depth_study.train_run(row, 0, args)  # the second sitting resumes it
    assert record["resumed_at_step"] == 2 and record["steps"] == 4
    expected = depth_study.seconds_of_steps(out / "metrics.jsonl", 32)
    assert record["step_seconds"] == pytest.approx(expected, abs=0.05) and expected > 0


def test_the_gpu_check_runs_its_smoke_version_on_cpu(tmp_path, capsys):
    """bench/gpu_check.py --smoke: every stage's code path on tiny sizes (the accelerator-only tests aside: pytest
    inside pytest); each stage reports, and the checks it asserts pass."""
    from bench import gpu_check

    report = gpu_check.main(
        ["--smoke", "--only", "flex", "recipe", "xl", "sampling", "--threads", "1", "--out", str(tmp_path / "g.json")]
    )
    assert report["flex"]["ok"] and report["flex"]["grad_max_rel"] is None  # no FlexAttention backward on CPU
    assert report["recipe"]["ok"] and set(report["recipe"]) >= {"fp32", "bf16 autocast + compiled blocks"}
    assert set(report["xl"]) == {"8x8 sdpa", "16x16 sdpa"} and report["xl"]["8x8 sdpa"]["ratio"] > 0
    assert report["sampling"]["images_per_second"] > 0
    assert json.loads((tmp_path / "g.json").read_text())["smoke"] is True
    out = capsys.readouterr().out
    assert "flex attention against SDPA" in out and "| ratio |" in out
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):  # the full version needs a GPU
            gpu_check.main([])


def test_bench_rearrange_checks_einops_against_view_permute_and_prints_ratios():
    out = run("bench/rearrange.py", *ONE_THREAD).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ") and "operation" not in line]
    assert len(rows) == 4 and all(float(r.split("|")[-2]) > 0 for r in rows), out
    assert "median ratio" in out
