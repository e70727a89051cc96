"""The Llama family: exact sizes, causality, grouped-query attention, cached generation, transformers parity
both ways, and a llama_baby run that trains, resumes exactly, samples and exports."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

import lightning_gpt
from lightning_gpt.apps.evaluate import evaluate
from lightning_gpt.apps.messages import describe
from lightning_gpt.apps.sample import write_samples
from lightning_gpt.errors import UserError
from lightning_gpt.generation import generate
from lightning_gpt.hf import export, import_model
from lightning_gpt.models import build
from lightning_gpt.models.llama.model import Llama, LlamaConfig, rotary_cos_sin
from lightning_gpt.tokenizers import build_tokenizer
from lightning_gpt.training.build import build_model_config

from .support.config import TINY, TINY_SHAKESPEARE, compose

CHAR = build_tokenizer("char", [TINY_SHAKESPEARE.read_text()])  # 65 characters
SMALL = LlamaConfig(block_size=16, vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, multiple_of=16)


def preset(name: str, *overrides: str) -> LlamaConfig:
    """A conf/model preset as lgpt-train composes it (char tokenizer), built into its family's config."""
    cfg = compose("train", f"model={name}", *overrides)
    return LlamaConfig(**build_model_config(cfg, CHAR))


@pytest.mark.parametrize(
    "name, total, without_embedding",
    [
        ("llama2_7b", 6_738_415_616, 6_607_343_616),  # transformers' counts of Llama-2-7b-hf, Llama-3-8B
        ("llama3_8b", 8_030_261_248, 7_504_924_672),
        ("llama_baby", 804_224, 795_904),  # nanoGPT's baby GPT: 809,856
    ],
)
def test_presets_have_exactly_the_original_parameter_counts(name, total, without_embedding):
    config = preset(name)
    with torch.device("meta"):  # no memory: shapes only
        model = Llama(config)
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == without_embedding  # all but the token table (the head is a layer)
    assert model.lm_head.weight is not model.model.embed_tokens.weight  # untied, as Llama


@pytest.mark.slow
def test_preset_shapes_and_the_intermediate_size_rule():
    assert preset("llama2_7b").hidden_dim == 11008  # 8/3 * 4096 = 10922, up to a multiple of 256
    llama3_rule = LlamaConfig(n_embd=4096, n_head=32, ffn_dim_multiplier=1.3, multiple_of=1024)
    assert llama3_rule.hidden_dim == 14336  # Llama 3 8B's
    c = preset("llama3_8b")
    assert (c.kv_heads, c.hidden_dim, c.rope_theta, c.block_size, c.vocab_size) == (8, 14336, 5e5, 8192, 128256)
    assert preset("llama_baby").hidden_dim == 384


@pytest.mark.slow
def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match=r"n_head \(6\) must be divisible by n_kv_head \(4\); try n_kv_head=3"):
        LlamaConfig(n_embd=48, n_head=6, n_kv_head=4)
    with pytest.raises(ValueError, match="n_kv_head must be between 1 and n_head"):
        LlamaConfig(n_head=4, n_embd=64, n_kv_head=8)
    with pytest.raises(ValueError, match="must be even for rotary"):
        LlamaConfig(n_embd=12, n_head=4)
    with pytest.raises(UserError, match=r"model.n_head \(6\) must be divisible by model.n_kv_head \(4\)"):
        preset("llama_baby", "model.n_embd=48", "model.n_head=6", "model.n_kv_head=4")
    with pytest.raises(Exception) as error:  # another family's key: refused as Hydra composes the config
        preset("llama_baby", "model.activation=gelu")
    assert describe(error.value).startswith("unknown config key 'model.activation' (valid keys: family, block_size")


def test_forward_is_causal_and_untrained_loss_is_near_uniform():
    torch.manual_seed(0)
    model = Llama(SMALL).eval()
    idx = torch.randint(0, 50, (2, 16))
    logits, loss = model(idx, targets=torch.randint(0, 50, (2, 16)))
    assert logits.shape == (2, 16, 50) and abs(loss.item() - math.log(50)) < 0.1
    changed = idx.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 50
    torch.testing.assert_close(model(changed)[0][:, :9], logits[:, :9])  # the past does not see the future
    assert not torch.allclose(model(changed)[0][:, 9:], logits[:, 9:])


