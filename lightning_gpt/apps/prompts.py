"""A prompt as the apps take it: the text itself, @file for a file's text, or - for standard input."""

from __future__ import annotations

import sys

from lightning_gpt.io import decode, read_text


def read_prompt(prompt: str) -> str:
    """The prompt itself, the contents of a file given as @path, or standard input for "-" (text with
    commas, quotes or non-ASCII characters needs no quoting there). A file's text, and standard input's, is
    decoded as a corpus is (UTF-8, a byte-order mark dropped, CRLF and CR read as LF)."""
    if prompt == "-":
        raw = getattr(sys.stdin, "buffer", None)  # its bytes, not the locale's decoding of them
        data = raw.read() if raw is not None else sys.stdin.read().encode("utf-8", "surrogateescape")
        return decode(data, "standard input")
    if not prompt.startswith("@"):
        return prompt
    return read_text(prompt[1:], "prompt file", hint="give prompt=@<a text file> or the text itself")
