"""Safe file output: a crash never leaves a half-written file under the final name, an output never
replaces one of the command's own inputs, and a failed write says which output it was.

Every writer in dmpose goes through here: `atomic_output` / `atomic_write_bytes` for single files,
`atomic_folder` for folders (a dataset), and `check_not_input` for the rule that an output path may not
be, resolve to, or share an inode with any input of the same command.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output", "atomic_write_bytes", "atomic_folder", "check_not_input", "output_error"]

PathLike = str | os.PathLike


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts, case-insensitive file systems
    except OSError:  # one of them does not exist (yet)
        return False


def check_not_input(out: PathLike, inputs: Iterable[PathLike | None], what: str = "output") -> None:
    """Raise ValueError naming both paths when `out` is one of `inputs` (None entries are skipped):
    the same path, the same resolved path (symlinks, `..`), or the same inode (hard links)."""
    out = Path(out)
    for src in inputs:
        if src is not None and _same_file(out, Path(src)):
            raise ValueError(f"{what} {out} is the same file as the input {src}: refusing to overwrite an input; "
                             "choose another output path")


def output_error(path: PathLike, exc: OSError) -> OSError:
    """An OSError of the same errno whose message names the output `path` (and the reason)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.EISDIR:
        reason = "it is a directory"
    err = OSError(exc.errno, f"cannot write {path}: {reason}")
    err.filename = str(path)
    return err


def _check_target(path: Path) -> None:
    if path.is_dir():
        raise output_error(path, IsADirectoryError(errno.EISDIR, "is a directory"))


@contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path in the destination's folder; write to it, and on success it is flushed
    to disk, given the usual permissions and renamed onto `path`. On any error it is removed and an
    existing file at `path` is left untouched. OSErrors of the output (a directory, a read-only folder,
    a full disk) are raised as OSError naming `path`."""
    path = Path(path)
    _check_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise output_error(path, exc) from None
    tmp = Path(name)
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.filename not in (None, str(tmp), name):
                raise  # an error about some other file (an input): not ours to rename
            raise output_error(path, exc) from None
        try:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, _default_mode())  # mkstemp creates 0600
            os.replace(tmp, path)
        except OSError as exc:
            raise output_error(path, exc) from None
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextmanager
def atomic_folder(path: PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `path` (a hidden sibling); fill it, and on success it is
    renamed onto `path`, which must be absent or an empty folder. On any error, interruption included,
    the temporary folder is removed and `path` is left as it was, so a rerun is never blocked."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"output folder is not empty: {path}" if path.is_dir()
                              else f"output path exists and is not a folder: {path}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as exc:
        raise output_error(path, exc) from None
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.filename is not None and not str(exc.filename).startswith(str(tmp)):
                raise
            raise output_error(path, exc) from None
        try:
            if path.is_dir():
                path.rmdir()  # empty (checked above); fails, as it should, if something appeared meanwhile
            os.replace(tmp, path)
        except OSError as exc:
            raise output_error(path, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
