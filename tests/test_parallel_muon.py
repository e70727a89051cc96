"""Muon whose orthogonalizations are shared out among processes steps as one process's Muon does,
under FSDP2, HSDP, DDP and tensor parallelism, orthogonalizes each matrix once, and resumes exactly."""

from __future__ import annotations

import pytest
import torch

from lightning_gpt.optim.muon import owners

from .parallel_workers import LLAMA, muon_reference, muon_run, spawn

STEPS = 3
# Measured (fp32, 3 steps of Muon + AdamW, lr 0.02 / 3e-3): losses within 4.8e-7, weights within 2.3e-7 (FSDP,
# DDP, HSDP), 3.9e-7 (tensor parallel), 5.0e-7 (3 processes, uneven shards).
TOL = 2e-6


def test_matrices_go_to_the_least_loaded_process_costliest_first():
    shapes = [(64, 32), (32, 32), (16, 32), (64, 32), (32, 64), (16, 32)]
    owner = owners(shapes, 2)
    cost = [m * n * min(m, n) for m, n in shapes]
    load = [sum(c for c, o in zip(cost, owner) if o == r) for r in (0, 1)]
    assert sorted(set(owner)) == [0, 1] and abs(load[0] - load[1]) <= max(cost)
    assert owners(shapes, 1) == [0] * len(shapes)
    assert owners(shapes, 8).count(0) == 1  # more processes than matrices: one each, some idle


@pytest.fixture(scope="module")
def one_process() -> dict:
    return muon_reference(LLAMA, STEPS)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fsdp", "ddp", "tp"])
def test_on_2_processes_it_steps_as_one_process_and_orthogonalizes_each_matrix_once(mode, one_process, tmp_path):
    """FSDP2 (gather to the owner, scatter back), DDP (the owner broadcasts), tensor parallel (assembled whole,
    the owner broadcasts): the same losses and weights as one process's MuonWithAdamW; each matrix is
    orthogonalized by one process per step; a state_dict saved mid-run resumes bitwise."""
    runs = spawn(muon_run, 2, tmp_path, LLAMA, mode, STEPS)
    for run in runs:
        assert run["losses"] == pytest.approx(one_process["losses"], abs=TOL)
        assert all(torch.allclose(run["weights"][n], w, atol=TOL) for n, w in one_process["weights"].items())
        assert all(torch.equal(run["resumed"][n], w) for n, w in run["weights"].items())
    counts = [run["orthogonalized"] for run in runs]
    assert sum(counts) == runs[0]["matrices"] * STEPS == 21 * STEPS and min(counts) > 0
    assert counts == [30, 33]  # balanced by cost: 3 layers x (q, k, v, o, gate, up, down)


@pytest.mark.slow
def test_uneven_shards_are_padded_for_the_gather_and_scatter(tmp_path):
    """3 FSDP processes split 32 rows as 11, 11, 10 (16 as 6, 6, 4)."""
    runs = spawn(muon_run, 3, tmp_path, LLAMA, "fsdp", STEPS, 6)
    reference = muon_reference(LLAMA, STEPS, 6)
    for run in runs:
        assert run["losses"] == pytest.approx(reference["losses"], abs=TOL)
        assert all(torch.allclose(run["weights"][n], w, atol=TOL) for n, w in reference["weights"].items())
    assert sum(run["orthogonalized"] for run in runs) == 21 * STEPS


@pytest.mark.slow
def test_under_hsdp_each_replica_group_orthogonalizes_each_matrix_once(one_process, tmp_path):
    """2 x 2 HSDP: processes (0, 1) and (2, 3) are the replica groups, each sharing out the matrices."""
    runs = spawn(muon_run, 4, tmp_path, LLAMA, "hsdp", STEPS)
    for run in runs:
        assert run["losses"] == pytest.approx(one_process["losses"], abs=TOL)
        assert all(torch.allclose(run["weights"][n], w, atol=TOL) for n, w in one_process["weights"].items())
    counts = [run["orthogonalized"] for run in runs]
    assert [counts[0] + counts[1], counts[2] + counts[3]] == [21 * STEPS, 21 * STEPS]


@pytest.mark.slow
def test_optim_muon_under_the_fsdp_strategy_trains_as_one_process_and_saves_its_momentum_sharded(tmp_path):
    """Our GPTLightningModule with optim=muon (Muon + AdamW) on 2 FSDP processes started by Lightning: the
    same losses and weights as one process's MuonWithAdamW; its sharded checkpoint holds every matrix's
    momentum whole when read back in one process."""
    from lightning_gpt.parallel.checkpoint import read_sharded

    from .test_parallel import fit

    optim = dict(name="muon", lr=3e-3, muon_lr=0.02, warmup_steps=0, decay_steps=100)
    one = fit(tmp_path, "one", batch_size=4, optim=optim)[0]
    strategy = {"save_distributed_checkpoint": True}
    runs = fit(tmp_path, "fsdp", devices=2, strategy=strategy, optim=optim, checkpoints=3)
    assert runs[0]["losses"] == pytest.approx(one["losses"], abs=TOL)
    assert all(torch.allclose(runs[0]["weights"][n], w, atol=TOL) for n, w in one["weights"].items())
    saved = read_sharded(tmp_path / "fsdp" / "checkpoints" / "last.ckpt")
    momenta = [s["momentum_buffer"] for s in saved["optimizer_states"][0]["state"].values() if "momentum_buffer" in s]
    assert len(momenta) == 21 and all(m.dim() == 2 and m.abs().sum() > 0 for m in momenta)