@pytest.mark.parametrize("n_kv_head, per_layer_kv", [(4, 2 * 32 * 32), (2, 2 * 32 * 16), (1, 2 * 32 * 8)])
def test_grouped_and_multi_query_attention_store_only_the_shared_heads(n_kv_head, per_layer_kv):
    config = LlamaConfig(block_size=16, vocab_size=50, n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=32)
    model = Llama(config).eval()
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.weight.numel() + attn.v_proj.weight.numel() == per_layer_kv
    cache = model.new_cache(3, torch.device("cpu"), torch.float32)
    model.hidden_states(torch.randint(0, 50, (3, 5)), cache)
    assert cache.keys[1].shape == (3, n_kv_head, 16, 8) and cache.length == 5  # (B, n_kv_head, capacity, head_dim)


def test_initialisation_scales_the_residual_projections():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(block_size=64, vocab_size=1000, n_layer=8, n_head=4, n_embd=256))
    layer = model.model.layers[3]
    assert layer.mlp.gate_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for p in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight):
        assert p.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert torch.equal(layer.input_layernorm.weight, torch.ones(256))
    assert model.flops_per_token() == 6 * model.num_params(non_embedding=False) + 12 * 8 * 4 * 64 * 64


@pytest.mark.parametrize("qk_norm", [False, True])
def test_greedy_generation_is_the_same_with_and_without_the_cache_even_past_its_capacity(qk_norm):
    """A full cache restarts from the last half window (positions from 0 again): the same windows, recomputed
    without the cache, must pick the same tokens."""
    torch.manual_seed(0)
    model = Llama(LlamaConfig(**{**SMALL.to_dict(), "qk_norm": qk_norm})).eval()
    prompt = torch.randint(0, 50, (3, 5))
    cached = torch.cat(list(generate(model, prompt, 40, temperature=0, use_cache=True)), dim=1)
    assert torch.equal(cached[:, :11], torch.cat(list(generate(model, prompt, 11, temperature=0, use_cache=False)), 1))
    idx, window = prompt, prompt.size(1)  # the context the cached loop attends over, recomputed each step
    with torch.no_grad():
        for _ in range(40):
            next_token = model(idx[:, -window:])[0][:, -1].argmax(-1, keepdim=True)
            idx, window = torch.cat((idx, next_token), dim=1), window + 1
            window = window if window <= 16 else 8
    assert torch.equal(cached, idx[:, 5:])


