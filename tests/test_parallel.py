"""lightning_gpt.parallel: tensor parallelism, HSDP and the Lightning strategy reproduce one process's training.

The multi-process tests start real gloo processes on the CPU (tests/parallel_workers.py, tests/parallel_fit.py)
and compare losses, full gradients and weights with a one-process run of the same model on the same data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_gpt.models.gpt2.config import GPTConfig
from lightning_gpt.models.llama.config import LlamaConfig
from lightning_gpt.models.mamba.config import MambaConfig
from lightning_gpt.parallel.mesh import MeshSizes, mesh_sizes
from lightning_gpt.parallel.tensor import check_tensor_parallel

from .parallel_workers import LLAMA, batches, parallel_run, reference, spawn

ROOT = Path(__file__).resolve().parents[1]


def differences(run: dict, ref: dict) -> tuple[float, float, float]:
    """Largest absolute differences of (losses, gradients, weights) between a run and the reference."""
    loss = max(abs(a[0] - b[0]) for a, b in zip(run["losses"], ref["losses"]))
    grads = max((a[n] - b[n]).abs().max().item() for a, b in zip(run["grads"], ref["grads"]) for n in a)
    weights = max((run["weights"][n] - ref["weights"][n]).abs().max().item() for n in ref["weights"])
    return loss, grads, weights


# ---------------------------------------------------------------------------------------------------------
# Checks before anything is created


@pytest.mark.parametrize(
    "config, size, message",
    [
        (GPTConfig(n_layer=2, n_head=4, n_embd=32), 2, "needs the llama family: GPT-2's fused c_attn"),
        (MambaConfig(n_layer=2, n_embd=32), 2, "needs the llama family: Mamba has no attention heads"),
        (LlamaConfig(n_head=6, n_embd=48), 4, r"must divide the model's n_head \(6\)"),
        (LlamaConfig(n_head=4, n_kv_head=1, n_embd=32), 2, r"must divide the model's n_kv_head \(1\)"),
        (LlamaConfig(n_head=4, n_embd=32, intermediate_size=66), 4, r"must divide the model's MLP width \(66\)"),
        (LlamaConfig(n_head=4, n_embd=32), 0, "tensor_parallel_size must be a positive integer, got 0"),
    ],
)
def test_tensor_parallel_refuses_what_it_cannot_split(config, size, message):
    with pytest.raises(ValueError, match=message):
        check_tensor_parallel(config, size)


def test_tensor_parallel_of_size_one_takes_every_family():
    for config in (GPTConfig(), LlamaConfig(), MambaConfig()):
        check_tensor_parallel(config, 1)


def test_mesh_sizes_fill_the_shard_dimension_and_name_what_does_not_fit():
    assert mesh_sizes(8, 2, "auto", 2) == MeshSizes(2, 2, 2)
    assert mesh_sizes(4) == MeshSizes(1, 4, 1)  # plain FSDP
    with pytest.raises(ValueError, match=r"data_parallel_replicate \(1\) x tensor_parallel_size \(3\) = 3 must divide"):
        mesh_sizes(4, 1, "auto", 3)
    with pytest.raises(ValueError, match=r"= 8, but there are 4 processes \(devices x nodes\)"):
        mesh_sizes(4, 2, 2, 2)
    with pytest.raises(ValueError, match="data_parallel_replicate must be a positive integer, got 0"):
        mesh_sizes(4, 0)


def test_the_strategy_refuses_sizes_that_do_not_fit_before_any_process_group_exists():
    """In setup_environment, before the process group: for Trainers built outside lgpt-train (which checks
    earlier, before any folder: test_distributed.py)."""
    from .parallel_fit import strategy

    with pytest.raises(ValueError, match="tensor_parallel_size must be a positive integer, got 0"):
        strategy(tensor_parallel_size=0)
    tp3 = strategy(tensor_parallel_size=3)
    tp3.num_nodes, tp3.parallel_devices = 1, [torch.device("cpu")] * 4
    with pytest.raises(ValueError, match=r"tensor_parallel_size \(3\) = 3 must divide the number of processes \(4\)"):
        tp3.setup_environment()
    assert not torch.distributed.is_initialized()


def test_fsdp_saves_shards_from_a_billion_parameters_on_unless_told():
    """trainer=fsdp's save_distributed_checkpoint=auto: llama3_8b's 8.0B parameters shard, the baby's 0.8M do
    not (its file loads anywhere); true and false are kept as given."""
    from lightning_gpt.models import build
    from lightning_gpt.parallel.strategy import saves_shards

    with torch.device("meta"):
        big = build({"family": "llama", **read_preset("llama3_8b")})
        baby = build({"family": "llama", **read_preset("llama_baby"), "vocab_size": 65})
    assert (saves_shards("auto", big), saves_shards("auto", baby)) == (True, False)
    assert (saves_shards(True, baby), saves_shards(False, big)) == (True, False)


def read_preset(name: str) -> dict:
    from omegaconf import OmegaConf

    from .support.config import ROOT

    preset = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"), resolve=False)
    return {k: v for k, v in preset.items() if k not in ("defaults", "family") and not str(v).startswith("${")}


# ---------------------------------------------------------------------------------------------------------
# 4 processes against 1 (torch level)

# Measured on this machine (fp32, 3 AdamW steps with clipping): losses within 4.8e-7 (one float32 ulp at 4.6),
# gradients within 3e-7, weights within 3.7e-6 (AdamW divides by sqrt(v): tiny gradients' differences grow).
LOSS_TOL, GRAD_TOL, WEIGHT_TOL = 2e-6, 2e-6, 2e-5


@pytest.mark.slow
@pytest.mark.parametrize(
    "changes, options",
    [
        ({}, {"sequence_parallel": False}),
        # sequence parallel, per-head QK norms, a tied head, the ungated MLP
        ({"qk_norm": True, "tie_embeddings": True, "mlp": "relu2"}, {"sequence_parallel": True}),
    ],
    ids=["tp", "tp-sequence-parallel-qk-norm-tied"],
)
def test_tensor_parallel_2x2_trains_as_one_process(changes, options, tmp_path):
    """2 data-parallel x 2 tensor-parallel processes: the losses, the full gradients (after clipping) and the
    weights after 3 AdamW steps are one process's."""
    config = {**LLAMA, **changes}
    ref = reference(config, batches(config))
    runs = spawn(parallel_run, 4, tmp_path, config, (1, 2, 2), options)
    for run in runs:
        loss, grads, weights = differences(run, ref)
        assert loss <= LOSS_TOL and grads <= GRAD_TOL and weights <= WEIGHT_TOL, (loss, grads, weights)
        assert run["heads"] == [(2, 1)] * LLAMA["n_layer"]  # 4 query and 2 key/value heads, half each
    placements = runs[0]["placements"]
    assert placements["model.layers.0.self_attn.q_proj.weight"].endswith("Shard(dim=0))")  # columns across tp
    assert placements["model.layers.0.mlp.down_proj.weight"] == "(Shard(dim=0), Shard(dim=1))"  # rows across tp
    assert all(p.endswith("Replicate())") for n, p in placements.items() if "norm" in n)  # whole, on every tp peer


