"""Looking inside Llama and Mamba (GPT-2: tests/test_explain.py): each family's inspection hooks give the
model's own numbers, lgpt-explain draws the family's panels, the attention-maps callback draws its picture,
and a family without hooks is refused in one line."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

import lightning_gpt
from lightning_gpt.apps.explain import main
from lightning_gpt.errors import UserError
from lightning_gpt.explainer import explain, page, write_page
from lightning_gpt.generation import prompt_ids
from lightning_gpt.inspection import inspector, trace
from lightning_gpt.models.gpt2.model import GPT, GPTConfig
from lightning_gpt.models.llama.model import Llama, LlamaConfig, rotary_cos_sin
from lightning_gpt.models.mamba.inspect import mixer_internals
from lightning_gpt.models.mamba.model import Mamba, MambaConfig
from lightning_gpt.schema import CONF_DIR
from lightning_gpt.tokenizers import CharTokenizer
from lightning_gpt.training.callbacks import AttentionMaps

from .support.config import TINY_SHAKESPEARE
from .support.runs import train
from .test_explain import CHROMIUM, chromium, floats, page_data

PROMPT = "ROMEO:\nBut, soft! what"


@pytest.fixture(scope="module")
def tokenizer() -> CharTokenizer:
    return CharTokenizer.from_texts([TINY_SHAKESPEARE.read_text(encoding="utf-8")])


# ---------------------------------------------------------------------------------------------------
# The hooks' numbers are the model's (random weights, tiny shapes)


@torch.no_grad()
def test_llama_page_holds_the_attention_its_blocks_apply(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=48, vocab_size=tokenizer.vocab_size, qk_norm=True
    )
    model = Llama(config).eval()
    for p in model.parameters():
        if p.dim() == 1:  # norm gains away from 1, so QK-norm's weights count
            nn.init.normal_(p, mean=1.0, std=0.3)
    # What each attention layer is given and gives back, as the model runs.
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [b.self_attn.register_forward_hook(lambda m, a, out: seen.append((a[0], out))) for b in model.model.layers]
    idx = torch.tensor([tokenizer.encode(PROMPT)])
    logits = model(idx)[0][0]
    for h in hooks:
        h.remove()
    data = page_data(page(explain(model, tokenizer, PROMPT, max_new_tokens=3)))

    T, L, H, hd = idx.size(1), config.n_layer, config.n_head, config.head_dim
    assert data["ssm"] is None and data["embedding"]["position"] is None
    rows, cols = np.tril_indices(T)
    weights = torch.zeros(L, H, T, T)
    weights[:, :, rows, cols] = torch.from_numpy(floats(data["attention"]).reshape(L, H, -1).copy())
    assert torch.allclose(weights.sum(-1), torch.ones(L, H, T), atol=1e-5)  # rows sum to 1, the future is zero
    for layer, (block, (x, out)) in enumerate(zip(model.model.layers, seen)):
        attn = block.self_attn
        v = attn.v_proj(x).view(1, T, config.kv_heads, hd).transpose(1, 2)  # (1, kv_heads, T, hd)
        v = v.repeat_interleave(H // config.kv_heads, dim=1)  # query head h reads key/value head h // 2
        y = (weights[layer] @ v).transpose(1, 2).reshape(1, T, H * hd)
        assert (attn.o_proj(y) - out).abs().max() < 1e-5  # the page's weights are the ones the block applied

    # Positions as rotations: the page's angles are the model's, and the distance curve is mean_i cos(d theta_i).
    angles = floats(data["embedding"]["rotary"]["angles"]).reshape(T, hd // 2)
    cos, sin = rotary_cos_sin(config, 0, T, torch.device("cpu"))
    assert np.abs(np.cos(angles) - cos[:, : hd // 2].numpy()).max() < 1e-5
    assert np.abs(np.sin(angles) - sin[:, : hd // 2].numpy()).max() < 1e-5
    theta = config.rope_theta ** (-np.arange(0, hd, 2) / hd)
    expected = np.cos(np.arange(config.block_size)[:, None] * theta).mean(axis=1)
    assert np.abs(floats(data["embedding"]["rotary"]["distance"]) - expected).max() < 1e-5

    probs = torch.from_numpy(floats(data["logits"]).copy()).softmax(dim=-1)
    assert (probs - logits[-1].softmax(dim=-1)).abs().max() < 1e-5
    lens = floats(data["lens"]["probs"]).reshape(L + 1, T, -1)[L]  # the lens after the last block: the output
    assert np.abs(lens - logits.softmax(dim=-1).topk(5).values.numpy()).max() < 1e-5
    token_rows = floats(data["embedding"]["token"]).reshape(T, -1)
    assert np.abs(token_rows - model.model.embed_tokens.weight[idx[0]].numpy()).max() < 1e-6
    assert data["model"]["n_kv_head"] == 2 and data["model"]["qk_norm"] is True


@torch.no_grad()
def test_mamba_page_holds_the_step_sizes_and_states_of_its_own_scan(tokenizer):
    torch.manual_seed(0)
    config = MambaConfig(n_layer=2, n_embd=32, block_size=48, vocab_size=tokenizer.vocab_size)
    model = Mamba(config).eval()
    for block in model.layers:  # larger steps than the initial 0.001-0.1, so the states carry something
        block.mixer.dt_proj.bias.add_(2.0)
    # The step sizes the model computes, as it runs: softplus of each dt_proj's output.
    step_sizes: list[torch.Tensor] = []
    hooks = [
        b.mixer.dt_proj.register_forward_hook(lambda m, a, out: step_sizes.append(F.softplus(out[0])))
        for b in model.layers
    ]
    idx = torch.tensor([tokenizer.encode(PROMPT)])
    logits = model(idx)[0][0]
    for h in hooks:
        h.remove()
    dt = torch.stack(step_sizes)  # (L, T, d_inner)
    # The states, from the model's own recurrence: one token at a time through its cache.
    cache = model.new_cache(1, torch.device("cpu"), torch.float32)
    norms = []
    for t in range(idx.size(1)):
        model.hidden_states(idx[:, t : t + 1], cache)
        norms.append([float(h[0].norm()) for h in cache.ssm])
    norms = np.array(norms).T  # (L, T)
    data = page_data(page(explain(model, tokenizer, PROMPT, max_new_tokens=3, channels=16)))

    T, L = idx.size(1), config.n_layer
    assert data["attention"] is None and data["embedding"]["position"] is None and data["embedding"]["rotary"] is None
    ssm = data["ssm"]
    assert np.abs(floats(ssm["dt"]).reshape(L, T) - dt.mean(-1).numpy()).max() < 1e-5
    channels = np.array(ssm["channels"])
    assert channels.shape == (L, 16) and all((np.diff(row) > 0).all() for row in channels)
    by_channel = floats(ssm["dt_channels"]).reshape(L, T, 16)
    for layer in range(L):
        assert np.abs(by_channel[layer] - dt[layer][:, channels[layer]].numpy()).max() < 1e-5
    page_norms = floats(ssm["state_norms"]).reshape(L, T)
    assert np.abs(page_norms - norms).max() < 1e-5 * norms.max() and norms.max() > 0.1

    probs = torch.from_numpy(floats(data["logits"]).copy()).softmax(dim=-1)
    assert (probs - logits[-1].softmax(dim=-1)).abs().max() < 1e-5
    lens = floats(data["lens"]["probs"]).reshape(L + 1, T, -1)[L]
    assert np.abs(lens - logits.softmax(dim=-1).topk(5).values.numpy()).max() < 1e-5


@torch.no_grad()
def test_mamba_recomputed_mixer_gives_the_mixers_output_and_its_scans_last_state():
    torch.manual_seed(0)
    model = Mamba(MambaConfig(n_layer=1, n_embd=32, block_size=100, vocab_size=50)).eval()
    mixer, x = model.layers[0].mixer, torch.randn(1, 100, 32)  # T=100: two of the model's 64-position chunks
    mixer.dt_proj.bias.add_(2.0)  # steps near 2: each state forgets most of its past within a few tokens
    dt, states, out = mixer_internals(mixer, x)
    assert dt.shape == (1, 100, 64) and states.shape == (1, 100, 64, 16)
    assert (out - mixer(x)).abs().max() < 1e-5 * out.abs().max()
    cache = model.new_cache(1, torch.device("cpu"), torch.float32)
    mixer(x, cache)  # the model's chunked scan leaves its last state in the cache
    assert (states[0, -1] - cache.ssm[0][0]).abs().max() < 1e-5 * states.abs().max()


@dataclass
class OwnConfig(GPTConfig):
    """A user's own family, as a folder without an inspect.py would hold it."""

    family: str = "own"


