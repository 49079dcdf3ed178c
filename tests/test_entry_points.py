"""Smoke tests: every benchmark and script entry point runs end to end on tiny settings (one thread, one
repeat) and prints its table, or refuses an empty output folder with one line."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT

ONE_THREAD = ["--threads", "1", "--repeats", "1"]


def run(script: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
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
    out = run("bench/train.py", "--quick-batch", "2", "--s2-batch", "1", "--min-seconds", "0", *ONE_THREAD).stdout
    rows = {(r[0], r[1]): r for r in table_rows(out)[1:]}
    assert set(rows) == {(m, x) for m in ("quickstart", "FlashDiT-S/2 256px") for x in ("iwin", "attention")}
    assert rows[("quickstart", "attention")][-1] == "1.00x" and float(rows[("quickstart", "iwin")][5]) > 0


def test_bench_sampling_covers_the_samplers():
    out = run("bench/sampling.py", "--grids", "4", "--batch", "1", "--steps", "1", *ONE_THREAD).stdout
    samplers = [r[1] for r in table_rows(out)[1:]]
    assert samplers == ["euler, cfg all t", "euler, cfg t>=0.11", "heun, cfg all t", "heun, cfg t>=0.11"]


def test_scripts_refuse_or_report_an_empty_output_folder(tmp_path):
    study = run("scripts/study.py", "--report-only", "--no-figures", "--out", str(tmp_path / "s"), ok=False)
    assert study.returncode != 0 and "no scored runs" in study.stderr and "Traceback" not in study.stderr
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
    assert {"FlashDiT-S/2 4x4 iwin", "FlashDiT-S/2 4x4 attention"} <= set(rows)
    assert max(float(r[4].rstrip("%")) for r in rows.values()) == 100.0
    assert float(rows["FlashDiT-S/2 4x4 iwin"][1]) > 0  # FLOPs were counted