@pytest.mark.slow
def test_hsdp_2x2_trains_as_one_process(tmp_path):
    """Replicated across 2 groups, sharded within each: the same losses, gradients and weights as one process
    (and so as plain FSDP, which test_distributed and the Lightning test below compare with one process)."""
    ref = reference(LLAMA, batches(LLAMA))
    hsdp = spawn(parallel_run, 4, tmp_path / "hsdp", LLAMA, (2, 2, 1), {})
    assert hsdp[0]["placements"]["model.layers.0.self_attn.q_proj.weight"] == "(Replicate(), Shard(dim=0))"
    for run in hsdp:
        loss, grads, weights = differences(run, ref)
        assert loss <= LOSS_TOL and grads <= GRAD_TOL and weights <= WEIGHT_TOL, (loss, grads, weights)


# ---------------------------------------------------------------------------------------------------------
# A real lightning.Trainer starting 4 CPU processes


def fit(tmp_path: Path, name: str, **settings) -> list[dict]:
    """Run tests/parallel_fit.py (Lightning starts the other processes); what each process recorded."""
    out = tmp_path / name
    settings = {"out": str(out), "model": LLAMA, "max_steps": 3, "batch_size": 2, **settings}
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(settings))
    result = subprocess.run(
        [sys.executable, "-m", "tests.parallel_fit", str(out / "settings.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(settings.get("devices", 1))]


def assert_same_training(run: dict, ref: dict) -> None:
    assert run["losses"] == pytest.approx(ref["losses"], abs=LOSS_TOL)
    assert run["weights"].keys() == ref["weights"].keys()
    for name, weight in ref["weights"].items():
        assert torch.allclose(run["weights"][name], weight, atol=WEIGHT_TOL), name
    for name, state in ref["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.allclose(run["optimizer"]["state"][name][key], value, atol=WEIGHT_TOL), (name, key)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    """Our GPTLightningModule trained by a one-process Trainer on the 4 sequences per step that the parallel
    runs split between their 2 data-parallel groups."""
    root = tmp_path_factory.mktemp("one")
    return {**fit(root, "one", batch_size=4, checkpoints=3)[0], "last": root / "one" / "checkpoints" / "last.ckpt"}


@pytest.mark.slow
def test_the_lightning_strategy_on_4_cpu_processes_trains_as_one_process(one_process, tmp_path):
    """Lightning starts the processes, the strategy builds the mesh (HSDP: 2 replicas x 2 shards), our module
    parallelizes itself in configure_model, Lightning's loop clips and steps: the losses, weights and AdamW
    states are one process's. (Tensor parallelism through Lightning: test_parallel_checkpoint's 2 x 2 run and
    test_distributed's fsdp_tp run; against one process at torch level above.)"""
    strategy = {"data_parallel_replicate": 2}
    runs = fit(tmp_path, "parallel", devices=4, strategy=strategy, batch_size=1, checkpoints=3)
    assert all(run["world"] == 4 for run in runs)
    assert all(run["losses"] == pytest.approx(one_process["losses"], abs=LOSS_TOL) for run in runs)
    assert_same_training(runs[0], one_process)  # the full weights and optimizer state, gathered on process 0
    # Its one-file checkpoint is a one-process checkpoint: optimizer states at the same positions.
    ours, one = (
        torch.load(p, weights_only=True) for p in (tmp_path / "parallel/checkpoints/last.ckpt", one_process["last"])
    )
    assert ours["state_dict"].keys() == one["state_dict"].keys()
    mine, theirs = ours["optimizer_states"][0], one["optimizer_states"][0]
    assert [g["params"] for g in mine["param_groups"]] == [g["params"] for g in theirs["param_groups"]]
    for i, state in theirs["state"].items():
        assert all(torch.allclose(mine["state"][i][k], v, atol=WEIGHT_TOL) for k, v in state.items()), i
