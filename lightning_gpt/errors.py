"""User-facing errors: one line that names the problem and the fix, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in input or config that the user can fix; the CLI prints it as one line and exits 2."""
