"""Training that loses nothing: SIGTERM like Ctrl-C, a resume that refuses a changed config, run folders that
cannot be clobbered, and two local processes that end together on any rank's error (under a subprocess timeout,
so that a regression fails instead of hanging)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import test_train  # noqa: E402
from test_train import metric_rows, same_weights, tiny, weights  # noqa: E402

from dmpose.train import ConfigError, load_config, train  # noqa: E402
from dmpose.train.events import StepEnd  # noqa: E402
from dmpose.train.optim import lr_factor  # noqa: E402
from dmpose.train.run_folder import RunFolderError, RunFolderLock, claim_run_folder, new_run_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
synth_root = test_train.synth_root  # the fixture


@pytest.fixture
def default_sigterm():
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_stops_at_a_safe_point_saves_and_resumes_exactly(synth_root, tmp_path, default_sigterm):
    full = train(load_config(data=tiny(synth_root, tmp_path)), run_dir=tmp_path / "full")
    at = full.plan["steps_per_epoch"] + 1  # mid-epoch 2

    def sigterm_inside_a_step(event):
        if isinstance(event, StepEnd) and event.step == at:
            os.kill(os.getpid(), signal.SIGTERM)

    messages = []
    cut = train(load_config(data=tiny(synth_root, tmp_path)), run_dir=tmp_path / "cut",
                callbacks=[sigterm_inside_a_step, lambda e: messages.append(getattr(e, "text", ""))])
    assert cut.status == "interrupted" and cut.steps == at
    assert any(f"interrupted by SIGTERM: saved the state of step {at}" in m for m in messages)
    state = torch.load(cut.run_dir / "last.state.pt", weights_only=True)
    assert state["step"] == at and state["step_in_epoch"] == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    done = train(load_config(data=tiny(synth_root, tmp_path)), run_dir=cut.run_dir, resume=cut.run_dir)
    assert same_weights(weights(full.run_dir), weights(done.run_dir))
    assert metric_rows(full.run_dir, "metrics.csv") == metric_rows(done.run_dir, "metrics.csv")


def test_resume_refuses_a_changed_config_and_names_the_keys(synth_root, tmp_path):
    base = tiny(synth_root, tmp_path)
    run = train(load_config(data=base), run_dir=tmp_path / "run").run_dir
    for key, value in (("optim.lr", 0.5), ("train.batch_size", 4), ("loss.name", "mse"), ("model.input_wh", [64, 80]),
                       ("optim.name", "adamw"), ("data.synthetic.n_train", 10), ("model.arch", "hrnet_w32")):
        cfg = load_config(data=tiny(synth_root, tmp_path, **{key: value}))
        with pytest.raises(ConfigError, match=f"shaped it so far: .*{key.replace('.', '[.]')}"):
            train(cfg, run_dir=run, resume=run)
    with pytest.raises(ConfigError, match="train.epochs 1 is below the 2 epochs already trained"):
        train(load_config(data=tiny(synth_root, tmp_path, **{"train.epochs": 1})), run_dir=run, resume=run)
    assert len(metric_rows(run, "metrics.csv")) == 2  # nothing was touched


def test_extending_epochs_is_recorded_and_follows_the_longer_runs_schedule(synth_root, tmp_path):
    over = {"schedule.name": "linear", "schedule.warmup": 0, "train.epochs": 2}
    run = train(load_config(data=tiny(synth_root, tmp_path, **over)), run_dir=tmp_path / "run")
    longer = load_config(data=tiny(synth_root, tmp_path, **{**over, "train.epochs": 4}))
    done = train(longer, run_dir=run.run_dir, resume=run.run_dir)
    assert done.status == "finished" and done.epochs_done == 4
    changes = [json.loads(line) for line in (run.run_dir / "config_changes.jsonl").read_text().splitlines()]
    assert changes == [{"step": run.steps, "epoch": 2, "key": "train.epochs", "old": 2, "new": 4}]
    # the lr of every step after the resume is the 4-epoch run's at that step
    spe = run.plan["steps_per_epoch"]
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in (r for r in rows if r["step"] > run.steps):
        expected = longer.optim.lr * lr_factor(r["step"] - 1, longer.schedule, spe, 4 * spe, longer.optim.lr)
        assert r["lr"] == pytest.approx(expected, rel=1e-9)


def test_a_new_training_refuses_a_folder_that_holds_a_run_unless_overwrite(synth_root, tmp_path):
    cfg = load_config(data=tiny(synth_root, tmp_path, **{"train.epochs": 1}))
    first = train(cfg, run_dir=tmp_path / "run")
    rows = (first.run_dir / "metrics.jsonl").read_text()
    (first.run_dir / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="already holds a run .*--resume.*--overwrite"):
        train(cfg, run_dir=first.run_dir)
    assert (first.run_dir / "metrics.jsonl").read_text() == rows  # lost nothing
    again = train(cfg, run_dir=first.run_dir, overwrite=True)
    assert again.status == "finished" and (first.run_dir / "notes.txt").read_text() == "mine"


def test_a_locked_run_folder_is_refused_and_auto_named_folders_never_collide(tmp_path):
    lock = claim_run_folder(tmp_path / "run", resume=False)
    try:
        with pytest.raises(RunFolderError, match=f"in use by another training \\(pid {os.getpid()}\\)"):
            RunFolderLock(tmp_path / "run").acquire()
    finally:
        lock.release()
    RunFolderLock(tmp_path / "run").acquire().release()  # free again
    picked = [new_run_dir(tmp_path / "runs", "job") for _ in range(3)]
    assert [p.name for p in picked] == ["job", "job-2", "job-3"] and all(p.is_dir() for p in picked)
    with pytest.raises(RunFolderError, match="does not exist"):
        claim_run_folder(tmp_path / "nowhere", resume=True)


def _script(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    """Run a two-process training in a fresh interpreter, bounded by a timeout (a deadlock fails the test)."""
    script = tmp_path / "job.py"
    lines = textwrap.dedent(body).strip().splitlines()
    main = next(i for i, line in enumerate(lines) if line.startswith(("try:", "r = ")))
    # the spawned ranks import this file as a module: the training runs under the main guard only
    script.write_text("\n".join([*lines[:main], 'if __name__ == "__main__":', *("    " + x for x in lines[main:])]))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, env=env)


def test_an_error_on_rank_0_ends_both_processes_and_names_the_rank(synth_root, tmp_path):
    cfg = {**tiny(synth_root, tmp_path, **{"train.epochs": 3, "val.every": 1}), "train": {
        **tiny(synth_root, tmp_path)["train"], "processes": 2, "epochs": 3}}
    done = _script(tmp_path, f"""
        from dmpose.train import load_config, train
        from dmpose.train.events import ValidationEnd
        def boom(event):
            if isinstance(event, ValidationEnd):
                raise OSError(28, "No space left on device")  # rank 0 only: rank 1 waits in a collective
        try:
            train(load_config(data={cfg!r}), run_dir={str(tmp_path / 'r')!r}, callbacks=[boom])
        except Exception as e:
            print("ERROR", type(e).__name__, e)
        """)
    assert "ERROR TrainingError training process 0 of 2 (train.processes) failed: OSError" in done.stdout, done
    assert "No space left on device" in done.stdout and done.stdout.count("ERROR") == 1


def test_a_killed_rank_is_named_in_one_line(synth_root, tmp_path):
    cfg = {**tiny(synth_root, tmp_path), "train": {**tiny(synth_root, tmp_path)["train"], "processes": 2,
                                                    "epochs": 4}}
    done = _script(tmp_path, f"""
        import multiprocessing, os, signal
        from dmpose.train import load_config, train
        from dmpose.train.events import StepEnd
        def kill_rank_1(event):
            if isinstance(event, StepEnd) and event.step == 2:
                for child in multiprocessing.active_children():
                    os.kill(child.pid, signal.SIGKILL)
        try:
            train(load_config(data={cfg!r}), run_dir={str(tmp_path / 'k')!r}, callbacks=[kill_rank_1])
        except Exception as e:
            print("ERROR", type(e).__name__, e)
        """)
    line = next(x for x in done.stdout.splitlines() if x.startswith("ERROR"))
    assert line.startswith("ERROR TrainingError training process 1 of 2 (train.processes) ended: killed by SIGKILL")
    assert "Traceback" not in done.stdout


def test_sigterm_to_a_two_process_run_saves_a_resumable_state(synth_root, tmp_path):
    cfg = {**tiny(synth_root, tmp_path), "train": {**tiny(synth_root, tmp_path)["train"], "processes": 2,
                                                    "epochs": 40}}
    done = _script(tmp_path, f"""
        import os, signal
        from dmpose.train import load_config, train
        from dmpose.train.events import StepEnd
        def term(event):
            if isinstance(event, StepEnd) and event.step == 3:
                os.kill(os.getpid(), signal.SIGTERM)
        r = train(load_config(data={cfg!r}), run_dir={str(tmp_path / 't')!r},
                  callbacks=[term, lambda e: print("MSG", e.text) if hasattr(e, "text") else None])
        print("STATUS", r.status, r.steps)
        """)
    # the ranks agree on the stop with the next step's all-reduce, so they stop together after step 4
    assert "STATUS interrupted 4" in done.stdout, done.stdout + done.stderr
    assert "interrupted by SIGTERM: saved the state of step 4" in done.stdout
    assert "training process 1 of 2: interrupted by SIGTERM" in done.stderr  # every rank says what stopped it
    state = torch.load(tmp_path / "t" / "last.state.pt", weights_only=True)
    assert state["step"] == 4 and isinstance(state["rng"], list) and len(state["rng"]) == 2


# ---- data read as annotated -------------------------------------------------------------------------------

def _jpeg_with_orientation(image, orientation: int) -> bytes:
    """A JPEG of `image` (BGR) whose EXIF Orientation tag is `orientation` (APP1 right after SOI)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", image)
    data = buf.tobytes()
    ifd = (1).to_bytes(2, "little") + (0x0112).to_bytes(2, "little") + (3).to_bytes(2, "little") \
        + (1).to_bytes(4, "little") + orientation.to_bytes(2, "little") + b"\0\0" + (0).to_bytes(4, "little")
    tiff = b"II*\0" + (8).to_bytes(4, "little") + ifd
    app1 = b"Exif\0\0" + tiff
    return data[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + data[2:]


def test_dataset_images_are_read_in_their_annotations_frame_and_photos_as_displayed(tmp_path):
    import numpy as np

    from dmpose.data.image import exif_orientation, read_image, read_photo

    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high as stored
    stored[:, :10] = 255
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_jpeg_with_orientation(stored, 6))  # displayed rotated by 90 degrees: 20 wide, 40 high
    assert exif_orientation(path.read_bytes()) == 6
    assert read_image(path, expected_wh=(40, 20)).shape == (20, 40, 3)  # COCO's frame: the stored pixels
    assert read_image(path, expected_wh=(20, 40)).shape == (40, 20, 3)  # annotated as displayed: rotated
    with pytest.raises(ValueError, match=r"rotated.jpg is 40x20 \(W x H\) but its annotation says 30x30"):
        read_image(path, expected_wh=(30, 30))
    photo, orientation = read_photo(path)
    assert photo.shape == (40, 20, 3) and orientation == 6


