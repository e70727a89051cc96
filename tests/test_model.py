"""The GPT itself: GPT-2 exactness, causality, init, learning, and cached generation."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_gpt.generation import generate, sample_next
from lightning_gpt.models.gpt2.model import GPT, GPTConfig

TINY = GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32)


def test_gpt2_small_has_exactly_gpt2s_parameter_count():
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, bias=True))
    assert model.num_params(non_embedding=False) == 124_439_808
    assert model.num_params() == 123_653_376  # nanoGPT's "123.65M"
    assert model.lm_head.weight is model.transformer.wte.weight  # tied


def test_vocab_padding_grows_the_table_but_never_predicts_padding():
    config = GPTConfig(vocab_size=50257, vocab_multiple=64, block_size=8, n_layer=1, n_head=1, n_embd=8)
    model = GPT(config)
    assert config.padded_vocab_size == 50304
    assert model.transformer.wte.weight.shape == (50304, 8)
    logits, _ = model(torch.zeros(2, 8, dtype=torch.long))
    assert logits.shape == (2, 8, 50257)


def test_forward_shapes_and_untrained_loss_is_near_uniform():
    torch.manual_seed(0)
    model = GPT(TINY)
    idx = torch.randint(0, 50, (4, 16))
    logits, loss = model(idx, targets=torch.randint(0, 50, (4, 16)))
    assert logits.shape == (4, 16, 50)
    assert abs(loss.item() - math.log(50)) < 0.1
    assert model(idx)[1] is None


def test_changing_future_tokens_leaves_past_logits_unchanged():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    idx = torch.randint(0, 50, (1, 16))
    changed = idx.clone()
    changed[0, 9:] = (changed[0, 9:] + 1) % 50
    a, _ = model(idx)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_gpt2_initialisation():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=1000, n_layer=8, n_head=4, n_embd=256))
    fc = model.transformer.h[0].mlp.c_fc
    assert fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.h[3].attn.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.transformer.h[3].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert all(b.abs().sum() == 0 for n, b in model.named_parameters() if n.endswith(".bias") and "ln" not in n)


def test_flops_per_token_is_6n_plus_attention():
    model = GPT(TINY)
    n = model.num_params(non_embedding=False)
    assert model.flops_per_token() == 6 * n + 12 * 2 * 2 * 16 * 16


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="block_size must be a positive"):
        GPTConfig(block_size=0)


@pytest.mark.slow
def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(TINY)
    idx = torch.randint(0, 50, (4, 17))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def test_greedy_generation_is_the_same_with_and_without_the_kv_cache():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    prompt = torch.randint(0, 50, (3, 5))
    cached = torch.cat(list(generate(model, prompt, 11, temperature=0, use_cache=True)), dim=1)
    recomputed = torch.cat(list(generate(model, prompt, 11, temperature=0, use_cache=False)), dim=1)
    assert cached.shape == (3, 11)
    assert torch.equal(cached, recomputed)


def test_generation_slides_past_block_size():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    prompt = torch.randint(0, 50, (2, 16))  # already a full window
    tokens = torch.cat(list(generate(model, prompt, 40, temperature=0, use_cache=True)), dim=1)
    assert tokens.shape == (2, 40)
    # The first new token sees the same window either way.
    first = next(generate(model, prompt, 1, temperature=0, use_cache=False))
    assert torch.equal(tokens[:, :1], first)


def test_generation_stops_at_end_of_text_for_every_sequence():
    model = GPT(TINY).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.transformer.wte.weight[7, 0] = 1.0  # a single direction: token 7 always wins
    tokens = list(generate(model, torch.zeros(2, 1, dtype=torch.long), 10, temperature=0, stop_token=7))
    assert len(tokens) == 1


def test_top_k_and_top_p_keep_only_the_likely_tokens():
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0, -2.0]])
    g = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, 1.0, top_k=2, generator=g).item() for _ in range(200)}
    assert picks == {0, 1}
    picks = {sample_next(logits, 1.0, top_p=0.5, generator=g).item() for _ in range(200)}
    assert picks == {0}  # token 0 alone holds > 50% of the mass
    assert sample_next(logits, 0.0).item() == 0


@pytest.mark.parametrize("kwargs", [dict(max_new_tokens=0), dict(temperature=-1), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_sampling_options_are_rejected(kwargs):
    args = dict(max_new_tokens=5, temperature=1.0, top_k=None, top_p=None) | kwargs
    with pytest.raises(ValueError):
        next(generate(GPT(TINY), torch.zeros(1, 1, dtype=torch.long), **args))
