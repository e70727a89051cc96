"""The Mamba family: the parallel scan against the step-by-step recurrence, exact sizes, causality, the
recurrent cache, transformers parity both ways, and lgpt-train / resume / sample / export end to end."""

from __future__ import annotations

import csv
import math
from functools import partial
from pathlib import Path

import pytest
import torch
from transformers import MambaConfig as HFMambaConfig
from transformers import MambaForCausalLM

import lightning_gpt
from lightning_gpt.apps.train import main
from lightning_gpt.errors import UserError
from lightning_gpt.generation import generate
from lightning_gpt.hf import export, import_model
from lightning_gpt.models import build
from lightning_gpt.models.mamba.model import Mamba, MambaConfig, selective_scan
from lightning_gpt.tokenizers import build_tokenizer
from lightning_gpt.training.build import build_model_config, build_module

from .support.config import TINY_SHAKESPEARE, TINY_SHAKESPEARE_DATA, compose
from .support.processes import run_app

TINY = MambaConfig(block_size=32, vocab_size=50, n_layer=2, n_embd=32, d_state=8)


def sequential_scan(x, dt, A, B, C, D, h0):
    """The recurrence one position at a time: the reference the parallel scan must equal."""
    h, ys = h0, []
    for t in range(x.size(1)):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1) + D * x[:, t])
    return torch.stack(ys, dim=1), h


@pytest.mark.parametrize("T, chunk", [(1, 64), (2, 64), (7, 64), (64, 64), (100, 64), (257, 64), (100, 16), (45, 8)])
def test_the_parallel_scan_equals_the_sequential_recurrence_forward_and_backward(T, chunk):
    """Within a chunk, odd lengths at every halving round (100 -> 50 -> 25 -> 12 -> ...); across chunks, the
    state carried over, T not a multiple of the chunk, and a state h0 carried in from before."""
    g = torch.Generator().manual_seed(T)
    batch, d, n = 2, 6, 5
    inputs = [
        torch.randn(batch, T, d, generator=g),  # x
        2 * torch.rand(batch, T, d, generator=g),  # dt > 0
        -torch.arange(1.0, n + 1).expand(d, n) * torch.rand(d, 1, generator=g),  # A < 0
        torch.randn(batch, T, n, generator=g),  # B
        torch.randn(batch, T, n, generator=g),  # C
        torch.randn(d, generator=g),  # D
        torch.randn(batch, d, n, generator=g),  # h0
    ]
    inputs = [t.clone().requires_grad_() for t in inputs]
    weights = torch.randn(batch, T, d, generator=g), torch.randn(batch, d, n, generator=g)
    results = []
    for scan in (partial(selective_scan, chunk=chunk), sequential_scan):
        y, h = scan(*inputs)
        loss = (y * weights[0]).sum() + (h * weights[1]).sum()
        results.append((y, h, *torch.autograd.grad(loss, inputs)))
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_the_scan_stays_finite_however_large_the_steps():
    """Only decays in (0, 1] are multiplied: a step of 1000 forgets the past instead of overflowing."""
    x, B, C = torch.ones(1, 300, 2), torch.ones(1, 300, 3), torch.ones(1, 300, 3)
    dt = torch.full((1, 300, 2), 1000.0)
    y, h = selective_scan(x, dt, -torch.ones(2, 3), B, C, torch.zeros(2))
    assert torch.isfinite(y).all() and torch.allclose(h, torch.full((1, 2, 3), 1000.0))


def preset(name: str, tokenizer) -> Mamba:
    with torch.device("meta"):
        return build(build_model_config(compose("train", f"model={name}"), tokenizer))


def test_presets_have_exact_parameter_counts():
    """mamba_130m as transformers counts state-spaces/mamba-130m-hf; mamba_baby beside nanogpt_baby's 809,856."""
    model = preset("mamba_130m", build_tokenizer("gpt2"))
    assert model.num_params(non_embedding=False) == 129_135_360
    assert model.num_params() == 129_135_360 - 50_280 * 768  # without the (tied) token table
    assert model.config.d_inner == 1536 and model.config.time_step_rank == 48
    baby = preset("mamba_baby", build_tokenizer("char", [TINY_SHAKESPEARE.read_text()]))
    assert baby.num_params(non_embedding=False) == 824_704
    assert baby.lm_head.weight is baby.embeddings.weight


def test_keys_of_another_family_are_refused():
    with pytest.raises(UserError, match="model.n_head is not a setting of the mamba model family"):
        build_model_config(compose("train", "model=mamba_baby", "+model.n_head=4"), build_tokenizer("byte"))
    with pytest.raises(UserError, match="model.dt_min and model.dt_max must satisfy"):
        build_model_config(compose("train", "model=mamba_baby", "model.dt_min=0.5"), build_tokenizer("byte"))


