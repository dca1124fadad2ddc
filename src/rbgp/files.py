"""Atomic file writes, the one way the package writes files (checkpoints, metrics, results, plots).

A file is written to a temp file in the same folder, fsynced and renamed into place, so readers see
the old file or the complete new one, never a partial write; on error the temp file is removed.
Files get the usual mode (0666 less the umask), not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write",
    "check_input_dir",
    "check_output_dir",
    "check_output_file",
    "remove_stale_temps",
    "save_figure",
    "write_json",
    "write_text",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file next to `path` (creating the folder); on success fsync it and rename it to `path`."""
    path = check_output_file(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the file asked for, not a temp file
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        text_args: dict[str, Any] = {} if "b" in mode else {"newline": ""}
        with os.fdopen(fd, mode, **text_args) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> None:
    """Write a matplotlib figure atomically, in the format its suffix names (png by default)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight")


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """`path` as a Path if it is, or can be created as, a writable folder; else ValueError naming it."""
    path = Path(path)
    base = _first_existing(path)
    if not base.is_dir():
        where = "is an existing file" if base == path else f"is under {base}, which is a file"
        raise ValueError(f"{what} {str(path)!r} {where}; give a folder path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(path)!r}: no permission to write in {base}")
    return path


def check_input_dir(path: str | Path, what: str = "input folder") -> Path:
    """`path` as a Path if it is an existing folder; else ValueError naming it."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is not a folder" + ("" if path.exists() else " (no such path)"))
    return path


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """`path` as a Path if a file can be written there; else ValueError naming it."""
    path = Path(path)
    if str(path) in ("", ".") or path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder; give a file path (e.g. {path / 'out'}{path.suffix})")
    base = _first_existing(path.parent)
    if not base.is_dir():
        raise ValueError(f"{what} {str(path)!r}: {base} is a file, so nothing can be written under it")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(path)!r}: no permission to write in {base}")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{what} {str(path)!r}: no permission to overwrite it")
    return path


def remove_stale_temps(folder: str | Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the temp files `atomic_write` left in `folder` for `names` (a killed writer's); the
    caller must be the folder's only writer."""
    folder = Path(folder)
    stale = [p for name in names for p in folder.glob(f".{glob.escape(name)}.*.tmp") if p.is_file()]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


LOCK_NAME = ".rbgp.lock"


class FolderBusy(ValueError):
    """Another live process holds the folder's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: str | Path, on_stale: Any = None) -> Iterator[Path]:
    """Hold `folder`/.rbgp.lock (created exclusively, holding this process's id and host) while the
    block runs, so that two writers never share a folder. A lock whose process is alive on this host
    raises FolderBusy naming it; one left by a dead process (kill -9) is taken over, after
    `on_stale(message)` (two processes taking over the same dead lock at the same instant could both
    succeed: the check and the removal are two steps). A lock from another host is never taken over:
    delete it by hand. A folder this made and left empty is removed again."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    me = f"{os.getpid()} {os.uname().nodename}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock.read_text(errors="replace").split() if lock.exists() else []
            pid = int(holder[0]) if holder and holder[0].isdigit() else None
            host = holder[1] if len(holder) > 1 else "?"
            if pid is not None and host == os.uname().nodename and not _alive(pid):
                if on_stale is not None:
                    on_stale(f"{folder}: taking over the lock of process {pid}, which no longer runs")
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            raise FolderBusy(
                f"{folder} is in use by process {pid if pid is not None else '?'} on {host} (lock file "
                f"{lock}); wait for it to finish, or delete the lock file if that process is gone"
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        break
    else:
        raise FolderBusy(f"{folder}: could not take the lock {lock} (another process took it first)")
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            if lock.read_text(errors="replace").strip() == me:
                lock.unlink()
        if created:  # a run that stopped before writing anything leaves no folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()
