"""Sharded (DCP) checkpoints: atomic saves that survive a kill, checks naming the damaged file, reading and
consolidating in one process, and resuming on another number of processes (DCP reshards)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_gpt.errors import UserError
from lightning_gpt.parallel.checkpoint import (
    ShardedCheckpointWriter,
    consolidate,
    linked_data,
    optimizer_state_by_index,
    optimizer_state_by_name,
    read_model,
    read_sharded,
    remove_checkpoint,
    verify,
)

from .parallel_workers import LLAMA, load_run, reference_checkpoint, save_run, spawn
from .test_parallel import LOSS_TOL, fit

ROOT = Path(__file__).resolve().parents[1]


def checkpoint(step: int, size: int = 1000) -> dict:
    """A small checkpoint dict as Lightning hands it to the strategy (here whole tensors, one process)."""
    return {
        "state_dict": {"model.w": torch.full((size,), float(step)), "model.b": torch.arange(3.0)},
        "optimizer_states": [],
        "global_step": step,
        "hyper_parameters": {"model": {"family": "llama"}, "tokenizer": {"name": "byte"}},
    }


def assert_same_moments(state: dict, expected: dict) -> None:
    """Optimizer states (keyed by position or name) bitwise equal."""
    assert state.keys() == expected.keys()
    for key, values in expected.items():
        assert values.keys() == state[key].keys() and all(torch.equal(state[key][k], v) for k, v in values.items()), key


def data_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())


# ---------------------------------------------------------------------------------------------------------
# Names, links, atomic replacement (one process: DCP saves without a process group)


def test_a_checkpoint_name_links_to_a_data_folder_that_each_save_replaces(tmp_path):
    writer = ShardedCheckpointWriter()
    last = tmp_path / "last.ckpt"
    first = writer.save(checkpoint(1), last)
    assert last.is_symlink() and last.resolve() == first.resolve()
    assert sorted(p.name for p in first.iterdir()) == [".metadata", "__0_0.distcp", "manifest.json", "meta.pt"]
    second = writer.save(checkpoint(2), last)
    assert second != first and not first.exists()  # replaced, then the old data removed
    assert read_sharded(last)["global_step"] == 2
    assert data_folders(tmp_path) == [second]


def test_the_same_state_saved_under_two_names_is_written_once(tmp_path):
    """ModelCheckpoint saves step snapshots and last.ckpt at the same step: one data folder, two links."""
    writer = ShardedCheckpointWriter()
    snapshot = writer.save(checkpoint(4), tmp_path / "step004.ckpt")
    assert writer.save(checkpoint(4), tmp_path / "last.ckpt") == snapshot
    assert sorted(p.name for p in linked_data(tmp_path)[snapshot]) == ["last.ckpt", "step004.ckpt"]
    writer.save(checkpoint(6), tmp_path / "last.ckpt")  # last moves on; the snapshot keeps its data
    assert read_sharded(tmp_path / "step004.ckpt")["global_step"] == 4
    remove_checkpoint(tmp_path / "step004.ckpt")  # the top-k pruning of ModelCheckpoint
    assert not snapshot.exists() and len(data_folders(tmp_path)) == 1
    assert read_sharded(tmp_path / "last.ckpt")["global_step"] == 6


KEEP_SAVING = """
import sys, torch
from pathlib import Path
from lightning_gpt.parallel.checkpoint import ShardedCheckpointWriter
writer, step = ShardedCheckpointWriter(), int(sys.argv[2])
while True:
    step += 1
    w = torch.full((8_000_000,), float(step))  # 32 MB: a save takes a while
    writer.save({"state_dict": {"model.w": w}, "global_step": step}, Path(sys.argv[1]))
    print(step, flush=True)
