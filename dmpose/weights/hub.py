"""Fetching published weights into dmpose's cache: download, verify, convert once, reuse.

`fetch(name)` downloads an entry of `dmpose.weights.registry` (or, with $DMPOSE_WEIGHTS_MIRROR set, the same
file name under that base URL), checks the sha256 prefix its file name carries, and converts it once into
`<cache>/weights/NAME.safetensors`: pose models into a dmpose checkpoint with the entry's full spec (`dmpose
info` reads it), backbones and the detector into a safetensors file of their own state dict. The download
goes to a temporary folder inside the cache and the converted file is renamed into place: an interrupted,
truncated or corrupt download leaves nothing in the cache. `import_file` does the same with a file
downloaded by hand (offline machines). `resolve_checkpoint` turns what `--ckpt` accepts (a path, a
published name, an http(s) URL) into a local file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from safetensors.torch import save_file

from dmpose.atomic import atomic_output
from dmpose.cache import cache_root
from dmpose.models.convert import convert_checkpoint, read_foreign_state_dict
from dmpose.weights.registry import (
    REGISTRY,
    WeightsEntry,
    entry_for_file,
    get_entry,
    imagenet_entry,
    sha256_prefix,
)

__all__ = [
    "MIRROR_ENV",
    "WeightsError",
    "cached_file",
    "fetch",
    "fetch_url",
    "import_file",
    "is_published",
    "is_url",
    "resolve_checkpoint",
    "resolve_pretrained",
    "weights_dir",
]

#: A base URL that replaces each published file's folder (a mirror holding the same file names).
MIRROR_ENV = "DMPOSE_WEIGHTS_MIRROR"
CHUNK = 1 << 20

#: progress(bytes_done, bytes_total or None) during a download.
Progress = Callable[[int, int | None], None]


class WeightsError(OSError):
    """A download, verification or conversion of published weights failed (one line, naming the URL or file;
    an OSError: what the machine or the network gave was not the published file)."""


def weights_dir() -> Path:
    """<cache>/weights (`dmpose.cache.cache_root`)."""
    return cache_root() / "weights"


def cached_file(entry: WeightsEntry) -> Path:
    """Where `fetch` keeps `entry`'s converted file."""
    return weights_dir() / f"{entry.name}.safetensors"


def is_url(text: str) -> bool:
    return urlparse(str(text)).scheme in ("http", "https")


def is_published(text: str | os.PathLike) -> bool:
    """Whether `text` names weights to fetch (an http(s) URL or a published name) rather than a local file: an
    existing path always wins."""
    text = str(text)
    return not Path(text).expanduser().exists() and (is_url(text) or text in REGISTRY)


def _mirrored(url: str) -> str:
    base = os.environ.get(MIRROR_ENV)
    if not base:
        return url
    return base.rstrip("/") + "/" + PurePosixPath(urlparse(url).path).name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, expected: str | None, what: str) -> None:
    if expected is None:
        return
    digest = _sha256(path)
    if not digest.startswith(expected):
        raise WeightsError(f"{what}: its sha256 starts with {digest[:len(expected)]}, but the published file name "
                           f"says {expected}: the file is corrupt, truncated or not the published one; nothing was "
                           "kept")


