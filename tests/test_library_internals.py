"""Each private API of Lightning or torch that lightning_gpt still uses (lightning_gpt/library_internals.py),
called against the installed libraries: an upgrade that changes one fails here, loudly."""

from __future__ import annotations

from lightning_gpt import library_internals


def test_the_tensorboard_file_writer_takes_summaries(tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    writer = SummaryWriter(tmp_path)
    file_writer = library_internals.tensorboard_file_writer(writer)
    for summary in hparams({"lr": 1e-3}, {"val/loss": 0.0}):
        file_writer.add_summary(summary)
    writer.close()
    assert [p.name for p in tmp_path.iterdir()][0].startswith("events.out.tfevents")  # one event file, no subfolder
    assert len(list(tmp_path.iterdir())) == 1


def test_every_internal_is_tested_here():
    import inspect

    names = [
        n
        for n, f in inspect.getmembers(library_internals, inspect.isfunction)
        if f.__module__ == library_internals.__name__
    ]
    tested = inspect.getsource(inspect.getmodule(test_every_internal_is_tested_here))
    assert all(f"library_internals.{name}(" in tested for name in names), names
