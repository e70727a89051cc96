"""User-facing errors: one line that names the problem and the fix, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in input or config that the user can fix; the CLI prints it as one line and exits 2."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message cut to its first line (a library's message, quoted inside one of ours)."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__