def test_annotations_of_other_categories_are_not_trained_as_persons(tmp_path):
    import numpy as np

    from dmpose.data.coco import CocoKeypoints
    from dmpose.data.transforms import TopDownTransform
    from dmpose.keypoints import load_keypoint_set

    (tmp_path / "img").mkdir()
    import cv2

    cv2.imwrite(str(tmp_path / "img" / "a.jpg"), np.zeros((64, 64, 3), np.uint8))
    kps = [10, 10, 2] + [0, 0, 0] * 16
    anns = [{"id": i, "image_id": 1, "category_id": c, "iscrowd": 0, "bbox": [5, 5, 30, 40], "keypoints": kps}
            for i, c in ((1, 1), (2, 2))]
    (tmp_path / "ann.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 64}], "annotations": anns,
        "categories": [{"id": 1, "name": "person", "keypoints": list(load_keypoint_set("coco17").names)},
                       {"id": 2, "name": "dog"}]}))
    ds = CocoKeypoints(tmp_path / "ann.json", tmp_path / "img",
                       TopDownTransform((48, 64), (12, 16), None, load_keypoint_set("coco17")))
    assert [r.annotation_id for r in ds.records] == [1]


# ---- configs ----------------------------------------------------------------------------------------------

def test_config_files_and_values_are_read_strictly(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="empty.yaml: the config file is empty"):
        load_config(tmp_path / "empty.yaml")
    (tmp_path / "twice.yaml").write_text("train:\n  epochs: 3\n  epochs: 4\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: not valid YAML: key 'epochs' is given twice \(lines 2 and 3\)"):
        load_config(tmp_path / "twice.yaml")
    for data, match in (({"train": {"epochs": True}}, "train.epochs: epochs must be a number, got True"),
                        ({"train": {"workers": -1}}, "workers must be 'auto' or an integer >= 0, got -1"),
                        ({"train": {"threads": 0}}, "threads must be 'auto' or an integer >= 1, got 0"),
                        ({"train": {"device": "tpu"}}, "train.device: String should match pattern"),
                        ({"model": {"output_stride": 8}}, "output_stride 8: the registered architectures output "
                                                          "heatmaps at stride 4")):
        with pytest.raises(ConfigError, match=match):
            load_config(data=data)
    cfg = load_config(data={"out_root": "~/dmpose-runs", "data": {"root": "~/coco"}})
    assert cfg.out_root == Path.home() / "dmpose-runs" and cfg.data.root == Path.home() / "coco"


