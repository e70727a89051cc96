"""File safety, in one place: read every file as possibly damaged, write only files we create, never through a
link we did not create. Shared by token caches, prepared folders, run folders, checkpoints and exports.

- `read_text`: a text file as the project reads text (UTF-8, a byte-order mark dropped, CRLF read as LF), with one
  line naming the file for what is not one (missing, a folder, a device, not UTF-8 and where).
- `atomic_write`: a file is written under a fresh temporary name in the same folder (`<name>.<random>.tmp`),
  created with O_CREAT | O_EXCL | O_NOFOLLOW (a link planted at that name is never followed, two writers never
  share a temporary), fsynced, then renamed over the target: a reader sees the old file or the new one, and a
  link at the target is replaced by the file itself, never written through.
- `append_text`: append to a file of ours; a symlink at the path is refused, not followed.
- `write_folder`: a folder made as a whole, beside its place, then renamed into it: it replaces only a missing or
  empty folder or one it made before for the same purpose, never a folder holding someone else's files.
- `placing`: the step that puts a finished write in place (a rename, a link) runs with Ctrl-C and SIGTERM held,
  so it is done whole, and is recorded in `PLACED`: an app interrupted later says what it had written.
- `folder_lock`: an flock on a file, checked after it is taken to be the file still at that path, so a lock
  file removed by its holder is never held by two processes.

No torch, no Lightning: lgpt-prepare's worker processes import this.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import signal
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from lightning_gpt.errors import UserError

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
NO_FOLLOW = os.O_NOFOLLOW
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


PLACED: list[Path] = []  # what this process has put in place, in order (see placing)
STOPPING = (signal.SIGINT, signal.SIGTERM)  # the signals that stop a tool: Ctrl-C, a scheduler's SIGTERM


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while the block runs, then act as they would have: a step made of several
    system calls (two renames) is never cut in the middle by an interruption. Python runs signal handlers in
    the main thread whichever thread the signal reached (torch's threads included), so a handler of its own
    there, noting the signal, holds it (a blocked signal mask would not: another thread takes the signal)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {signum: signal.signal(signum, lambda s, f: caught.append(s)) for signum in STOPPING}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if caught:  # now, as it would have been then
            signum, handler = caught[0], previous[caught[0]]
            if callable(handler):
                handler(signum, None)
            elif handler in (signal.SIG_DFL, None):
                os.kill(os.getpid(), signum)


@contextlib.contextmanager
def placing(path: Path) -> Iterator[None]:
    """The block puts a finished write in place at `path` (a rename, a link): it runs with signals held, and
    once it has succeeded `path` is in PLACED, so an app interrupted after it knows the write was whole."""
    with signals_held():
        yield
        PLACED.append(Path(path))


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


def read_text(path: str | Path, what: str = "file", hint: str = "") -> str:
    """The text of a file, decoded as UTF-8 (a leading byte-order mark dropped, CRLF and CR read as LF)."""
    path = Path(path).expanduser()
    fix = f"; {hint}" if hint else ""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise UserError(
            f"{what} {path} not found{fix}"
            if e.errno == errno.ENOENT
            else f"cannot read {what} {path} ({e.strerror}){fix}"
        ) from e
    if stat.S_ISDIR(mode):
        raise UserError(f"{what} {path} is a folder, not a text file{fix}")
    if not stat.S_ISREG(mode):
        raise UserError(f"{what} {path} is not a regular file (a device or a pipe){fix}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {what} {path} ({e.strerror}){fix}") from e
    return decode(data, f"{what} {path}")


def decode(data: bytes, what: str) -> str:
    """UTF-8 text as the project reads it: a byte-order mark dropped, line ends made LF."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{what} is not valid UTF-8 text ({e.reason} at byte {e.start}); convert it to UTF-8, "
            "e.g. iconv -f latin1 -t utf-8"
        ) from e
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def append_text(path: str | Path, text: str) -> None:
    """Append to a file (created if missing); a symlink at path is an error, never followed."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | NO_FOLLOW, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(
                f"{path} is a symbolic link; it is written only as a file of its own: remove the link"
            ) from e
        raise
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(text)


def is_disk_full(e: BaseException) -> OSError | None:
    """The error in e's chain that says the disk (or a quota, or a file-size limit) is full, as an OSError, if
    any: an OSError, or a library's error that quotes one (Rust libraries such as safetensors say "os error 28")."""
    import re

    seen: list[BaseException] = []
    while e is not None and e not in seen:
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return e
        quoted = re.search(r"os error (\d+)\)", str(e))
        if quoted and int(quoted.group(1)) in DISK_FULL:
            return OSError(int(quoted.group(1)), os.strerror(int(quoted.group(1))))
        seen.append(e)
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return None