def test_activation_checkpointing_of_each_block_gives_the_same_gradients():
    """What trainer.strategy.activation_checkpointing=true does to model.blocks (distributed.shard), on one
    process without FSDP: recomputing each block in backward changes no gradient."""
    from torch.distributed._composable import checkpoint

    torch.manual_seed(0)
    plain, recomputed = Llama(SMALL), Llama(SMALL)
    recomputed.load_state_dict(plain.state_dict())
    for block in recomputed.blocks:
        checkpoint(block)
    idx = torch.randint(0, 50, (2, 17))
    for model in (plain, recomputed):
        model(idx[:, :-1], idx[:, 1:])[1].backward()
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def random_llama(n_kv_head: int = 2, tied: bool = False, vocab_size: int = 97, positions: int = 24) -> LlamaForCausalLM:
    """A small transformers Llama with every weight random (norm gains included), GQA unless n_kv_head=4."""
    torch.manual_seed(0)
    config = HFLlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=n_kv_head,
        max_position_embeddings=positions,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def max_logit_difference(ours: Llama, theirs: LlamaForCausalLM, vocab_size: int = 97) -> float:
    idx = torch.randint(0, vocab_size, (3, ours.config.block_size), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (ours(idx)[0] - theirs(idx).logits).abs().max().item()


@pytest.mark.parametrize("n_kv_head, tied", [(4, False), (2, False), (1, True)], ids=["mha", "gqa", "mqa-tied"])
def test_a_transformers_llama_imports_with_the_same_logits(tmp_path, n_kv_head, tied):
    theirs = random_llama(n_kv_head, tied)
    theirs.save_pretrained(tmp_path)
    ours = import_model(str(tmp_path))
    c = ours.config
    assert (c.family, c.kv_heads, c.hidden_dim, c.rope_theta, c.tie_embeddings) == ("llama", n_kv_head, 96, 5e3, tied)
    assert max_logit_difference(ours, theirs) < 1e-4
    assert import_model(str(tmp_path), block_size=16).config.block_size == 16  # a cropped context


@pytest.mark.parametrize(
    "shape",
    [dict(n_kv_head=2), dict(n_kv_head=1, tie_embeddings=True, vocab_multiple=64), dict(intermediate_size=72)],
    ids=["gqa", "mqa-tied-padded-vocab", "mha-explicit-width"],
)
def test_our_llama_exports_to_transformers_with_the_same_logits(tmp_path, shape):
    torch.manual_seed(0)
    ours = Llama(LlamaConfig(block_size=24, vocab_size=97, n_layer=2, n_head=4, n_embd=64, rope_theta=777.0, **shape))
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    export(ours.eval(), build_tokenizer("byte"), tmp_path)
    theirs, info = LlamaForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert max_logit_difference(ours, theirs.eval()) < 1e-4
    assert max_logit_difference(import_model(str(tmp_path)), theirs) < 1e-4  # and back


def test_what_transformers_llama_cannot_hold_or_we_cannot_load_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="transformers. Llama has no QK-norm"):
        export(Llama(LlamaConfig(**{**SMALL.to_dict(), "qk_norm": True})), None, tmp_path / "out")
    with pytest.raises(UserError, match="a model with mlp=relu2 cannot be exported"):
        export(Llama(LlamaConfig(**{**SMALL.to_dict(), "mlp": "relu2"})), None, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before writing anything
    theirs = random_llama()
    theirs.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    bad = {
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0},
        "mlp_bias": True,
        "hidden_act": "gelu",
    }
    for key, value in bad.items():
        (tmp_path / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(UserError, match="is not a Llama model we can load") as e:
            import_model(str(tmp_path))
        assert "\n" not in str(e.value)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"97 tokens, not 50257\): its tokenizer is unknown"):
        lightning_gpt.read_checkpoint(tmp_path)


# ---------------------------------------------------------------------------------------------------
# lgpt-train model=llama_baby, end to end (in process, a tiny shape)

DATA = ["data=local", f"data.path={TINY_SHAKESPEARE}"]
LLAMA_TINY = [
    "model=llama_baby",
    *[o for o in TINY if not o.startswith("model.")],
    "model.n_layer=2",
    "model.n_embd=32",
    "model.block_size=32",
    "model.dropout=0.1",  # resuming must restore the dropout RNG too
    *DATA,
    "optim.lr=1e-2",  # a visible fall in 12 steps
    "optim.warmup_steps=2",
    "optim.decay_steps=12",  # the whole run's schedule, also in its first half
    "trainer.log_every_n_steps=1",
    "trainer.val_check_interval=6",
]


