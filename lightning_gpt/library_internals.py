"""The private parts of the libraries we build on that lightning_gpt still uses: one function each, saying why
there is no public way. tests/test_library_internals.py calls each against the installed libraries, so an
upgrade that changes one fails there, loudly, instead of somewhere silently.
"""

from __future__ import annotations

from typing import Any


def tensorboard_file_writer(writer: Any) -> Any:
    """The FileWriter of a torch SummaryWriter: the HPARAMS tab's summaries must go into the run's own event file,
    beside its scalars. The public `SummaryWriter.add_hparams` writes them into a new subfolder per call, which
    TensorBoard then shows as a second run."""
    return writer._get_file_writer()