def test_a_family_without_inspection_hooks_is_refused_in_one_line(tokenizer):
    model = GPT(OwnConfig(n_layer=1, n_head=1, n_embd=8, block_size=16, vocab_size=tokenizer.vocab_size))
    with pytest.raises(UserError) as refused:
        explain(model, tokenizer, "ROMEO:")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("the own family has no inspection hooks (tests/inspect.py)")
    with pytest.raises(UserError, match="own family has no inspection hooks"):
        inspector(model)


# ---------------------------------------------------------------------------------------------------
# Tiny trained runs: the callback's picture, the app, the browser

RUNS = {
    "llama": ["model=llama_baby", "model.n_layer=2", "model.n_head=4", "model.n_kv_head=2", "model.n_embd=32"],
    "mamba": ["model=mamba_baby", "model.n_layer=2", "model.n_embd=32"],
}


@pytest.fixture(scope="module", params=sorted(RUNS))
def family_run(request, tmp_path_factory, cache_dir) -> tuple[str, Path]:
    """10 steps of a tiny Llama or Mamba with the attention-maps callback on, validating at steps 5 and 10."""
    family = request.param
    run = train(
        tmp_path_factory.mktemp(family),
        cache_dir,
        "run",
        *RUNS[family],
        "trainer.max_steps=10",
        "trainer.val_check_interval=5",
        "callbacks=[default,attention_maps]",
        "logger=[csv,tensorboard]",
    )
    return family, run