# ---- checkpoints ------------------------------------------------------------------------------------------

def test_a_checkpoint_without_its_spec_decodes_by_every_field_it_carries(tmp_path):
    import dmpose
    from dmpose.models.checkpoint import read_checkpoint_spec

    model = dmpose.build_model("hrnet_tiny")
    model.spec = None  # the old layout: no spec field
    meta = {"input_size": [128, 96], "loss": {"name": "dm", "suppliers": "softplus", "supplier_beta": 8.0, "eps": 1.0}}
    spec = read_checkpoint_spec(dmpose.save_checkpoint(model, tmp_path / "old.safetensors", meta=meta))
    assert (spec.codec.supplier_map, spec.codec.supplier_beta, spec.decode) == ("softplus", 8.0, "2x2")
    assert spec.input_wh == (96, 128)
    # a DM loss field from before the supplier option: relu, the only map then
    spec = read_checkpoint_spec(dmpose.save_checkpoint(model, tmp_path / "older.safetensors",
                                                       meta={"loss": {"name": "dm", "eps": 1.0}}))
    assert spec.codec.supplier_map == "relu"


def test_a_registry_model_saves_a_complete_spec_that_predict_reads(tmp_path):
    import numpy as np

    import dmpose

    path = dmpose.save_checkpoint(dmpose.build_model("hrnet_tiny"), tmp_path / "tiny.safetensors")  # the README's
    spec = dmpose.read_checkpoint_spec(path)
    assert spec.keypoints.name == "coco17" and spec.input_wh == (192, 256) and spec.decode == "2x2"
    people = dmpose.Predictor(path, device="cpu").predict(np.zeros((64, 48, 3), np.uint8))
    assert len(people) == 1 and people[0].keypoints.shape == (17, 2)