"""


@pytest.mark.slow
def test_a_kill_during_a_sharded_save_leaves_the_previous_checkpoint_whole(tmp_path):
    """SIGKILL a process while it writes a new data folder (seen on disk, not yet linked): last.ckpt still
    reads whole, at the last step the process reported; the next save removes the half-written folder."""
    last = tmp_path / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    step = 0
    for _ in range(2):
        proc = subprocess.Popen(
            [sys.executable, "-c", KEEP_SAVING, str(last), str(step)], stdout=subprocess.PIPE, text=True, env=env
        )
        saved = int(proc.stdout.readline())  # one whole save
        deadline = time.monotonic() + 60
        while not any(p not in linked_data(tmp_path) for p in data_folders(tmp_path)):  # the next save began
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        saved = max([saved, *map(int, proc.stdout.read().split())])
        whole = read_sharded(last)  # verifies sizes and checksums first
        assert whole["global_step"] == saved and bool((whole["state_dict"]["model.w"] == saved).all())
        step = saved
    orphans = [p for p in data_folders(tmp_path) if p not in linked_data(tmp_path)]
    assert orphans  # the kills landed during saves
    ShardedCheckpointWriter().save(checkpoint(step + 1), last)
    assert data_folders(tmp_path) == [last.resolve()]


# ---------------------------------------------------------------------------------------------------------
# Checks: one line naming the file


@pytest.fixture
def saved(tmp_path) -> Path:
    last = tmp_path / "last.ckpt"
    ShardedCheckpointWriter().save(checkpoint(3, size=10_000), last)
    return last


def test_a_missing_shard_is_a_one_line_error_naming_it(saved):
    shard = saved.resolve() / "__0_0.distcp"
    shard.unlink()
    with pytest.raises(UserError, match=rf"incomplete: shard {shard} is missing; use another checkpoint"):
        verify(saved)


def test_a_truncated_shard_is_a_one_line_error_naming_it(saved):
    shard = saved.resolve() / "__0_0.distcp"
    size = shard.stat().st_size
    os.truncate(shard, size - 100)
    with pytest.raises(UserError, match=rf"damaged: shard {shard} is truncated \({size - 100} of \d+ bytes\)"):
        read_sharded(saved)


def test_a_changed_byte_fails_the_checksum_written_at_save_time(saved):
    shard = saved.resolve() / "__0_0.distcp"
    with open(shard, "r+b") as f:
        f.seek(shard.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(UserError, match=rf"corrupt: {shard} fails its checksum"):
        verify(saved)
    verify(saved, checksums=False)  # sizes alone cannot see it


def test_a_missing_index_or_a_dangling_name_is_named(saved):
    data = saved.resolve()
    (data / ".metadata").unlink()
    with pytest.raises(UserError, match=rf"incomplete: {data / '.metadata'} is missing"):
        verify(saved)
    remove_checkpoint(saved.with_name("other.ckpt"))  # nothing there: nothing to do
    os.symlink("gone.ckpt.0123456789abcdef", saved.with_name("dangling.ckpt"))
    with pytest.raises(UserError, match=r"dangling.ckpt is missing \(it links to gone.ckpt.0123456789abcdef"):
        verify(saved.with_name("dangling.ckpt"))


# ---------------------------------------------------------------------------------------------------------
# Optimizer positions


def test_optimizer_states_convert_between_names_and_positions_in_either_saved_order():
    """Positions count the optimizer's groups (torch's layout) or, in Lightning's full FSDP files, the model's
    parameters: the order whose shapes fit the saved moments is the one read."""
    shapes = {"a": (2, 3), "b": (3,), "c": (4, 3)}
    model_order, optimizer_order = ["a", "b", "c"], ["b", "a", "c"]  # groups: [b] without decay, [a, c] with
    by_name = {
        "state": {n: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(shapes[n])} for n in shapes},
        "param_groups": [{"params": ["b"], "weight_decay": 0.0}, {"params": ["a", "c"], "weight_decay": 0.1}],
    }
    by_index = optimizer_state_by_index(by_name)
    assert [g["params"] for g in by_index["param_groups"]] == [[0], [1, 2]]
    assert by_index["state"][0]["exp_avg"].shape == (3,)  # position 0 is b
    assert optimizer_state_by_name(by_index, optimizer_order, model_order, shapes)["state"].keys() == shapes.keys()
    back = optimizer_state_by_name(by_index, optimizer_order, model_order, shapes)
    assert all(back["state"][n]["exp_avg"].shape == shapes[n] for n in shapes)
    lightning_fsdp = {  # model order, groups' positions sorted, as FSDP.rekey_optim_state_dict writes
        "state": {i: by_name["state"][n] for i, n in enumerate(model_order)},
        "param_groups": [{"params": [1], "weight_decay": 0.0}, {"params": [0, 2], "weight_decay": 0.1}],
    }
    read = optimizer_state_by_name(lightning_fsdp, optimizer_order, model_order, shapes)
    assert all(read["state"][n]["exp_avg"].shape == shapes[n] for n in shapes)
    assert [g["params"] for g in read["param_groups"]] == [["b"], ["a", "c"]]


# ---------------------------------------------------------------------------------------------------------
# Several processes (torch level): read in one process, reshard on load


@pytest.fixture(scope="module")
def saved_by_4(tmp_path_factory) -> tuple[Path, list]:
    """2 AdamW steps of 2 data-parallel x 2 tensor-parallel processes, saved sharded; their full state."""
    root = tmp_path_factory.mktemp("by4")
    path = root / "checkpoints" / "last.ckpt"
    return path, spawn(save_run, 4, root / "out", LLAMA, (1, 2, 2), str(path), 2)


@pytest.mark.slow
def test_a_checkpoint_sharded_by_4_processes_reads_and_consolidates_in_one(saved_by_4, tmp_path):
    import lightning_gpt
    from lightning_gpt.checkpoints import load_checkpoint

    path, runs = saved_by_4
    weights, optimizer = runs[0]  # gathered whole by the 4 processes
    assert sorted(p.name for p in path.resolve().iterdir() if p.suffix == ".distcp") == [
        f"__{r}_0.distcp" for r in range(4)
    ]
    assert not torch.distributed.is_initialized()
    whole = read_sharded(path)
    assert whole["global_step"] == 2 and whole["hyper_parameters"]["model"] == LLAMA
    assert whole["state_dict"].keys() == weights.keys()
    assert all(torch.equal(whole["state_dict"][k], weights[k]) for k in weights)
    assert_same_moments(whole["optimizer_states"][0]["state"], optimizer_state_by_index(optimizer)["state"])
    # Keyed as one process's optimizer.state_dict(): the same moments at the same positions (the 1-process
    # training differs from the 4-process one by float rounding only).
    ref_weights, ref_optimizer = reference_checkpoint(LLAMA, 2)
    saved_state, ref_state = whole["optimizer_states"][0]["state"], ref_optimizer["state"]
    assert saved_state.keys() == ref_state.keys()
    for i, state in ref_state.items():
        for key, value in state.items():
            assert torch.allclose(saved_state[i][key], value, atol=1e-6), (i, key)
    assert [g["params"] for g in whole["optimizer_states"][0]["param_groups"]] == [
        g["params"] for g in ref_optimizer["param_groups"]
    ]
    # What lgpt-sample, lgpt-export and lgpt-eval read: the model alone, from the folder or a consolidated file.
    config, tokenizer, state = read_model(path)
    assert config == LLAMA and tokenizer == {"name": "byte"} and state.keys() == {k[6:] for k in weights}
    # One file from the folder: lgpt-export format=ckpt (through consolidate), a folder of its own, atomically.
    from lightning_gpt.apps.export import main as export

    assert export([f"ckpt_path={path}", f"out_dir={tmp_path / 'whole'}", "format=ckpt"]) == 0
    out = tmp_path / "whole" / "last.ckpt"
    assert load_checkpoint(out)["global_step"] == 2  # its zip checksums verify
    model, _ = lightning_gpt.load(tmp_path / "whole")  # the folder, as any tool's ckpt_path
    assert all(torch.equal(model.state_dict()[k[6:]], v) for k, v in weights.items())
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    assert export([f"ckpt_path={path}", f"out_dir={tmp_path / 'mine'}", "format=ckpt"]) == 2
    assert export([f"ckpt_path={path}", f"out_dir={tmp_path / 'x'}", "format=onnx"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "whole"]
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_a_checkpoint_of_4_processes_loads_into_2_exactly(saved_by_4, tmp_path):
    """Saved by 2 x 2 (data x tensor parallel), loaded into 2 FSDP processes: DCP reads for each process the
    pieces of its new shards; the weights and AdamW moments are bitwise the saved ones."""
    path, runs = saved_by_4
    weights, optimizer = runs[0]
    loaded_weights, loaded_optimizer, step = spawn(load_run, 2, tmp_path, LLAMA, (1, 2, 1), str(path))[0]
    assert step == 2
    assert all(torch.equal(loaded_weights[k], v) for k, v in weights.items())
    assert_same_moments(loaded_optimizer["state"], optimizer["state"])


@pytest.mark.slow
def test_a_checkpoint_of_2_processes_loads_into_4_exactly(tmp_path):
    """Saved by 2 FSDP processes, loaded into 2 x 2 HSDP (replicated x sharded) processes."""
    path = tmp_path / "checkpoints" / "last.ckpt"
    weights, optimizer = spawn(save_run, 2, tmp_path / "save", LLAMA, (1, 2, 1), str(path), 2)[0]
    loaded_weights, loaded_optimizer, _ = spawn(load_run, 4, tmp_path / "load", LLAMA, (2, 2, 1), str(path))[0]
    assert all(torch.equal(loaded_weights[k], v) for k, v in weights.items())
    assert_same_moments(loaded_optimizer["state"], optimizer["state"])


# ---------------------------------------------------------------------------------------------------------
# Through lightning.Trainer: sharded saves by ModelCheckpoint, a resume on another number of processes


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory) -> Path:
    """4 processes, 2 x 2 tensor parallel, 2 steps, a sharded checkpoint at step 2 (ModelCheckpoint)."""
    root = tmp_path_factory.mktemp("lightning")
    strategy = {"tensor_parallel_size": 2, "save_distributed_checkpoint": True}
    fit(root, "run", devices=4, strategy=strategy, max_steps=2, checkpoints=2)
    return root / "run" / "checkpoints"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    return fit(tmp_path_factory.mktemp("one"), "one", batch_size=4, max_steps=4)[0]


@pytest.mark.slow
def test_lightning_saves_sharded_checkpoints_atomically_and_resumes_them_on_2_processes(
    lightning_run, uninterrupted, tmp_path
):
    """The snapshot and last.ckpt link one data folder; a 2-process FSDP run resumes it with the saved weights
    and optimizer state exactly, and trains on as the uninterrupted one-process run."""
    last, snapshot = lightning_run / "last.ckpt", lightning_run / "step002.ckpt"
    assert last.is_symlink() and snapshot.is_symlink() and last.resolve() == snapshot.resolve()
    verify(last)
    saved = read_sharded(last)
    resumed = fit(tmp_path, "resumed", devices=2, strategy={}, max_steps=4, ckpt_path=str(last), record_start=True)
    weights, optimizer = resumed[0]["start"]
    assert all(torch.equal(weights[k], v) for k, v in saved["state_dict"].items())
    assert_same_moments(optimizer_state_by_index(optimizer)["state"], saved["optimizer_states"][0]["state"])
    assert resumed[0]["losses"] == pytest.approx(uninterrupted["losses"][2:], abs=LOSS_TOL)


@pytest.mark.slow
def test_a_consolidated_checkpoint_resumes_in_the_strategy_and_in_one_process(lightning_run, tmp_path):
    """One .ckpt file from the folder: the strategy's full-file loading (2 processes) and a plain one-process
    Trainer both restore the saved weights and moments, each at its parameter (positions in torch's order)."""
    out = consolidate(lightning_run / "last.ckpt", tmp_path / "consolidated.ckpt")
    saved = torch.load(out, weights_only=True)
    for name, settings in (("fsdp", {"devices": 2, "strategy": {}}), ("one", {"batch_size": 4})):
        run = fit(tmp_path, name, max_steps=3, ckpt_path=str(out), record_start=True, **settings)[0]
        weights, optimizer = run["start"]
        assert all(torch.equal(weights[k], v) for k, v in saved["state_dict"].items()), name
        assert_same_moments(optimizer_state_by_index(optimizer)["state"], saved["optimizer_states"][0]["state"])


# ---------------------------------------------------------------------------------------------------------
# What the tools read: lightning_gpt.checkpoints and the training callbacks, on sharded folders


def run_with_sharded_checkpoints(root: Path) -> tuple[Path, dict]:
    """A run folder's checkpoints/ with a step-2 snapshot and last.ckpt at step 4, sharded; the model's state."""
    import lightning_gpt.models as models

    config = {**LLAMA, "block_size": 8}
    model = models.build(config)
    writer = ShardedCheckpointWriter()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    for step, name in ((2, "step000002.ckpt"), (4, "last.ckpt")):
        saved = {"state_dict": dict(state), "optimizer_states": [], "global_step": step}
        saved["hyper_parameters"] = {"model": config, "tokenizer": {"name": "byte"}}
        writer.save(saved, root / "checkpoints" / name)
    return root, state


def test_every_tool_finds_and_reads_a_sharded_checkpoint_and_falls_back_from_a_damaged_one(tmp_path):
    import lightning_gpt
    from lightning_gpt.checkpoints import find_checkpoint, load_checkpoint, newest_whole_checkpoint, read_header
    from lightning_gpt.training.checkpoint_io import AtomicCheckpointIO

    run, state = run_with_sharded_checkpoints(tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    assert find_checkpoint(run) == last and find_checkpoint(last) == last
    assert read_header(last)["global_step"] == 4  # what a resume reads first: no tensors
    model, tokenizer = lightning_gpt.load(run)
    assert tokenizer.name == "byte" and all(torch.equal(model.state_dict()[k[6:]], v) for k, v in state.items())
    whole = AtomicCheckpointIO().load_checkpoint(last)  # a resume on one process or under DDP
    assert whole["global_step"] == 4 and whole["state_dict"].keys() == state.keys()
    shard = last.resolve() / "__0_0.distcp"
    os.truncate(shard, shard.stat().st_size // 2)
    assert newest_whole_checkpoint(run) == run / "checkpoints" / "step000002.ckpt"  # as for a damaged file
    with pytest.raises(UserError, match=rf"damaged: shard {shard} is truncated"):
        load_checkpoint(last)


def test_last_checkpoint_reads_a_folders_step_and_clears_what_killed_saves_left(tmp_path):
    import lightning as L

    from lightning_gpt.training.checkpoint_io import LastCheckpoint, _saved_step

    run, _ = run_with_sharded_checkpoints(tmp_path)
    folder = run / "checkpoints"
    assert _saved_step(folder / "last.ckpt") == 4 and _saved_step(folder / "gone.ckpt") is None
    half_written = folder / "last.ckpt.0123456789abcdef"  # a save killed before its link was made
    (half_written / "__0_0.distcp").parent.mkdir()
    (half_written / "__0_0.distcp").write_bytes(b"partial")
    trainer = L.Trainer(
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=folder)], logger=False, enable_progress_bar=False
    )
    LastCheckpoint().setup(trainer, None, "fit")
    assert not half_written.exists() and len(linked_data(folder)) == 2  # the snapshot and last.ckpt stay