def test_initialisation_and_weight_decay_follow_mamba():
    torch.manual_seed(0)
    model = Mamba(TINY)
    mixer = model.blocks[0].mixer
    assert torch.allclose(-mixer.A_log.exp(), -torch.arange(1.0, 9.0).expand(64, 8))  # S4D-real: A = -1 .. -N
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)  # the initial step sizes
    assert TINY.dt_min * 0.999 <= dt.min() and dt.max() <= TINY.dt_max * 1.001
    decay, no_decay = model.optimizer_groups(0.1)
    assert any(p is mixer.A_log for p in no_decay["params"]) and not any(p is mixer.A_log for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_changing_future_tokens_leaves_past_logits_unchanged():
    torch.manual_seed(0)
    model = Mamba(TINY).eval()
    idx = torch.randint(0, 50, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % 50
    with torch.no_grad():
        a, b = model(idx)[0], model(changed)[0]
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6) and not torch.allclose(a[:, 12:], b[:, 12:])


def test_cached_generation_equals_uncached_and_its_state_never_grows():
    torch.manual_seed(0)
    model = Mamba(TINY).eval()
    prompt = torch.randint(0, 50, (3, 10))
    cached = torch.cat(list(generate(model, prompt, 25, temperature=0)), dim=1)
    uncached = torch.cat(list(generate(model, prompt, 25, temperature=0, use_cache=False)), dim=1)
    assert torch.equal(cached, uncached)

    cache = model.new_cache(3, prompt.device, torch.float32)
    assert cache.capacity is None  # nothing to rebuild, ever

    def footprint() -> tuple[list[torch.Size], int]:
        tensors = cache.conv + cache.ssm
        return [t.shape for t in tensors], sum(t.untyped_storage().nbytes() for t in tensors)

    empty = footprint()
    assert empty[0][0] == (3, 64, 3) and empty[0][-1] == (3, 64, 8)  # (B, d_inner, d_conv - 1), (B, d_inner, N)
    expected = model.head(model.hidden_states(torch.cat((prompt, cached), 1)))[:, -26:]
    with torch.no_grad():
        steps = [model.head(model.hidden_states(prompt, cache))[:, -1:]]
        assert footprint() == empty
        for i in range(25):
            steps.append(model.head(model.hidden_states(cached[:, i : i + 1], cache)))
            assert footprint() == empty  # the same few numbers at any length, and nothing else kept
        model.hidden_states(torch.randint(0, 50, (3, 150)), cache)  # 150 more positions at once: 3 chunks
    assert cache.length == 185 and footprint() == empty
    assert torch.allclose(torch.cat(steps, 1), expected, atol=1e-5)


def random_hf_mamba(vocab_size: int = 101, **options) -> MambaForCausalLM:
    """A small transformers Mamba with every weight random (biases, norms and D included)."""
    torch.manual_seed(0)
    config = HFMambaConfig(
        vocab_size=vocab_size, hidden_size=32, state_size=8, num_hidden_layers=2, time_step_rank=5, **options
    )
    model = MambaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def max_logit_difference(ours: Mamba, theirs: MambaForCausalLM, vocab_size: int) -> float:
    """On the CPU, transformers runs its step-by-step reference path: the recurrence itself."""
    idx = torch.randint(0, vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (ours(idx)[0] - theirs(idx).logits).abs().max().item()


@pytest.mark.parametrize(
    "options", [{}, {"use_bias": True, "use_conv_bias": False, "tie_word_embeddings": False}], ids=["130m", "biases"]
)
def test_a_transformers_mamba_imports_with_the_same_logits(tmp_path, options):
    theirs = random_hf_mamba(**options)
    theirs.save_pretrained(tmp_path)
    ours = import_model(str(tmp_path))
    assert ours.config.bias == options.get("use_bias", False) and ours.config.time_step_rank == 5
    assert max_logit_difference(ours, theirs, 101) < 1e-4


@pytest.mark.parametrize(
    "config",
    [TINY, MambaConfig(block_size=32, vocab_size=50, vocab_multiple=64, n_layer=2, n_embd=24, tie_embeddings=False)],
    ids=["tied", "untied-padded"],
)
def test_our_mamba_exports_to_transformers_with_the_same_logits(tmp_path, config):
    torch.manual_seed(0)
    ours = Mamba(config).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    export(ours, None, tmp_path)
    theirs, info = MambaForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert max_logit_difference(ours, theirs.eval(), 50) < 1e-4
    assert max_logit_difference(import_model(str(tmp_path)), theirs, 50) < 1e-4  # and back


def test_an_unsupported_transformers_mamba_is_a_clear_error(tmp_path):
    random_hf_mamba(hidden_act="gelu").save_pretrained(tmp_path)
    with pytest.raises(UserError, match="is not a Mamba model we can load: hidden_act is 'gelu', not silu"):
        import_model(str(tmp_path))


@pytest.mark.slow
def test_fine_tuning_starts_from_a_local_transformers_mamba(tmp_path):
    theirs = random_hf_mamba(vocab_size=300)
    theirs.save_pretrained(tmp_path)
    cfg = compose("train", "model=pretrained", f"model.init_from={tmp_path}", "model.block_size=64", "tokenizer=byte")
    ours = build_module(cfg, build_tokenizer("byte")).model.eval()
    assert (ours.config.n_layer, ours.config.n_embd, ours.config.block_size) == (2, 32, 64)  # its shape, our context
    assert max_logit_difference(ours, theirs, 256) < 1e-4
    with pytest.raises(UserError, match="has 300 tokens, fewer than the gpt2 tokenizer's 50257"):
        build_module(compose("train", "model=pretrained", f"model.init_from={tmp_path}"), build_tokenizer("gpt2"))


TRAIN = [
    "model=mamba_baby",
    "model.n_layer=2",
    "model.n_embd=32",
    "model.block_size=32",
    "data.batch_size=8",
    "data.val_batches=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "trainer.val_check_interval=4",
    "optim.lr=3e-3",
    "optim.warmup_steps=2",
    "sample.max_new_tokens=20",
    *TINY_SHAKESPEARE_DATA,
]


def train(root: Path, cache_dir: Path, *overrides: str, resume: Path | None = None) -> Path:
    """A tiny mamba_baby trained in-process; with resume, that run continued (its own config) into root."""
    run = root / "run"
    common = [f"paths.root_dir={root}", f"hydra.run.dir={run}", f"paths.cache_dir={cache_dir}"]
    assert main([*common, *([f"ckpt_path={resume}"] if resume else TRAIN), *overrides]) == 0
    return run


@pytest.fixture(scope="module")
def mamba_run(tmp_path_factory, cache_dir) -> Path:
    return train(tmp_path_factory.mktemp("mamba"), cache_dir, "trainer.max_steps=12", "optim.decay_steps=12")


def train_losses(run: Path) -> list[float]:
    with open(run / "csv" / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.slow
def test_lgpt_train_mamba_learns(mamba_run):
    losses = train_losses(mamba_run)
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.3
    model, tokenizer = lightning_gpt.load(mamba_run)
    assert isinstance(model, Mamba) and model.config.n_layer == 2 and tokenizer.name == "char"


@pytest.mark.slow
def test_a_resumed_mamba_run_ends_where_the_uninterrupted_one_does(mamba_run, tmp_path, cache_dir):
    half = train(tmp_path / "half", cache_dir, "trainer.max_steps=8", "optim.decay_steps=12")
    resumed = train(tmp_path / "resumed", cache_dir, "trainer.max_steps=12", resume=half)
    a, b = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for r in (mamba_run, resumed))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert train_losses(resumed) == pytest.approx(train_losses(mamba_run)[8:], abs=1e-6)  # steps 8-11 only


@pytest.mark.slow
def test_mamba_trains_in_bf16_mixed_precision_with_clipping(tmp_path, cache_dir):
    """trainer=gpu's settings on the CPU: bf16 autocast around a float32 scan, fused AdamW, clipping."""
    grad_norms = "+callbacks.grad_norms._target_=tests.support.callbacks.RecordGradNorm"
    args = ["trainer=gpu", "trainer.accelerator=cpu", "trainer.gradient_clip_val=0.05", grad_norms]
    run = train(tmp_path, cache_dir, *args, "trainer.max_steps=4")
    norms = [float(line.split()[1]) for line in (run / "grad_norms.txt").read_text().splitlines()]
    assert norms and max(norms) <= 0.05 + 1e-6
    assert all(math.isfinite(loss) for loss in train_losses(run))


@pytest.mark.slow  # two processes: about a minute
def test_fsdp_with_activation_checkpointing_shards_each_mamba_block(tmp_path, cache_dir):
    grad_norms = "+callbacks.grad_norms._target_=tests.support.callbacks.RecordGradNorm"
    fsdp = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    paths = [f"paths.root_dir={tmp_path}", f"paths.cache_dir={cache_dir}", f"hydra.run.dir={tmp_path / 'run'}"]
    args = [*TRAIN, *fsdp, "trainer.strategy.activation_checkpointing=true", "trainer.max_steps=4", grad_norms]
    done = run_app("lightning_gpt.apps.train", *args, *paths)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DTensor" in (tmp_path / "run" / "grad_norms.txt").read_text()  # sharded parameters
    model, _ = lightning_gpt.load(tmp_path / "run")  # one full checkpoint, loadable anywhere
    assert isinstance(model, Mamba) and len(train_losses(tmp_path / "run")) == 4


def test_lgpt_sample_and_lgpt_export_of_a_mamba_run(mamba_run, tmp_path, capsys):
    from lightning_gpt.apps import export, sample

    assert sample.main([f"ckpt_path={mamba_run}", "max_new_tokens=30", "prompt=KING", "device=cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("KING") and len(out) > 30
    assert export.main([f"ckpt_path={mamba_run}", f"out_dir={tmp_path / 'hf'}"]) == 0
    theirs = MambaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ours, tokenizer = lightning_gpt.load(mamba_run)
    assert max_logit_difference(ours, theirs, tokenizer.vocab_size) < 1e-4
