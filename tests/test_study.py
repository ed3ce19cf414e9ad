"""The reproduction-study runner (benchmarks/study.py): every arm validates against the config schema, the
registry's arms are distinct, and a tiny smoke run writes its JSON, is skipped on a rerun, and `report`
builds the tables and plots from the JSON."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from dmpose.train import load_config
from dmpose.train.config import packaged_configs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study", REPO / "benchmarks" / "study.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["study"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_base_config_ships_in_the_package(study):
    assert packaged_configs()["study/base"] == study.BASE_CONFIG
    cfg = load_config("study/base")
    # the base config pins the supplier map the study was run with (softplus beta 1) and leaves every other
    # DM option to the library defaults
    assert cfg.loss.dm == type(cfg.loss.dm)(suppliers="softplus", supplier_beta=1.0)
    assert cfg.val.every == 1 and cfg.schedule.unit == "step"


def test_every_arm_validates_and_sets_what_it_names(study):
    assert len(study.ARMS) >= 19
    for arm in study.ARMS.values():
        cfg = study.resolve(arm, seed=1)  # a typo in an arm's key or value raises ConfigError here
        assert cfg.train.seed == 1
        assert set(study.ITEMS) >= {arm.item}
    r = study.resolve
    assert r(study.ARMS["dm_default_argmax"], 0).pose_spec().decode == "argmax"
    assert r(study.ARMS["mse_unbiased_2x2"], 0).pose_spec().codec.decode == "2x2"
    assert r(study.ARMS["mse_official_argmax"], 0).pose_spec().codec.flavour == "official"
    coarse = r(study.ARMS["dm_naive_coarse"], 0)
    assert coarse.pose_spec().heatmap_wh == (12, 16) and coarse.loss.dm.demander_mode == "naive"
    it = r(study.ARMS["dm_iters1000"], 0).loss.dm
    assert it.tol == 0 and it.max_iters == 1000
    assert r(study.ARMS["dm_eps0.25"], 0).loss.dm.eps == 0.25


def test_arms_are_distinct_configs(study):
    # dm_default inherits the library's supplier map, so it may coincide with (at most) the supplier-map arm
    # that names that default; no other two arms may train the same config
    same = study.identical_arms()
    for name, others in same.items():
        pair = {name, *others}
        assert len(pair) == 2 and "dm_default" in pair, f"arms with one config: {sorted(pair)}"
        assert study.ARMS[(pair - {"dm_default"}).pop()].item == 2


def test_unknown_arm_names_the_closest(study):
    with pytest.raises(SystemExit, match="dm_default"):
        study.select_arms(["dm_defualt"], None)


def test_spearman(study):
    assert study.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert study.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert study.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(study.spearman([1, 2], [1, 2]))
    assert math.isnan(study.spearman([1, 1, 1], [1, 2, 3]))


def test_smoke_run_writes_json_skips_rerun_and_reports(study, tmp_path, capsys):
    from dmpose.data.synthetic import ensure_synthetic

    root = ensure_synthetic(tmp_path / "data", n_train=12, n_val=4, seed=0)
    results, figs = tmp_path / "results", tmp_path / "figs"
    sets = [f"data.root={root}", "data.synthetic.n_train=12", "data.synthetic.n_val=4", "model.input_wh=[48,64]",
            "train.batch_size=6", "schedule.warmup=1", "train.threads=1", "train.workers=0", "train.log_every=1",
            "val.batch_size=16"]
    argv = ["run", "dm_default", "mse_official_argmax", "--seeds", "0", "--epochs", "1", "--results", str(results),
            "--quiet", *sum((["--set", s] for s in sets), [])]
    assert study.main(argv) == 0
    paths = sorted(results.glob("*.json"))
    assert [p.name for p in paths] == ["dm_default_s0.json", "mse_official_argmax_s0.json"]
    rec = json.loads(paths[0].read_text())
    assert rec["arm"] == "dm_default" and rec["seed"] == 0 and rec["overrides"] == []
    assert rec["extra_overrides"][-1] == "train.epochs=1"
    assert rec["config"]["train"]["seed"] == 0 and rec["config"]["model"]["input_wh"] == [48, 64]
    assert len(rec["epochs"]) == 1 and rec["final"]["step"] == rec["plan"]["total_steps"] >= 1
    for key in ("AP", "val_loc_error_hm", "val_median_loc_error_hm", "val_compactness_2px", "val_dead_share",
                "val_loss", "train_loss"):
        assert key in rec["final"], key
    assert rec["best"]["metric"] == "AP" and rec["wall_s"] > 0
    assert {"dmpose", "torch", "python", "git_commit"} <= set(rec["versions"])
    assert len(rec["panel"]["crops"]) >= 1 and len(rec["panel"]["crops"][0]["map"]) == 16
    mse = json.loads(paths[1].read_text())
    assert mse["config"]["loss"]["name"] == "mse" and mse["final"]["val_loss"] != mse["final"]["val_dm_loss"]

    mtimes = [p.stat().st_mtime_ns for p in paths]
    capsys.readouterr()
    assert study.main(argv) == 0  # every cell exists: nothing runs
    assert "skip dm_default seed 0" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in paths] == mtimes

    assert study.main(["list", "--results", str(results)]) == 0
    listing = capsys.readouterr().out
    assert "results: s0*" in listing and "s0!stale" not in listing
    stale = json.loads(paths[1].read_text())
    stale["config"]["optim"]["lr"] = 1.0  # as if the base config or a library default had changed since
    paths[1].write_text(json.dumps(stale))
    assert study.main(["list", "--results", str(results)]) == 0
    assert "results: s0!stale*" in capsys.readouterr().out
    dm = json.loads(paths[0].read_text())  # a DM run never reads loss.mse: changing it leaves the run current
    dm["config"]["loss"]["mse"]["sigma"] = 7.0
    paths[0].write_text(json.dumps(dm))
    assert study.is_stale(dm) is False and study.is_stale(stale) is True

    assert study.main(["report", "--results", str(results), "--figures", str(figs)]) == 0
    table = (results / "tables.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| dm_default |"))
    assert "| 1 (0) |" in row and "pending" not in row
    assert "| dm_relu | 0 |" in table and "pending" in table  # no result: said so, no number
    assert "extra overrides" in table
    assert (figs / "study_curves.png").stat().st_size > 0
    assert (figs / "study_compactness.png").stat().st_size > 0


def test_a_key_the_schema_gained_later_is_stale_only_where_the_arm_moves_it_off_its_default(study):
    arm = study.ARMS["dm_default"]
    now = study.resolved_dict(arm, 0)
    old = json.loads(json.dumps(now))
    del old["loss"]["aux_mse"], old["loss"]["aux_until"]  # as if written before the keys existed
    rec = {"arm": "dm_default", "seed": 0, "config": old}
    assert study.is_stale(rec) is False
    moved = study.Arm("tmp_aux", 2, ("loss.aux_mse=10.0",), "test only")
    study.ARMS["tmp_aux"] = moved
    try:
        assert study.is_stale({"arm": "tmp_aux", "seed": 0, "config": old}) is True
    finally:
        del study.ARMS["tmp_aux"]
