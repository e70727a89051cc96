"""The memory planner: bytes per process by strategy, checked against what real processes hold
(tests/parallel_memory.py measures; `python -m tests.parallel_memory` prints the full comparison)."""

from __future__ import annotations

import pytest

from lightning_gpt.parallel.memory import GIB, largest_micro_batch, plan

from .parallel_memory import run

LLAMA3_8B = dict(
    family="llama",
    n_layer=32,
    n_embd=4096,
    n_head=32,
    n_kv_head=8,
    intermediate_size=14336,
    vocab_size=128256,
    block_size=8192,
    rope_theta=500000.0,
)
# ~6M parameters: small enough to measure twice per test on 2 cores
SMALL = dict(family="llama", n_layer=4, n_head=4, n_kv_head=2, n_embd=256, block_size=128, vocab_size=4096)


def test_each_strategy_divides_what_it_shards():
    ddp = plan(LLAMA3_8B, devices=8, strategy="ddp", precision="bf16-mixed")
    fsdp = plan(LLAMA3_8B, devices=8, strategy="fsdp", precision="bf16-mixed")
    tp = plan(LLAMA3_8B, devices=8, strategy="fsdp+tp", tensor_parallel_size=2, precision="bf16-mixed")
    hsdp = plan(LLAMA3_8B, devices=8, nodes=2, strategy="hsdp", data_parallel_replicate=2, precision="bf16-mixed")
    params = 8_030_261_248  # Llama 3 8B
    assert ddp.detail["weights"] == 4 * params  # fp32 master weights, whole
    assert ddp.detail["optimizer"] == 8 * params  # AdamW's two fp32 states
    assert fsdp.detail["weights"] == pytest.approx(4 * params / 8, rel=1e-4)  # FSDP2 rounds rows up
    assert tp.detail["weights"] == pytest.approx(fsdp.detail["weights"], rel=1e-3)  # 4 x 2 shards or 8
    assert hsdp.detail["weights"] == pytest.approx(fsdp.detail["weights"], rel=1e-4)  # 8 shards, 2 replicas
    assert tp.activations < fsdp.activations  # tensor parallelism splits the heads and hidden units
    muon = plan(LLAMA3_8B, devices=8, strategy="fsdp", precision="bf16-mixed", optimizer="muon")
    assert 0.5 * fsdp.detail["optimizer"] < muon.detail["optimizer"] < 0.7 * fsdp.detail["optimizer"]


def test_activation_checkpointing_and_bf16_true_shrink_what_they_should():
    full = plan(LLAMA3_8B, devices=8, strategy="fsdp", precision="bf16-mixed", micro_batch=1, block_size=4096)
    ac = plan(
        LLAMA3_8B,
        devices=8,
        strategy="fsdp",
        precision="bf16-mixed",
        micro_batch=1,
        block_size=4096,
        activation_checkpointing=True,
    )
    assert ac.activations < full.activations / 3  # the 128k-token logits stay: 9 of its 12 GB
    true = plan(LLAMA3_8B, devices=8, strategy="fsdp", precision="bf16-true")
    assert (
        true.detail["weights"] == full.detail["weights"] / 2
        and true.detail["optimizer"] == full.detail["optimizer"] / 2
    )


def test_the_largest_micro_batch_is_the_last_that_fits():
    settings = dict(devices=8, strategy="fsdp", precision="bf16-mixed", block_size=4096, activation_checkpointing=True)
    memory = 80 * GIB  # an 80 GB H100
    best = largest_micro_batch(LLAMA3_8B, memory, **settings)
    assert best >= 1
    assert plan(LLAMA3_8B, micro_batch=best, **settings).total <= 0.9 * memory
    assert plan(LLAMA3_8B, micro_batch=best + 1, **settings).total > 0.9 * memory
    assert largest_micro_batch(LLAMA3_8B, 16 * GIB, devices=1, precision="bf16-mixed") == 0  # 8B on one 16 GB card


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(strategy="zero3"), "strategy must be one of ddp, fsdp, fsdp\\+tp, hsdp"),
        (dict(precision="fp8"), "precision must be one of"),
        (dict(strategy="fsdp+tp", devices=4, tensor_parallel_size=3), "must divide the model's n_head"),
        (dict(strategy="fsdp+tp", devices=6, tensor_parallel_size=4), "must divide"),
    ],
)
def test_settings_that_cannot_work_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        plan(LLAMA3_8B, **settings)


@pytest.mark.slow
def test_one_process_estimate_matches_what_torch_holds(tmp_path):
    """Weights, gradients and AdamW states counted from the real tensors; activations as the growth of the
    peak resident memory from 4 to 8 sequences (tests/parallel_memory.py)."""
    settings = dict(model=SMALL, micro_batch=4, tracker=False)
    small, double = run(settings)[0], run({**settings, "micro_batch": 8})[0]
    estimate = plan(SMALL, micro_batch=4)
    for key in ("weights", "gradients", "optimizer"):
        assert small[key] == pytest.approx(estimate.detail[key], rel=0.01), key
    assert double["rss_peak"] - small["rss_peak"] == pytest.approx(estimate.activations, rel=0.15)


@pytest.mark.slow
def test_fsdp_on_2_processes_stores_half_of_everything():
    measured = run(dict(model=SMALL, micro_batch=4, strategy="fsdp", tracker=False), 2)
    estimate = plan(SMALL, devices=2, strategy="fsdp", micro_batch=4)
    for rank in measured:
        for key in ("weights", "gradients", "optimizer"):
            assert rank[key] == pytest.approx(estimate.detail[key], rel=0.15), key
