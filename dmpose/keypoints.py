"""Keypoint sets: joint names, left/right flip pairs, OKS sigmas, skeleton and half-body split (`KeypointSpec`).

Built in: "coco17" and "mpii16" (dmpose/keypoint_sets/*.yaml, the only source of the built-in sets). A custom
set (animals, hands, ...) is a YAML file with the same keys, referring to joints by name:

    name: my_set                       # optional (defaults to the file name)
    keypoints: [a, b, c]               # required, unique names; their order is the dataset's order
    flip_pairs: [[a, b]]               # optional, each joint in at most one pair
    sigmas: [0.05, 0.05, 0.1]          # optional OKS sigmas, one per keypoint (needed for COCO eval)
    skeleton: [[a, c]]                 # optional, for drawing
    upper_body: [a, b]                 # optional, enables the half-body augmentation

In a `KeypointSpec` (and in checkpoint metadata) pairs are joint indices in that order. `flip_permutation`
is the one flip rule: flipped[..., j] = original[..., p[j]], each pair swapped.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["KeypointSpec", "flip_permutation", "load_keypoint_set", "builtin_keypoint_sets"]

_BUILTIN_DIR = Path(__file__).resolve().parent / "keypoint_sets"
_KEYS = {"name", "keypoints", "flip_pairs", "sigmas", "skeleton", "upper_body"}


def flip_permutation(flip_pairs, num_keypoints: int) -> tuple[int, ...]:
    """The one flip permutation p: flipped[..., j] = original[..., p[j]] (each pair swapped).

    Raises ValueError for a pair that is not two different joints in [0, K) or a joint in two pairs."""
    perm = list(range(num_keypoints))
    for pair in flip_pairs:
        a, b = (int(i) for i in pair)
        if not (0 <= a < num_keypoints and 0 <= b < num_keypoints) or a == b:
            raise ValueError(f"bad flip pair {tuple(pair)} for {num_keypoints} joints")
        if perm[a] != a or perm[b] != b:
            raise ValueError(f"joint in flip pair {tuple(pair)} appears in more than one pair")
        perm[a], perm[b] = b, a
    return tuple(perm)


class KeypointSpec(BaseModel):
    """A keypoint set by index: joint names in the dataset's order, pairs as joint indices."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    names: tuple[str, ...] = Field(min_length=1)
    flip_pairs: tuple[tuple[int, int], ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()
    sigmas: tuple[float, ...] | None = None
    upper_body: tuple[int, ...] = ()

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    @model_validator(mode="after")
    def _check(self) -> KeypointSpec:
        k = len(self.names)
        if len(set(self.names)) != k:
            raise ValueError(f"names has duplicates: {sorted({n for n in self.names if self.names.count(n) > 1})}")
        for field in ("flip_pairs", "skeleton"):
            for a, b in getattr(self, field):
                if not (0 <= a < k and 0 <= b < k) or a == b:
                    raise ValueError(f"{field} entry {[a, b]} must be two different joint indices in [0, {k})")
        seen = [i for p in self.flip_pairs for i in p]
        if len(seen) != len(set(seen)):
            raise ValueError("flip_pairs: a joint appears in more than one pair")
        if self.sigmas is not None:
            if len(self.sigmas) != k:
                raise ValueError(f"sigmas must list {k} values (one per joint), got {len(self.sigmas)}")
            if not all(math.isfinite(s) and s > 0 for s in self.sigmas):
                raise ValueError("sigmas must be finite and > 0")
        if not all(0 <= i < k for i in self.upper_body):
            raise ValueError(f"upper_body indices must lie in [0, {k})")
        return self

    @property
    def flip_index(self) -> np.ndarray:
        """The one flip permutation p as an index array: flipped[..., j, :] = original[..., p[j], :] (left <->
        right)."""
        return np.asarray(flip_permutation(self.flip_pairs, self.num_keypoints))

    @property
    def lower_body(self) -> tuple[int, ...]:
        """The joints not in `upper_body` (empty when upper_body is: no half-body split)."""
        if not self.upper_body:
            return ()
        upper = set(self.upper_body)
        return tuple(i for i in range(self.num_keypoints) if i not in upper)

    @classmethod
    def builtin(cls, name: str) -> KeypointSpec:
        """A built-in set ("coco17", "mpii16") or a keypoint YAML file (`load_keypoint_set`)."""
        return load_keypoint_set(name)

    def to_dict(self) -> dict:
        """The YAML layout (joints by name), e.g. to write a custom set back to a file."""
        n = self.names
        return {"name": self.name, "keypoints": list(n), "flip_pairs": [[n[a], n[b]] for a, b in self.flip_pairs],
                "sigmas": None if self.sigmas is None else list(self.sigmas),
                "skeleton": [[n[a], n[b]] for a, b in self.skeleton], "upper_body": [n[i] for i in self.upper_body]}

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> KeypointSpec:
        """Validate a YAML-layout dict; errors name the source and the offending field."""

        def fail(msg: str):
            raise ValueError(f"keypoint set {source}: {msg}")

        if not isinstance(data, dict):
            fail(f"expected a mapping, got {type(data).__name__}")
        unknown = set(data) - _KEYS
        if unknown:
            fail(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
        names = data.get("keypoints")
        if not isinstance(names, list) or not names or not all(isinstance(s, str) and s for s in names):
            fail("'keypoints' must be a non-empty list of names")
        if len(set(names)) != len(names):
            dup = sorted({s for s in names if names.count(s) > 1})
            fail(f"'keypoints' has duplicate names {dup}")
        index = {s: i for i, s in enumerate(names)}

        def lookup(field: str, name) -> int:
            if name not in index:
                fail(f"'{field}' refers to unknown keypoint {name!r}")
            return index[name]

        def pairs(field: str) -> tuple[tuple[int, int], ...]:
            value = data.get(field) or []
            out = []
            for pair in value:
                if not isinstance(pair, list) or len(pair) != 2:
                    fail(f"'{field}' entries must be [name, name] pairs, got {pair!r}")
                a, b = lookup(field, pair[0]), lookup(field, pair[1])
                if a == b:
                    fail(f"'{field}' pairs a keypoint with itself: {pair!r}")
                out.append((a, b))
            return tuple(out)

        flip_pairs = pairs("flip_pairs")
        seen = [i for p in flip_pairs for i in p]
        if len(seen) != len(set(seen)):
            fail("a keypoint appears in more than one flip pair")
        sigmas = data.get("sigmas")
        if sigmas is not None:
            if not isinstance(sigmas, list) or len(sigmas) != len(names):
                fail(f"'sigmas' must list {len(names)} numbers (one per keypoint), got {sigmas!r}")
            bad = [i for i, v in enumerate(sigmas)
                   if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < math.inf)]
            if bad:
                fail(f"'sigmas' must all be finite positive numbers; sigmas[{bad[0]}] ({names[bad[0]]}) is "
                     f"{sigmas[bad[0]]!r}")
            sigmas = tuple(float(v) for v in sigmas)
        upper = tuple(lookup("upper_body", s) for s in (data.get("upper_body") or []))
        name = data.get("name", Path(source).stem)
        if not isinstance(name, str) or not name:
            fail("'name' must be a non-empty string")
        return cls(name=name, names=tuple(names), flip_pairs=flip_pairs, sigmas=sigmas, skeleton=pairs("skeleton"),
                   upper_body=upper)


def builtin_keypoint_sets() -> list[str]:
    """The names of the built-in sets."""
    return sorted(p.stem for p in _BUILTIN_DIR.glob("*.yaml"))


@functools.cache
def _builtin(name: str) -> KeypointSpec:
    path = _BUILTIN_DIR / f"{name}.yaml"
    return KeypointSpec.from_dict(yaml.safe_load(path.read_text()), source=str(path))


def load_keypoint_set(name_or_path: str | Path) -> KeypointSpec:
    """A built-in set by name ("coco17", "mpii16") or a user YAML file by path."""
    builtin = _BUILTIN_DIR / f"{name_or_path}.yaml"
    if isinstance(name_or_path, str) and builtin.is_file():
        return _builtin(name_or_path)
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"keypoint set {str(name_or_path)!r} is neither a built-in set {builtin_keypoint_sets()} nor a file"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"keypoint set {path}: invalid YAML: {exc}") from exc
    return KeypointSpec.from_dict(data, source=str(path))