@pytest.mark.slow
def test_attention_maps_callback_draws_each_familys_picture(family_run):
    family, run = family_run
    assert sorted(p.name for p in (run / "attention").iterdir()) == ["step000005.png", "step000010.png"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert [e.step for e in events.Images("attention")] == [5, 10]
    # The last picture is the checkpoint's own: attention maps for Llama, step sizes and state norms for Mamba.
    from matplotlib.image import imread

    model, tokenizer = lightning_gpt.load(run)
    prompt = OmegaConf.load(CONF_DIR / "callbacks" / "attention_maps.yaml").attention_maps.prompt
    callback = AttentionMaps(prompt)  # the prompt the run drew
    callback.ids = prompt_ids(tokenizer, callback.prompt)[: model.config.block_size]
    seen = trace(model, torch.tensor([callback.ids]))
    assert (seen.attention is None) == (family == "mamba") and (seen.state_norms is None) == (family == "llama")
    expected = callback.draw(seen, tokenizer, 10).astype(np.float32)
    logged = imread(run / "attention" / "step000010.png")[..., :3] * 255
    assert logged.shape == expected.shape and np.abs(logged - expected).mean() < 0.5


@pytest.mark.slow
def test_the_app_draws_each_familys_panels(family_run, capsys):
    family, run = family_run
    assert main([f"ckpt_path={run}", "prompt=ROMEO:", "max_new_tokens=5"]) == 0
    assert capsys.readouterr().out.strip() == str(run / "explain.html")
    html = (run / "explain.html").read_text(encoding="utf-8")
    assert "https://" not in html and "http://" not in html and "no Mamba family yet" not in html
    data = page_data(html)
    assert data["model"]["family"] == family and data["embedding"]["position"] is None
    if family == "llama":
        assert data["attention"] and data["embedding"]["rotary"] and data["ssm"] is None
        assert data["model"]["positions"] == "rotary"
    else:
        assert data["attention"] is None and data["embedding"]["rotary"] is None and data["ssm"]
        assert data["model"]["positions"] == "none"


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
@pytest.mark.slow
def test_chromium_draws_each_familys_panels_without_console_errors(family_run, tmp_path):
    family, run = family_run
    model, tokenizer = lightning_gpt.load(run)
    path = write_page(explain(model, tokenizer, "ROMEO:\nBut, soft!", max_new_tokens=5), tmp_path / "page.html")
    done = chromium("--dump-dom", path.as_uri() + "#selftest", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line for line in done.stderr.splitlines() if ":CONSOLE" in line] == []
    dom = done.stdout
    assert "data-error" not in dom and 'data-selftest="ok"' in dom
    mixing = "attention" if family == "llama" else "ssm"
    for panel in ["tokens", "embeddings", mixing, "lens", "next", "generated"]:
        assert re.search(rf'id="panel-{panel}"[^>]*data-drawn="ok"', dom), panel
    other = "ssm" if family == "llama" else "attention"
    assert re.search(rf'id="panel-{other}" data-drawn="" hidden', dom)  # the other family's panel stays hidden
    L = model.config.n_layer
    if family == "llama":
        assert re.search(r'<div id="emb-rotary">', dom) and re.search(r'<div id="emb-learned" hidden', dom)
        assert len(re.findall(r'class="thumb( selected)?" data-l=', dom)) == L * model.config.n_head
        assert re.search(r'<div id="tip"[^>]*>query .*pos \d+.* → key .*pos 0.*weight 0\.\d{4}', dom)
        assert "layer 2, head 4 (key/value head 2)" in dom  # the selected head's caption names its shared head
    else:
        assert re.search(r'<p class="note" id="emb-none">No positions: Mamba', dom)
        assert re.search(rf'<div id="tip"[^>]*>layer {L}, .*pos 0.*<br>dt \d', dom)  # hover on the step sizes
        assert re.search(r"layer 1, channel by channel: dt of each of its 64 channels", dom)
    shot = tmp_path / "page.png"
    done = chromium(
        "--hide-scrollbars", "--window-size=1400,3000", f"--screenshot={shot}", path.as_uri(), tmp_path=tmp_path
    )
    assert done.returncode == 0 and shot.stat().st_size > 50_000, done.stderr[-2000:]


def test_the_figures_cover_every_layer():
    """The callback's pictures: a tile per layer and head for attention, a row per layer for a state-space model."""
    from lightning_gpt.inspection import attention_figure, state_space_figure

    weights = torch.rand(3, 2, 5, 5).softmax(-1)
    assert [t.get_text() for t in attention_figure(weights).axes[0].get_yticklabels()] == [
        "layer 1",
        "layer 2",
        "layer 3",
    ]
    figure = state_space_figure(torch.rand(3, 5) + 0.01, torch.rand(3, 5), list("abcde"), "t")
    top, bottom = figure.axes[:2]
    assert [t.get_text() for t in bottom.get_xticklabels()] == list("abcde")
    assert top.images[0].get_array().shape == bottom.images[0].get_array().shape == (3, 5)
    assert math.isclose(top.images[0].norm.vmin, float(top.images[0].get_array().min()), rel_tol=1e-6)
