"""Published weights: the registry's facts, and fetch / verify / convert / cache against a loopback HTTP server
(127.0.0.1 only: no test touches the network)."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import publish

from dmpose.models import build_model, read_checkpoint_spec
from dmpose.weights import (
    REGISTRY,
    WeightsEntry,
    WeightsError,
    fetch,
    fetch_url,
    hub,
    import_file,
    registry,
    resolve_checkpoint,
    resolve_pretrained,
    sha256_prefix,
)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DMPOSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(hub.MIRROR_ENV, raising=False)
    return tmp_path / "cache"


def _mmpose_tiny() -> dict:
    state = build_model("hrnet_tiny", num_joints=17).state_dict()
    return {"meta": {"mmpose_version": "0.x"},
            "state_dict": {("keypoint_head." if k.startswith("final_layer") else "backbone.") + k: v
                           for k, v in state.items()}}


def _entry(base: str, name: str, file_name: str, kind: str = "pose") -> WeightsEntry:
    return WeightsEntry(name, kind, f"{base}/{file_name}", "hrnet_tiny", "a test server", keypoints="coco17",
                        input_wh=(96, 128), dataset="a test", metric="AP", value=0.5)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_every_entry_cites_a_published_file_with_its_sha256_prefix():
    assert len(REGISTRY) >= 20
    for e in REGISTRY.values():
        assert e.url.startswith("https://") and e.sha256_prefix, e.name
        assert e.source
        if e.kind == "pose":
            assert e.keypoints in ("coco17", "mpii16") and e.input_wh and e.decode == "argmax" and e.value
            build_model(e.arch, num_joints=17 if e.keypoints == "coco17" else 16)  # a registry arch
    w32 = REGISTRY["hrnet_w32_coco_256x192"]
    assert w32.file_name == "hrnet_w32_coco_256x192-c78dce93_20200708.pth" and w32.value == 0.746
    assert w32.input_wh == (192, 256) and w32.sha256_prefix == "c78dce93"
    assert sha256_prefix("resnet50-19c8e357.pth") == "19c8e357" and sha256_prefix("best.safetensors") is None
    with pytest.raises(ValueError, match="did you mean hrnet_w32_coco_256x192"):
        registry.get_entry("hrnet_w32_coco_256x19")
    assert registry.imagenet_entry("simplebaseline_res50").name == "resnet50_imagenet"
    with pytest.raises(ValueError, match="hrnet_tiny"):
        registry.imagenet_entry("hrnet_tiny")


def test_fetch_downloads_verifies_converts_once_and_reuses(server, monkeypatch, cache):
    root, base, _ = server
    file_name = publish(root, "hrnet_tiny_coco_128x96", _mmpose_tiny())
    entry = _entry(base, "tiny_test", file_name)
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    seen = []
    path = fetch("tiny_test", progress=lambda done, total: seen.append((done, total)))
    assert path == cache / "weights" / "tiny_test.safetensors" and path.is_file()
    size = (root / file_name).stat().st_size
    assert seen[0] == (0, size) and seen[-1] == (size, size)
    spec = read_checkpoint_spec(path)  # self-describing: the entry's facts are the spec
    assert spec.arch == "hrnet_tiny" and spec.input_wh == (96, 128) and spec.decode == "argmax"
    assert _files(cache / "weights") == ["tiny_test.safetensors"]  # the download is not kept
    (root / file_name).unlink()  # served no more: the cache answers
    assert fetch("tiny_test") == path
    # by name and by URL through --ckpt's resolver
    assert resolve_checkpoint("tiny_test") == path
    assert resolve_checkpoint(f"{base}/{file_name}") == path


def test_a_tampered_or_truncated_download_leaves_nothing(server, monkeypatch, cache):
    root, base, handler = server
    file_name = publish(root, "hrnet_tiny_coco_128x96", _mmpose_tiny())
    entry = _entry(base, "tiny_test", file_name)
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    handler.truncate.add(file_name)
    with pytest.raises(WeightsError, match="stopped after|could not download"):
        fetch("tiny_test")
    assert _files(cache / "weights") == []
    handler.truncate.clear()
    data = bytearray((root / file_name).read_bytes())
    data[-10] ^= 0xFF  # one flipped byte
    (root / file_name).write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256 starts with .* says [0-9a-f]{8}.*nothing was kept"):
        fetch("tiny_test")
    assert _files(cache / "weights") == []


def test_offline_names_the_url_and_the_import_command(monkeypatch, cache):
    # a port nothing listens on: connection refused, as offline
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = _entry(f"http://127.0.0.1:{port}", "tiny_test", "hrnet_tiny-0123abcd.pth")
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    with pytest.raises(WeightsError) as info:
        fetch("tiny_test")
    msg = str(info.value)
    assert "\n" not in msg and entry.url in msg and "dmpose weights import hrnet_tiny-0123abcd.pth" in msg
    assert _files(cache / "weights") == []


def test_http_errors_and_the_mirror(server, monkeypatch, cache):
    root, base, _ = server
    file_name = publish(root, "hrnet_tiny_coco_128x96", _mmpose_tiny())
    entry = _entry("https://download.example.invalid/mmpose", "tiny_test", file_name)
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    monkeypatch.setenv(hub.MIRROR_ENV, base + "/")  # the same file name under the mirror's base
    assert fetch("tiny_test").is_file()
    with pytest.raises(WeightsError, match="HTTP 404"):
        fetch_url(f"{base}/missing-0123abcd.pth")


def test_import_a_file_downloaded_by_hand(server, monkeypatch, cache, tmp_path):
    root, base, _ = server
    file_name = publish(root, "hrnet_tiny_coco_128x96", _mmpose_tiny())
    entry = _entry(base, "tiny_test", file_name)
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    by_hand = root / file_name
    before = by_hand.read_bytes()
    got, path = import_file(by_hand)
    assert got.name == "tiny_test" and path.is_file() and by_hand.read_bytes() == before  # input untouched
    renamed = tmp_path / "downloaded.pth"
    renamed.write_bytes(before)
    with pytest.raises(WeightsError, match="--name NAME"):
        import_file(renamed)
    assert import_file(renamed, name="tiny_test")[0] is got
    bad = tmp_path / file_name
    bad.write_bytes(before[:-1])
    with pytest.raises(WeightsError, match="corrupt"):
        import_file(bad)


def test_backbones_and_urls_for_model_pretrained(server, monkeypatch, cache):
    root, base, _ = server
    state = {k: v for k, v in build_model("hrnet_tiny").state_dict().items() if not k.startswith("final_layer")}
    file_name = publish(root, "hrnet_tiny_imagenet", state)
    entry = replace(_entry(base, "hrnet_tiny_imagenet", file_name, kind="backbone"), keypoints=None)
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    path = resolve_pretrained("imagenet", "hrnet_tiny")
    assert path == cache / "weights" / "hrnet_tiny_imagenet.safetensors"
    from dmpose.models.convert import read_foreign_state_dict

    assert sorted(read_foreign_state_dict(path)) == sorted(state)
    # an unknown URL: downloaded once, verified by its name's prefix, kept as it is
    other = publish(root, "other", state)
    got = resolve_pretrained(f"{base}/{other}", "hrnet_tiny")
    assert got.name == other and got.read_bytes() == (root / other).read_bytes()
    assert resolve_pretrained(str(got), "hrnet_tiny") == got


def test_ckpt_resolution_errors():
    with pytest.raises(FileNotFoundError, match="checkpoint not found: no_such_model .nor is it a published"):
        resolve_checkpoint("no_such_model")
    with pytest.raises(WeightsError, match="backbone weights, not pose weights"):
        resolve_checkpoint("hrnet_w32_imagenet")


def test_model_pretrained_imagenet_fetches_the_archs_backbone(server, monkeypatch, cache):
    from dmpose.train.config import check_paths, load_config
    from dmpose.train.network import build_network

    root, base, _ = server
    torch.manual_seed(1)
    state = {k: v for k, v in build_model("hrnet_tiny").state_dict().items() if not k.startswith("final_layer")}
    file_name = publish(root, "hrnet_tiny_imagenet", state)
    entry = replace(_entry(base, "hrnet_tiny_imagenet", file_name, kind="backbone"), keypoints=None)
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    cfg = load_config(data={"model": {"arch": "hrnet_tiny", "pretrained": "imagenet"}})
    check_paths(cfg)  # a name is not a path that must exist
    logs = []
    model = build_network(cfg, cfg.pose_spec(), logs.append)
    assert "hrnet_tiny_imagenet.safetensors" in logs[0]
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="no published ImageNet backbone for arch 'hrnet_w18'"):
        build_network(load_config(data={"model": {"arch": "hrnet_w18", "pretrained": "imagenet"}}),
                      load_config(data={"model": {"arch": "hrnet_w18"}}).pose_spec(), logs.append)


def _cli(*args: str):
    from typer.testing import CliRunner

    from dmpose.cli import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_the_weights_commands_and_predict_without_ckpt(server, monkeypatch, cache, tmp_path):
    """The whole chain from the command line: list, fetch (progress, verify, convert, cache), import, and
    `dmpose predict` with no --ckpt fetching the published default; offline, one line naming the way out."""
    root, base, _ = server
    result = _cli("weights", "list")
    assert result.exit_code == 0 and "hrnet_w32_coco_256x192" in result.output and "AP 0.746" in result.output
    file_name = publish(root, "hrnet_tiny_coco_128x96", _mmpose_tiny())
    entry = _entry(base, "tiny_test", file_name)
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    result = _cli("weights", "fetch", "tiny_test")
    assert result.exit_code == 0, result.output
    assert str(cache / "weights" / "tiny_test.safetensors") in result.output.replace("\n", "")
    result = _cli("weights", "fetch", "tiny_tset")
    assert result.exit_code == 1 and "did you mean tiny_test" in result.output
    result = _cli("weights", "import", str(root / file_name))
    assert result.exit_code == 0 and "tiny_test" in result.output

    image = tmp_path / "person.jpg"
    import cv2
    import numpy as np

    cv2.imwrite(str(image), np.full((64, 48, 3), 127, np.uint8))
    monkeypatch.setattr(registry, "DEFAULT_POSE_MODEL", "tiny_test")
    (cache / "weights" / "tiny_test.safetensors").unlink()
    result = _cli("predict", str(image), "--out", str(tmp_path / "pred"), "--no-flip", "--no-detector")
    assert result.exit_code == 0, result.output
    assert "no --ckpt: the published tiny_test" in result.output and (tmp_path / "pred" / "person.json").is_file()
    result = _cli("export", "--ckpt", "tiny_test", "--format", "safetensors", "-o", str(tmp_path / "t.safetensors"))
    assert result.exit_code == 0 and (tmp_path / "t.safetensors").is_file()

    with socket.socket() as s:  # offline: nothing listens there
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setitem(REGISTRY, entry.name, replace(entry, url=f"{dead}/{file_name}"))
    (cache / "weights" / "tiny_test.safetensors").unlink()
    result = _cli("predict", str(image), "--out", str(tmp_path / "pred2"), "--no-detector")
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert f"{dead}/{file_name}" in lines[0] and f"dmpose weights import {file_name}" in lines[0]
    assert not (tmp_path / "pred2").exists() and _files(cache / "weights") == []
