"""File safety, in one place: read every file as possibly damaged, write only files we create, never through a
link we did not create.

- `read_text`: a text file as the project reads text (UTF-8, a byte-order mark dropped, CRLF read as LF), with one
  line naming the file for what is not one (missing, a folder, a device, not UTF-8 and where).
- `write_atomically`: a new file beside the target (exclusive, never through a symlink), synced, then renamed over
  it: readers see the old file or the new one, and a link planted at the target is replaced, not followed.
- `append_text`: append to a file of ours; a symlink at the path is refused, not followed.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from lightning_gpt.errors import UserError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NO_FOLLOW  # exclusive: a name planted first cannot redirect it


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


def write_atomically(path: str | Path, data: str | bytes, mode: int = 0o644) -> Path:
    """Replace path with data as one step: written beside it under a fresh name, synced, renamed over it."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(partial, NEW_FILE, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)  # ours: made exclusively above
        raise
    return path


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


def is_disk_full(e: BaseException) -> bool:
    """Whether an error, or one it was raised from, is a full disk or quota."""
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return True
        seen.append(e)
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False