def _download(url: str, dest: Path, progress: Progress | None, timeout: float = 60.0) -> None:
    """Stream `url` to `dest` (a path in a temporary folder); WeightsError in one line on any failure."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:  # noqa: S310
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            if progress:
                progress(0, total)
            while block := response.read(CHUNK):
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
        if total is not None and done != total:
            raise WeightsError(f"download of {url} stopped after {done} of {total} bytes; nothing was kept")
    except urllib.error.HTTPError as e:
        raise WeightsError(f"could not download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", None) or type(e).__name__
        raise WeightsError(f"could not download {url} ({reason})") from None


def _offline_hint(entry: WeightsEntry) -> str:
    return f"; download it on a machine that can, then run `dmpose weights import {entry.file_name}`"


def _install(entry: WeightsEntry, raw: Path, out: Path) -> Path:
    """Verify `raw` (the published file) and convert it into `out` atomically."""
    _verify(raw, entry.sha256_prefix, f"{raw.name} (published weights {entry.name})")
    meta = {"weights": entry.name, "source_url": entry.url}
    try:
        if entry.kind == "pose":
            if entry.published:
                meta["published_metric"] = entry.published
            convert_checkpoint(raw, entry.arch, out, meta=meta, input_wh=entry.input_wh,  # written atomically
                               keypoints=entry.keypoints, normalisation=entry.normalisation, decode=entry.decode)
        else:
            state = read_foreign_state_dict(raw)
            with atomic_output(out) as tmp:
                save_file({k: v.contiguous() for k, v in state.items()}, str(tmp),
                          metadata={**meta, "kind": entry.kind, "arch": entry.arch})
    except (ValueError, FileNotFoundError) as e:
        raise WeightsError(f"{raw.name} (published weights {entry.name}) could not be converted: {e}") from None
    return out


def fetch(name: str | WeightsEntry, progress: Progress | None = None, force: bool = False) -> Path:
    """The converted file of a published entry, downloading and converting it on first use."""
    entry = name if isinstance(name, WeightsEntry) else get_entry(name)
    out = cached_file(entry)
    if out.is_file() and not force:
        return out
    url = _mirrored(entry.url)
    weights_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=weights_dir(), prefix=".download-") as tmp:
        raw = Path(tmp) / entry.file_name
        try:
            _download(url, raw, progress)
        except WeightsError as e:
            raise WeightsError(str(e) + _offline_hint(entry)) from None
        return _install(entry, raw, out)


def import_file(path: str | os.PathLike, name: str | None = None) -> tuple[WeightsEntry, Path]:
    """Install a published file downloaded by hand: the entry is `name`, else the one whose file has this
    file's name. The file is verified and converted like a download; the input is left as it is."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    entry = get_entry(name) if name else entry_for_file(path.name)
    if entry is None:
        raise WeightsError(f"{path.name} is not the file of any published weights (`dmpose weights list`); give "
                           "--name NAME if it was renamed, or convert it with `dmpose convert`")
    return entry, _install(entry, path, cached_file(entry))


def fetch_url(url: str, progress: Progress | None = None) -> Path:
    """A local copy of `url`: a published file's URL is fetched (verified, converted) as its entry; any other
    file is downloaded once into <cache>/weights/urls/ (verified when its name carries a sha256 prefix)."""
    file_name = PurePosixPath(urlparse(url).path).name
    if not file_name:
        raise WeightsError(f"{url}: the URL names no file")
    entry = entry_for_file(file_name)
    if entry is not None:
        return fetch(entry, progress)
    out = weights_dir() / "urls" / hashlib.sha256(url.encode()).hexdigest()[:16] / file_name
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=weights_dir(), prefix=".download-") as tmp:
        raw = Path(tmp) / file_name
        _download(url, raw, progress)
        _verify(raw, sha256_prefix(file_name), f"{file_name} from {url}")
        with atomic_output(out) as dst:
            shutil.copyfile(raw, dst)
    return out


def resolve_checkpoint(text: str | os.PathLike, progress: Progress | None = None, what: str = "--ckpt",
                       kind: str = "pose") -> Path:
    """A path as it is; an http(s) URL or a published name (of `kind`: pose or detector) fetched into the cache."""
    text = str(text)
    if is_url(text):
        return fetch_url(text, progress)
    path = Path(text).expanduser()
    if path.exists() or text not in REGISTRY:
        if not path.exists():
            thing = "checkpoint" if kind == "pose" else f"{kind} weights"
            raise FileNotFoundError(f"{what}: {thing} not found: {text} (nor is it a published {kind} name, "
                                    "`dmpose weights list`, or an http(s) URL)")
        return path
    entry = REGISTRY[text]
    if entry.kind != kind:
        raise WeightsError(f"{what} {text}: published {entry.kind} weights, not {kind} weights "
                           "(`dmpose weights list`)")
    return fetch(entry, progress)


def resolve_pretrained(value: str | os.PathLike, arch: str, progress: Progress | None = None) -> Path:
    """`model.pretrained`: `imagenet` (the arch's published ImageNet backbone), a published name, an http(s)
    URL or a path."""
    text = str(value)
    if text == "imagenet":
        return fetch(imagenet_entry(arch), progress)
    if is_url(text):
        return fetch_url(text, progress)
    if text in REGISTRY and not Path(text).exists():
        return fetch(text, progress)
    return Path(text).expanduser()
