"""DDP with the gloo backend on the CPU, two processes (torch.multiprocessing spawn):
(a) with the same weights, validation gathered from two ranks equals one process exactly (results and metrics);
(b) a short two-process training run (SyncBN on, augmentation off) matches one process with the same global
    batch to a stated tolerance (float reductions are ordered differently across ranks)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from test_train import tiny  # noqa: E402

from dmpose.train.processes import free_port  # noqa: E402

NO_AUGMENT = {"scale_factor": 0.0, "rotation_factor": 0.0, "rotation_prob": 0.0, "flip_prob": 0.0,
              "half_body_prob": 0.0}
# (b): the two runs' weight updates (final - initial) agree to this relative L2 error after 6 Adam steps
# (measured 0.18%: the ranks sum the gradients and the BN statistics in another order, and Adam's normalised
# steps amplify rounding on weights whose gradients are near zero), and the logged losses (the global batch's
# mean in both) to this relative error
TOLERANCE = 0.01
LOSS_TOLERANCE = 1e-3


def _env(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def _validation(cfg_data: dict, out: str):
    from dmpose.models import build_model
    from dmpose.train import load_config
    from dmpose.train.datasets import build_datasets

    cfg = load_config(data=cfg_data)
    spec = cfg.pose_spec()
    _, val = build_datasets(cfg, spec)
    torch.manual_seed(0)
    model = build_model(spec.arch, num_joints=spec.num_joints).eval()
    # weights that give non-trivial predictions: a few random steps' worth of noise on the head
    with torch.no_grad():
        model.final_layer.weight.normal_(0, 0.05)
    return model, spec, val, cfg


def _worker_validate(rank: int, world: int, port: int, cfg_data: dict, out: str) -> None:
    import torch.distributed as dist

    from dmpose.train.validate import validate

    _env(rank, world, port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, spec, val, cfg = _validation(cfg_data, out)
    metrics, ev = validate(model, spec, val, True, cfg.val.batch_size, rank=rank, world=world)
    if rank == 0:
        Path(out).write_text(json.dumps({"metrics": metrics, "results": ev.results()}))
    dist.destroy_process_group()


def _worker_train(rank: int, world: int, port: int, cfg_data: dict, run: str) -> None:
    import torch.distributed as dist

    from dmpose.train import load_config, train

    _env(rank, world, port)
    train(load_config(data=cfg_data), run_dir=run)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    from dmpose.data.synthetic import ensure_synthetic

    return ensure_synthetic(tmp_path_factory.mktemp("synth") / "data", n_train=12, n_val=4, seed=0)


def test_gathered_validation_equals_one_process(synth_root, tmp_path):
    from dmpose.train.validate import validate

    # batch 1: each crop's forward pass is then the same computation in both runs (CPU kernels may round
    # differently for other batch compositions); what is tested is the sharding, gathering and de-duplication
    cfg_data = tiny(synth_root, tmp_path, **{"val.batch_size": 1, "val.boxes": "gt"})
    model, spec, val, cfg = _validation(cfg_data, "")
    assert len(val.dataset) % 2 == 1, "an odd count makes the sampler pad rank 1 with a repeat"
    metrics, ev = validate(model, spec, val, True, cfg.val.batch_size)
    out = tmp_path / "ddp.json"
    mp.spawn(_worker_validate, args=(2, free_port(), cfg_data, str(out)), nprocs=2, join=True)
    got = json.loads(out.read_text())
    assert got["metrics"] == metrics
    def key(r):  # the merged evaluator holds the same instances in another insertion order
        return (r["image_id"], r["score"], r["keypoints"])

    assert sorted(got["results"], key=key) == sorted(json.loads(json.dumps(ev.results())), key=key)


def test_two_process_training_matches_one_process(synth_root, tmp_path):
    from dmpose.train import load_config, train

    # fp32 (the tolerance is for reduction order; bf16 autocast, auto on a CPU with native bf16, rounds more)
    common = {"data.augment": NO_AUGMENT, "model.sync_bn": True, "train.epochs": 2, "val.every": 2, "train.amp": "off"}
    one = tiny(synth_root, tmp_path, **common, **{"train.batch_size": 6})
    two = tiny(synth_root, tmp_path, **common, **{"train.batch_size": 3})
    ref = train(load_config(data=one), run_dir=tmp_path / "one")
    mp.spawn(_worker_train, args=(2, free_port(), two, str(tmp_path / "two")), nprocs=2, join=True)
    a, b = load_file(str(tmp_path / "one" / "last.safetensors")), load_file(str(tmp_path / "two" / "last.safetensors"))
    assert a.keys() == b.keys()
    from dmpose.models import build_model

    torch.manual_seed(0)  # the trainer seeds the initial weights with train.seed on every rank
    init = build_model("hrnet_tiny", num_joints=17).state_dict()
    num = den = 0.0
    for k in a:
        if a[k].is_floating_point():
            da, db = a[k].double() - init[k].double(), b[k].double() - init[k].double()
            num, den = num + float(((da - db) ** 2).sum()), den + float((da**2).sum())
    assert den > 0 and (num / den) ** 0.5 < TOLERANCE, (num / den) ** 0.5
    import csv

    def losses(run):
        with open(tmp_path / run / "metrics.csv") as f:
            return [float(r["train_loss"]) for r in csv.DictReader(f)]

    first_one = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    first_two = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert abs(first_one - first_two) <= LOSS_TOLERANCE * abs(first_one)  # step 1: the same weights
    assert all(abs(x - y) <= 0.01 * abs(x) for x, y in zip(losses("one"), losses("two")))
    assert all(torch.equal(a[k], b[k]) for k in a if not a[k].is_floating_point())  # same step counts
    env = json.loads((tmp_path / "two" / "env.json").read_text())
    assert env["world_size"] == 2 and env["plan"]["effective_batch"] == ref.plan["effective_batch"] == 6
    assert len(losses("one")) == len(losses("two")) == 2


def test_train_processes_starts_its_own_ranks(synth_root, tmp_path):
    """`train.processes: 2` (dmpose.train.processes) is the same two-rank DDP run as two torchrun-style ranks:
    the same weights to the bit, and rank 0 writes the run folder."""
    common = {"train.epochs": 1, "val.every": 1, "train.batch_size": 3}
    two = tiny(synth_root, tmp_path, **common)
    mp.spawn(_worker_train, args=(2, free_port(), two, str(tmp_path / "spawned")), nprocs=2, join=True)
    from dmpose.train import load_config, train

    result = train(load_config(data={**two, "train": {**two["train"], "processes": 2}}), run_dir=tmp_path / "own")
    assert result.status == "finished" and result.plan["world_size"] == 2 and result.plan["effective_batch"] == 6
    a, b = (load_file(str(tmp_path / run / "last.safetensors")) for run in ("spawned", "own"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "WORLD_SIZE" not in os.environ and "MASTER_PORT" not in os.environ  # the environment is put back


def _fails_on_rank_1(cfg, run_dir, resume, callbacks, dry_run):
    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise ValueError("bad things on rank 1")
    dist.barrier()  # rank 0 waits for rank 1, whose exit closes the connection
    return "rank 0 done"


def test_a_failed_local_rank_is_named(synth_root, tmp_path):
    from dmpose.train import load_config
    from dmpose.train.loop import TrainingError
    from dmpose.train.processes import run_local_processes

    cfg = load_config(data={**tiny(synth_root, tmp_path), "train": {"processes": 2}})
    with pytest.raises(TrainingError, match=r"training process 1 of 2 \(train.processes\) failed: "
                                             r"ValueError: bad things on rank 1"):
        run_local_processes(_fails_on_rank_1, cfg, tmp_path, None, (), TrainingError)
    import torch.distributed as dist

    assert not dist.is_initialized()


def test_train_processes_refused_under_torchrun_and_folded_on_other_devices(synth_root, tmp_path, monkeypatch):
    from dmpose.train import load_config
    from dmpose.train.config import ConfigError
    from dmpose.train.loop import _local_processes

    data = tiny(synth_root, tmp_path)
    cfg = load_config(data={**data, "train": {**data["train"], "processes": 2, "batch_size": 3}})
    assert _local_processes(cfg, [], False) == (cfg, True)
    seen = []
    assert _local_processes(cfg, [seen.append], True) == (cfg, True) and not seen  # a dry run starts the ranks too
    # a GPU (stood in for: this machine has none): one process with the same effective batch
    import torch

    import dmpose.train.loop as loop

    monkeypatch.setattr(loop, "select_device", lambda cfg, rank: torch.device("cuda", rank))
    seen.clear()
    folded, local = _local_processes(cfg, [seen.append], False)
    assert not local and folded.train.processes == 1 and folded.train.batch_size == 6 and "6 images" in seen[0].text
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match="already one of 4 ranks"):
        _local_processes(cfg, [], False)


def test_the_dry_run_plan_is_the_runs_plan(synth_root, tmp_path):
    from dmpose.train import load_config, train

    data = tiny(synth_root, tmp_path)
    cfg = load_config(data={**data, "train": {**data["train"], "processes": 2, "batch_size": 3, "epochs": 1}})
    dry = train(cfg, dry_run=True)
    run = train(cfg, run_dir=tmp_path / "run")
    assert dry.status == "dry-run" and dry.plan == run.plan and dry.plan["world_size"] == 2
