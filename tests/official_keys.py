"""Test helper: the official HRNet and HRFormer (official, MMPose) key-layout fixtures in the shared folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's forward passes on one thread: on a loaded 2-core machine, two OpenMP threads
    competing with other processes made HRNet-W32 forwards 50x slower than one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shared_dir() -> Path:
    """/work/shared for a repo at /work/<name>, or $DMPOSE_SHARED_DATA's parent."""
    env = os.environ.get("DMPOSE_SHARED_DATA")
    if env:
        return Path(env).resolve().parent
    return Path(__file__).resolve().parents[2] / "shared"


def read_key_fixture(width: int) -> tuple[dict[str, tuple[list[int], str]], int]:
    """The official HRNet-W{width} state dict layout: {key: (shape, dtype)} and the parameter count."""
    return _read_fixture(f"hrnet_official_keys_w{width}.txt")


def read_hrformer_key_fixture(layout: str, size: str) -> tuple[dict[str, tuple[list[int], str]], int]:
    """HRFormer-{Small,Base} in the `official` or `mmpose` (1.x) layout: {key: (shape, dtype)}, parameters."""
    return _read_fixture(f"hrformer_{layout}_keys_{size}.txt")


def _read_fixture(name: str) -> tuple[dict[str, tuple[list[int], str]], int]:
    path = shared_dir() / "fixtures" / name
    if not path.is_file():
        pytest.skip(f"official key fixture not found: {path}")
    keys: dict[str, tuple[list[int], str]] = {}
    params = None
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            for word in line[1:].split():
                if word.startswith("params="):
                    params = int(word.split("=", 1)[1])
            continue
        key, shape, dtype = line.split("\t")
        keys[key] = ([int(s) for s in shape.strip("[]").split(",") if s.strip()], dtype)
    assert params is not None, f"{path} has no params= header"
    return keys, params
