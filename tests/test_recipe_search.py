"""scripts/recipe_search.py: the budget arithmetic, the refusal to mix specs, and the choice of winners."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import recipe_search as rs


def fake_cost():
    # the old default measured at 1.3 s beside every key, once at 2.6 s (steal): the median ignores it
    cost = {key: {"step_seconds": 1.3, "vs_old_default": 1.0} for key in rs.cost_keys()}
    cost["iwin-w128-d4-win8-bs32"] = {"step_seconds": 0.65, "vs_old_default": 0.5}
    cost["iwin-w128-d4-win4-bs32"] = {"step_seconds": 2.6, "vs_old_default": 1.0}
    return cost


def test_steps_come_from_the_budget_and_the_side_by_side_cost():
    cost = fake_cost()
    assert rs.cost_seconds(cost, "iwin-w128-d4-win8-bs32") == pytest.approx(0.5 * 1.3)
    spec = rs.make_spec("x", "full", {"model.window_size": 8, "train.global_batch_size": 32}, cost)
    assert spec["steps"] == int((30 - 2) * 60 / 0.65)
    with pytest.raises(SystemExit, match="no CPU cost"):
        rs.make_spec("y", "full", {"model.hidden_size": 512}, cost)


def test_a_run_made_with_another_spec_is_refused(tmp_path):
    cost = fake_cost()
    spec = rs.make_spec("run", "proxy", {}, cost)
    rs.prepare(spec, tmp_path)
    rs.prepare(spec, tmp_path)  # the same spec again: fine (resume)
    with pytest.raises(SystemExit, match="another spec"):
        rs.prepare({**spec, "steps": spec["steps"] + 1}, tmp_path)


def test_each_group_takes_its_lowest_fid(tmp_path):
    def scores(name, fid):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        row = {"key": name, "num_samples": 500, "fid": fid, "guidance_scale": 1.5}
        (tmp_path / name / "scores.jsonl").write_text(json.dumps(row) + "\n")

    scores("proxy-base", 100.0)
    for group, options in rs.GROUPS.items():
        for option in list(options)[1:]:
            scores(f"proxy-{group}-{option}", 90.0 if option in ("w128-d4-win8", "no-flip") else 110.0)
    overrides, chosen = rs.combine(tmp_path)
    assert chosen["geometry"] == "w128-d4-win8" and chosen["flip"] == "no-flip" and chosen["optim"] == "bs64-lr1e-3"
    assert overrides == {"model.window_size": 8, "data.random_flip": False}


def test_cost_keys_tell_patch_and_heads_apart_and_earlier_measurements_still_apply():
    p4 = rs.GEOMETRIES["p4-w256-d4-win4"]
    assert rs.model_key(p4) == "iwin-w256-d4-p4-h4-win4-bs64"
    assert rs.model_key({**p4, **rs.ATTENTION}) == "attention-w256-d4-p4-h4-bs64"
    # same width and depth, other patch: another cost
    assert rs.model_key({"model.hidden_size": 256, "model.num_heads": 4}) != rs.model_key(p4)
    measured = json.loads((Path(rs.__file__).parent.parent / "docs" / "recipe_search_cost.json").read_text())["steps"]
    keys = rs.cost_keys()
    assert set(measured) <= set(keys)  # the keys timed before patch and heads varied are still asked for
    assert {"iwin-w256-d4-p4-h4-win4-bs32", "attention-w256-d4-p4-h4-bs32"} <= set(keys) - set(measured)
