"""Writing files safely: atomic replacement, exclusive creation that never follows a link, folder locks.

Shared by everything that writes where a user keeps data (token caches and prepared folders now; checkpoints
and run folders may move here). The rules:

- a file is written under a fresh temporary name in the same folder (`<name>.<random>.tmp`), created with
  O_CREAT | O_EXCL | O_NOFOLLOW (so a link planted at that name is never followed, and two writers never
  share a temporary), fsynced, then renamed over the target: a reader sees the old file or the new one;
- `os.replace` replaces a link at the target by the file itself, never writing through it;
- a lock is an flock on a file, checked after it is taken to be the file still at that path, so a lock
  file removed by its holder (a failed first launch cleaning up) is never held by two processes.

No torch, no Lightning: lgpt-prepare's worker processes import this.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def create_new(path: Path) -> BinaryIO:
    """Open a file that must not exist yet for writing (mode 0644 after the umask); never follows a link.
    FileExistsError if anything, a link included, is at that name."""
    return os.fdopen(os.open(path, _CREATE, 0o644), "wb")


def temporary_name(path: Path, suffix: str = ".tmp") -> Path:
    """A fresh name beside `path` for writing it: `<name>.<16 hex digits><suffix>`."""
    return path.with_name(f"{path.name}.{secrets.token_hex(8)}{suffix}")


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Replace `path` by `data`, all or nothing: a reader (or a crash) finds the old file or the new one."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with create_new(tmp) as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_folder(path.parent)


def is_disk_full(e: BaseException) -> OSError | None:
    """The OSError in e's chain that says the disk (or a quota, or a file-size limit) is full, if any."""
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return e
        seen.append(e)
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return None


@contextlib.contextmanager
def folder_lock(path: Path, create_folder: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if need be, never through a link) until the block
    ends; other processes wait. The holder may delete the lock file (and its folder): a waiter then finds
    that the file it locked is no longer the one at `path` and starts over, so no two processes ever hold
    the lock at once. OSError (a read-only disk, a folder that cannot be made) propagates to the caller."""
    path = Path(path)
    while True:
        if create_folder:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileNotFoundError:  # the folder was removed under us by the previous holder: make it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            if current is not None and current.st_ino == os.fstat(fd).st_ino:
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # removed or replaced while we waited: lock the file now at that name
    try:
        yield
    finally:
        os.close(fd)  # releases the flock
