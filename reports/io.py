"""Atomic file writes: the one writer for run records, report files, figures, presets and
checkpoints (``benchmark`` uses it too; no heavy imports)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["WriteError", "atomic_path", "write_text"]


class WriteError(OSError):
    """A file that could not be written: the path and the cause in one line (disk full, no
    permission, read-only file system, a file where a folder must be); nothing was left at
    the path."""

    def __init__(self, path: Path, err: OSError):
        cause = err.strerror or str(err)
        if isinstance(err, FileExistsError | NotADirectoryError):
            cause = f"{cause}: a file is where a folder of this path must be"
        super().__init__(err.errno, f"cannot write {path}: {cause}", str(path))

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self):  # across processes (a pool worker's failed write)
        return _write_error, (self.errno, self.strerror, self.filename)


def _write_error(errno: int | None, message: str, path: str) -> WriteError:
    err = WriteError.__new__(WriteError)
    OSError.__init__(err, errno, message, path)
    return err


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path in ``path``'s folder (created) that replaces ``path`` when the block
    ends without error, with the usual file permissions; removed on error. The one atomic
    writer for run records, report files and figures."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    except OSError as err:
        raise WriteError(path, err) from err
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600: give the usual permissions
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise WriteError(path, err) from err
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (``atomic_path``, with fsync). Run records are
    written with it too."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)
