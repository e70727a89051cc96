"""User-facing errors: one line that names the problem and the fix, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in input or config that the user can fix; the CLI prints it as one line and exits 2."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message cut to its first line (a library's message, quoted inside one of ours)."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM, raised where the app is (so its cleanup runs, as for any error): the app says so in
    one line and exits with 128 + the signal's number. A BaseException, as KeyboardInterrupt is: no handler of
    errors catches it, and Lightning treats it as an interruption, not as its own Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
