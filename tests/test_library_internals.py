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


def test_muons_learning_rate_scale_and_group_state_are_torchs():
    import torch

    assert library_internals.muon_lr_scale(0.02, "original", torch.Size([64, 16])) == 0.02 * 2  # sqrt(64 / 16)
    assert library_internals.muon_lr_scale(0.02, "match_rms_adamw", torch.Size([64, 16])) == 0.02 * 0.2 * 8
    weight = torch.nn.Parameter(torch.ones(4, 3))
    weight.grad = torch.ones(4, 3)
    optimizer = torch.optim.Muon([weight])
    params, grads, buffers = library_internals.muon_group_state(optimizer, optimizer.param_groups[0])
    assert params == [weight] and grads[0] is weight.grad
    assert buffers[0] is optimizer.state[weight]["momentum_buffer"] and buffers[0].shape == (4, 3)


def test_every_internal_is_tested_here():
    import inspect

    names = [
        n
        for n, f in inspect.getmembers(library_internals, inspect.isfunction)
        if f.__module__ == library_internals.__name__
    ]
    tested = inspect.getsource(inspect.getmodule(test_every_internal_is_tested_here))
    assert all(f"library_internals.{name}(" in tested for name in names), names
