"""Shared test set-up: a deterministic hypothesis profile, and where the real data samples live."""

import os
from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline (the CI machine has 2 shared cores) and a fixed seed so CI is reproducible.
settings.register_profile("dmpose", deadline=None, derandomize=True)
settings.load_profile("dmpose")

SHARED_DATA = Path(os.environ.get("DMPOSE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _sample(name: str, annotation: str) -> Path:
    path = SHARED_DATA / name
    if not (path / annotation).is_file():
        pytest.skip(f"real sample {name} not found at {path} (set DMPOSE_SHARED_DATA)")
    return path


@pytest.fixture
def coco_sample() -> Path:
    return _sample("coco_sample", "test_coco.json")


@pytest.fixture
def mpii_sample() -> Path:
    return _sample("mpii_sample", "test_mpii.json")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A freshly initialised hrnet_tiny (COCO-17) at a 64x48 input, DM decode (the predict tests' model)."""
    import torch

    import dmpose

    torch.manual_seed(0)
    model = dmpose.build_model("hrnet_tiny", num_joints=17)
    return dmpose.save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors",
                                  meta={"input_size": [64, 48], "decode": "2x2"})