def logged(run: Path, key: str) -> dict[int, float]:
    with open(run / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


def train_losses(run: Path) -> dict[int, float]:
    return logged(run, "train/loss")


def val_losses(run: Path) -> list[float]:
    return [loss for _, loss in sorted(logged(run, "val/loss").items())]


@pytest.mark.slow
def test_llama_baby_trains_resumes_exactly_samples_and_exports(lgpt_train, tmp_path):
    lgpt_train(*LLAMA_TINY, "trainer.max_steps=12", run_dir=tmp_path / "whole")
    lgpt_train(*LLAMA_TINY, "trainer.max_steps=6", run_dir=tmp_path / "half")
    lgpt_train(f"ckpt_path={tmp_path / 'half'}", "trainer.max_steps=12", run_dir=tmp_path / "resumed")
    whole, resumed = train_losses(tmp_path / "whole"), train_losses(tmp_path / "resumed")
    assert whole[11] < whole[0] - 0.3  # it learns
    assert sorted(resumed) == list(range(6, 12)) and resumed == {s: whole[s] for s in resumed}  # exactly

    # lgpt-eval on the same 16 validation windows reproduces the last validation loss
    args = [f"paths.output_dir={tmp_path / 'eval'}", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false"]
    result = evaluate(compose("eval", f"ckpt_path={tmp_path / 'resumed'}", *args, "windows=16", *DATA))
    assert result["loss"] == pytest.approx(val_losses(tmp_path / "whole")[-1], abs=1e-4)

    model, tokenizer = lightning_gpt.load(tmp_path / "resumed")
    assert model.config.family == "llama" and model.config.kv_heads == 2 and tokenizer.name == "char"
    sample = ["device=cpu", "prompt=KING", "temperature=0", "max_new_tokens=40"]  # past the 32-token context
    [text] = write_samples(compose("sample", f"ckpt_path={tmp_path / 'resumed'}", *sample), io.StringIO())
    tokens = torch.cat(list(generate(model, torch.tensor([tokenizer.encode("KING")]), 40, temperature=0)), dim=1)
    assert text == "KING" + tokenizer.decode(tokens[0].tolist())

    from lightning_gpt.apps import export

    assert export.main([f"ckpt_path={tmp_path / 'resumed'}", f"out_dir={tmp_path / 'hf'}"]) == 0
    theirs = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert max_logit_difference(model, theirs, vocab_size=tokenizer.vocab_size) < 1e-4

    from lightning_gpt.apps import explain

    assert explain.main([f"ckpt_path={tmp_path / 'resumed'}", "prompt=KING"]) == 0
    assert (tmp_path / "resumed" / "explain.html").is_file()


@pytest.mark.slow
def test_fine_tuning_starts_from_transformers_llama_weights(lgpt_train, tmp_path):
    theirs = random_llama(vocab_size=65, positions=64)  # the char vocabulary's size
    theirs.save_pretrained(tmp_path / "hf")
    tiny = [o for o in LLAMA_TINY if not o.startswith("model") or o.startswith("model.block_size")]
    overrides = [
        *tiny,
        "model=pretrained",
        f"model.init_from={tmp_path / 'hf'}",
        "trainer.max_steps=1",
        "optim.lr=1e-9",
        "optim.min_lr=0",
    ]
    lgpt_train(*overrides, "tokenizer=char")
    config, _, state = lightning_gpt.read_checkpoint(tmp_path / "run")
    assert (config["family"], config["n_embd"], config["n_kv_head"], config["block_size"]) == ("llama", 64, 2, 32)
    name = "model.layers.1.mlp.up_proj.weight"
    assert (state[name] - theirs.state_dict()[name]).abs().max() < 1e-6  # one step at lr 1e-9
    with pytest.raises(UserError, match="has 65 tokens, fewer than the byte tokenizer's 257"):
        build_model_config(compose("train", *overrides, "tokenizer=byte"), build_tokenizer("byte"))


@pytest.mark.slow
def test_the_llama_compiles_as_one_graph():
    """model.compile=true compiles the model in place; Dynamo must trace the family whole (no graph breaks).
    The eager backend checks the tracing in seconds; inductor's code generation takes minutes on a CPU."""
    torch.manual_seed(0)
    model = build(SMALL.to_dict()).eval()
    idx = torch.randint(0, 50, (2, 16))
    expected = model(idx)[0]
    model.compile(backend="eager", fullgraph=True)
    torch.testing.assert_close(model(idx)[0], expected)


def test_relu2_has_no_gate_and_zero_init_starts_every_block_as_the_identity():
    torch.manual_seed(0)
    model = Llama(LlamaConfig(**{**SMALL.to_dict(), "mlp": "relu2", "zero_init_out": True}))
    block = model.blocks[0]
    assert not hasattr(block.mlp, "gate_proj") and block.mlp.up_proj.weight.abs().sum() > 0
    outputs = [m.weight for b in model.blocks for m in (b.self_attn.o_proj, b.mlp.down_proj)]
    assert all(w.count_nonzero() == 0 for w in outputs)
    x = torch.randn(2, 5, SMALL.n_embd)
    rope = tuple(t.to(x.dtype) for t in rotary_cos_sin(model.config, 0, 5, x.device))
    assert torch.equal(block(x, rope), x)  # both residual branches add exactly zero
    logits, loss = model(torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2, 16)))
    loss.backward()
    assert all(w.grad.abs().sum() > 0 for w in outputs)  # and they still learn
