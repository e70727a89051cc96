"""Optimizers and schedules: Muon with AdamW as one optimizer, warmup-stable-decay, and the stop at a target loss."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_gpt.models import build
from lightning_gpt.optim import MuonWithAdamW, build_optimizer, cosine_lr, param_groups, schedule, wsd_lr
from lightning_gpt.schema import OptimConfig

from .support.config import TINY, TINY_SHAKESPEARE
from .support.runs import read_metrics

SMALL = dict(family="llama", block_size=16, vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, multiple_of=16)


def steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, count: int, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        x = torch.randint(0, 50, (4, 16), generator=generator)
        model(x, x.roll(-1, 1))[1].backward()
        optimizer.step()
        optimizer.zero_grad()


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = build({**SMALL, "mlp": "relu2"})
    groups = param_groups(model, OptimConfig(name="muon", decay_steps=10))
    muon, decay, no_decay = groups
    assert muon["muon"] and not decay["muon"] and not no_decay["muon"]
    assert {id(p) for p in muon["params"]} == {id(p) for p in model.hidden_matrices()}
    assert len(muon["params"]) == 2 * (4 + 2)  # q, k, v, o and up, down per layer (relu2 has no gate)
    assert {id(p) for p in decay["params"]} == {id(model.model.embed_tokens.weight), id(model.lm_head.weight)}
    assert (muon["lr"], decay["lr"], no_decay["weight_decay"]) == (0.02, 1e-3, 0.0)
    plain = param_groups(model, OptimConfig(decay_steps=10))  # AdamW: the two groups it always had
    assert [len(g["params"]) for g in plain] == [len(decay["params"]) + len(muon["params"]), len(no_decay["params"])]


def test_our_muon_step_is_torchs_with_float32_orthogonalization():
    """Torch's Muon orthogonalizes in bfloat16; ours in float32 on CPUs. Their updates agree to bf16's precision."""
    torch.manual_seed(0)
    ours = build(SMALL)
    theirs = copy.deepcopy(ours)
    before = [p.detach().clone() for p in ours.parameters()]
    o = OptimConfig(name="muon", decay_steps=10)
    steps(ours, build_optimizer(ours, o, fused=False), 1)
    matrices = list(theirs.hidden_matrices())
    steps(theirs, torch.optim.Muon(matrices, lr=o.muon_lr, momentum=o.muon_momentum, weight_decay=o.weight_decay), 1)
    is_matrix = {id(p) for p in ours.hidden_matrices()}
    for start, a, b in zip(before, ours.parameters(), theirs.parameters()):
        if id(a) in is_matrix:
            ours_update, their_update = (a - start).flatten(), (b - start).flatten()
            assert torch.cosine_similarity(ours_update, their_update, 0) > 0.98  # 0.989 for the worst-conditioned
            assert ours_update.norm().item() == pytest.approx(their_update.norm().item(), rel=0.05)


def test_muon_with_adamw_resumes_exactly_from_its_state_dict():
    torch.manual_seed(0)
    model = build(SMALL)
    o = OptimConfig(name="muon", decay_steps=10)
    optimizer = build_optimizer(model, o, fused=True)
    assert isinstance(optimizer, MuonWithAdamW)
    steps(model, optimizer, 2)
    saved_model, saved_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    steps(model, optimizer, 3, seed=1)
    again = build(SMALL)
    again.load_state_dict(saved_model)
    resumed = build_optimizer(again, o, fused=True)
    resumed.load_state_dict(saved_state)
    assert resumed.muon.state is resumed.state and resumed.muon.param_groups[0] is resumed.param_groups[0]
    steps(again, resumed, 3, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def test_warmup_stable_decay_holds_then_decays_linearly():
    lr = [wsd_lr(s, 1.0, 0.1, warmup_steps=10, decay_steps=100, cooldown_frac=0.4) for s in range(120)]
    assert lr[0] == pytest.approx(1 / 11) and lr[9] == pytest.approx(10 / 11)
    assert lr[10:60] == [1.0] * 50  # stable until 60% of decay_steps
    assert lr[80] == pytest.approx(0.55) and lr[100:] == [pytest.approx(0.1)] * 20
    factor = schedule(OptimConfig(lr=2e-3, min_lr=2e-4, warmup_steps=10, decay_steps=100, schedule="wsd"))
    assert [factor(s) for s in range(120)] == pytest.approx(lr)  # a multiple of each group's own rate
    cosine = schedule(OptimConfig(lr=2e-3, min_lr=2e-4, warmup_steps=10, decay_steps=100))
    assert cosine(50) * 2e-3 == pytest.approx(cosine_lr(50, 2e-3, 2e-4, 10, 100))


@pytest.mark.slow
def test_a_muon_run_learns_and_resumes_exactly(lgpt_train, tmp_path, capsys):
    """optim=muon with the wsd schedule through the real Trainer: 16 steps at once, or 8 and then 8 more."""
    args = [
        *TINY,
        "model=llama_baby",
        *TINY[:4],
        "optim=muon",
        "optim.schedule=wsd",
        "optim.warmup_steps=2",
        "optim.decay_steps=16",
        "data=local",
        f"data.path={TINY_SHAKESPEARE}",
        "trainer.val_check_interval=8",
        "trainer.log_every_n_steps=1",
    ]
    lgpt_train(*args, "trainer.max_steps=16", run_dir=tmp_path / "once")
    lgpt_train(*args, "trainer.max_steps=8", run_dir=tmp_path / "twice")
    lgpt_train(*args, "trainer.max_steps=16", "ckpt_path=auto", run_dir=tmp_path / "twice")
    once, twice = (
        torch.load(tmp_path / r / "checkpoints" / "last.ckpt", weights_only=False) for r in ("once", "twice")
    )
    assert all(torch.equal(once["state_dict"][k], twice["state_dict"][k]) for k in once["state_dict"])
    assert once["optimizer_states"][0]["param_groups"][0]["muon"]
    lgpt_train(
        f"ckpt_path={tmp_path / 'once'}", "optim.name=adamw", "trainer.max_steps=20", run_dir=tmp_path / "a", code=2
    )
    assert "resume with the optimizer it was trained with" in capsys.readouterr().err
    rows = read_metrics(tmp_path / "once")
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses[-1] < losses[0] - 0.3
    assert {"train/lr/muon", "train/lr/adamw"} <= rows[0].keys()


@pytest.mark.slow
@pytest.mark.parametrize(("monitor", "target"), [("val/loss", 3.3), ("val/bpb", 4.8)])
def test_stop_at_loss_ends_the_run_at_the_first_validation_at_the_target(lgpt_train, tmp_path, capsys, monitor, target):
    lgpt_train(
        *TINY,
        "data=local",
        f"data.path={TINY_SHAKESPEARE}",
        "callbacks=[default,stop_at_loss]",
        f"callbacks.stop_at_loss.target={target}",
        f"callbacks.stop_at_loss.monitor={monitor}",
        "optim.lr=1e-2",
        "optim.warmup_steps=0",
        "trainer.max_steps=200",
        "trainer.val_check_interval=5",
    )
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    step = ckpt["global_step"]
    assert 5 <= step < 200 and step % 5 == 0
    rows = read_metrics(tmp_path / "run")
    val = {int(r["step"]) + 1: float(r[monitor]) for r in rows if r.get(monitor)}  # csv: the step's index
    assert val[step] <= target and all(v > target for s, v in val.items() if s < step) and len(val) > 1
    [reached] = [r for r in rows if r.get("target/tokens")]
    assert int(float(reached["target/tokens"])) == step * 8 * 32 and float(reached["target/seconds"]) > 0
    console = capsys.readouterr().out
    assert f"Reached {monitor} {val[step]:.4f} <= {target} at step {step}: " in console
    assert f"{step * 8 * 32:,} tokens" in console


@pytest.mark.slow  # a launch that builds the data and model: over a second
def test_stop_at_loss_monitors_val_loss_or_val_bpb_only(lgpt_train, capsys):
    lgpt_train(*TINY, "callbacks=[default,stop_at_loss]", "callbacks.stop_at_loss.monitor=val/ppl", code=2)
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("callbacks.stop_at_loss.monitor must be one of val/loss, val/bpb, got 'val/ppl'")
    )
