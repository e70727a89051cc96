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


def test_muons_newton_schulz_is_torchs_own():
    import torch

    from lightning_gpt.optim.muon import orthogonalize

    g = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    coefficients = torch.optim.Muon([torch.nn.Parameter(g)]).defaults["ns_coefficients"]
    theirs = library_internals.muon_newton_schulz(g, coefficients, 5, 1e-7)  # bfloat16 inside
    ours = orthogonalize(g, coefficients, 5, 1e-7)
    assert theirs.shape == g.shape and torch.allclose(theirs.float(), ours, atol=0.05)


def test_a_process_group_started_as_lightning_starts_it_and_a_flattened_mesh(monkeypatch):
    import lightning as L
    import torch.distributed as dist
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.distributed.device_mesh import init_device_mesh

    for key in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(key, raising=False)  # set by Lightning's environment; restored afterwards
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=ModelParallelStrategy(), logger=False)
    library_internals.start_process_group(trainer.strategy)
    try:
        assert dist.is_initialized() and dist.get_world_size() == 1 and dist.get_backend() == "gloo"
        mesh = init_device_mesh("cpu", (1, 1), mesh_dim_names=("a", "b"))
        flat = library_internals.flatten_mesh(mesh["a", "b"], "ab")
        assert flat.ndim == 1 and flat.size() == 1 and mesh["ab"].mesh_dim_names == ("ab",)  # cached on the root
    finally:
        dist.destroy_process_group()


def test_activation_checkpointing_in_place_keeps_the_parameter_names():
    import torch

    block = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU(), torch.nn.Linear(4, 2))
    names = [n for n, _ in block.named_parameters()]
    library_internals.checkpoint_in_place(block)
    assert [n for n, _ in block.named_parameters()] == names
    block(torch.randn(3, 4)).sum().backward()
    assert all(p.grad is not None for p in block.parameters())


def test_a_dcp_folder_reads_whole_in_one_process(tmp_path):
    import torch
    import torch.distributed.checkpoint as dcp

    state = {"state_dict": {"w": torch.arange(6.0).view(2, 3)}, "optimizer_0": {"state": {"w": {"step": 3}}}}
    dcp.save(state, checkpoint_id=tmp_path, no_dist=True)
    assert torch.equal(library_internals.read_whole_dcp(str(tmp_path))["state_dict"]["w"], state["state_dict"]["w"])
    assert library_internals.read_whole_dcp(str(tmp_path), keys={"state_dict"}).keys() == {"state_dict"}