@contextlib.contextmanager
def folder_lock(path: Path, create_folder: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if need be, never through a link) until the block
    ends; other processes wait. The holder may delete the lock file (and its folder): a waiter then finds
    that the file it locked is no longer the one at `path` and starts over, so no two processes ever hold
    the lock at once. A symbolic link at `path` is refused (UserError), never followed; any other OSError (a
    read-only disk, a folder that cannot be made) propagates to the caller."""
    path = Path(path)
    while True:
        if create_folder:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileNotFoundError:  # the folder was removed under us by the previous holder: make it again
            continue
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UserError(
                    f"{path} is a symbolic link; a lock is taken only on a file of its own: remove the link"
                ) from e
            raise
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


FOLDER_MARKER = ".lgpt-folder"  # in every folder write_folder made: what made it


def made_by(folder: Path, kind: str) -> bool:
    """Whether write_folder made this folder for `kind` (its marker file says so; a link is never trusted)."""
    marker = folder / FOLDER_MARKER
    if folder.is_symlink() or not marker.is_file() or marker.is_symlink():
        return False
    try:
        return json.loads(marker.read_text()).get("kind") == kind
    except (OSError, ValueError, AttributeError):
        return False


def write_folder(out: Path, kind: str, fill: Callable[[Path], object], what: str = "out_dir") -> None:
    """Make the folder `out` as a whole: `fill(folder)` writes into a fresh folder beside it, which then takes its
    place by rename. `out` may be missing, an empty folder, or one this function made before for `kind`
    (replaced whole, so a reader never finds new files beside old ones); anything else is refused with one
    line, as is a symlink at `out`. A kill leaves `out` as it was (or, between the two renames of a
    replacement, the previous folder as `<out>.<random>.old`, which the next call removes with any temporary
    folder of ours left by a killed run)."""
    out = Path(out).expanduser().absolute()
    if out.is_symlink():
        raise UserError(f"{what} {out} is a symbolic link; give a folder of its own")
    if out == Path.cwd():  # renamed over, it would leave the shell in a folder that no longer exists
        raise UserError(f"{what} {out} is the current folder; give a new folder in it, e.g. {what}=hf")
    if out.exists():
        if not out.is_dir():
            raise UserError(f"{what} {out} is a file; give a new folder, or an empty one")
        if any(out.iterdir()) and not made_by(out, kind):
            raise UserError(
                f"{what} {out} holds files lightning_gpt did not write there; give a new folder, or an empty one "
                "(it never writes into a folder of someone else's)"
            )
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for stale in [*parent.glob(f"{out.name}.*.tmp"), *parent.glob(f"{out.name}.*.old")]:
            if stale.is_dir() and made_by(stale, kind):
                shutil.rmtree(stale)
        tmp = parent / f"{out.name}.{secrets.token_hex(8)}.tmp"
        tmp.mkdir()
    except OSError as e:
        raise UserError(f"cannot write {what} {out} ({e.strerror}); choose another folder") from e
    try:
        atomic_write(tmp / FOLDER_MARKER, json.dumps({"kind": kind}) + "\n")  # first: a killed run's is ours
        fill(tmp)
        for path in tmp.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        fsync_folder(tmp)
        old = None
        with placing(out):  # both renames or neither: an interruption between them lost both folders
            if out.exists() and not any(out.iterdir()):
                out.rmdir()  # an empty folder: ours takes its place
            if out.exists():
                old = parent / f"{out.name}.{secrets.token_hex(8)}.old"
                os.rename(out, old)
            os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old)
        fsync_folder(parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(e):
            raise UserError(
                f"no space left to write {what} {out}; nothing of it was written: free space or choose another disk"
            ) from e
        if isinstance(e, OSError):
            raise UserError(f"cannot write {what} {out} ({e.strerror}); choose another folder") from e
        raise