def test_box_values_are_checked_against_the_image():
    from dmpose.predict.boxes import as_box_array

    for box, match in (([5000, 5000, 10, 10], "lies wholly outside the 64x48 image"),
                       ([0, 0, 1e12, 1e12], "over 10x the 64x48 image's size"),
                       ([0, 0, 10, 10, 7.5], r"its score must lie in \[0, 1\], got 7.5")):
        with pytest.raises(ValueError, match=match):
            as_box_array([box], 64, 48)


def test_a_custom_coco_dataset_needs_only_its_root_and_split_names(synth_root, tmp_path):
    import shutil

    from dmpose.data.layouts import coco_paths

    custom = tmp_path / "mydata"
    (custom / "annotations").mkdir(parents=True)
    for split, mine in (("train2017", "train"), ("val2017", "val")):
        ann, images = coco_paths(synth_root, split)
        shutil.copyfile(ann, custom / "annotations" / f"{mine}.json")
        shutil.copytree(images, custom / "images" / mine)
    assert coco_paths(custom, "val") == (custom / "annotations" / "val.json", custom / "images" / "val")
    cfg = load_config(data={**tiny(synth_root, tmp_path, **{"train.epochs": 1}),
                            "data": {"dataset": "coco", "root": str(custom), "train_split": "train",
                                     "val_split": "val"}, "val": {"boxes": "gt", "batch_size": 32}})
    assert train(cfg, run_dir=tmp_path / "run").status == "finished"
