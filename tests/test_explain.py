"""lgpt-explain for GPT-2: the page's numbers are the model's, it is quick and small, a browser draws it without
errors; the attention-maps callback logs its PNG. Llama and Mamba: tests/test_explain_families.py."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lightning_gpt
from lightning_gpt.apps.explain import main
from lightning_gpt.apps.sample import write_samples
from lightning_gpt.explainer import explain, page, write_page
from lightning_gpt.inspection import token_piece
from lightning_gpt.models.gpt2.model import GPT, GPTConfig
from lightning_gpt.tokenizers import CharTokenizer, build_tokenizer

from .support.config import TINY_SHAKESPEARE, compose
from .support.runs import train_args, train_tiny
from .support.tiers import fast_first

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PANELS = ["tokens", "embeddings", "attention", "lens", "next", "generated"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir) -> Path:
    return train_tiny(tmp_path_factory.mktemp("explain"), cache_dir)


def page_data(html: str) -> dict:
    """The JSON the page embeds, with its base64 float32 arrays decoded."""
    text = re.search(r'<script id="lgpt-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    return json.loads(text)


def floats(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<f4")


def reference_attention(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Each block's attention weights (L, H, T, T), written out from the paper's formula, checked against the
    fused kernel the model calls: weights @ v must equal scaled_dot_product_attention(q, k, v, is_causal=True)."""
    T, C, nh = idx.size(1), model.config.n_embd, model.config.n_head
    x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(T))
    maps = []
    for block in model.transformer.h:
        q, k, v = block.attn.c_attn(block.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(1, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(C // nh)
        weights = scores.masked_fill(torch.ones(T, T).tril() == 0, float("-inf")).softmax(dim=-1)
        torch.testing.assert_close(weights @ v, F.scaled_dot_product_attention(q, k, v, is_causal=True))
        maps.append(weights[0])
        x = block(x)
    return torch.stack(maps)


@torch.no_grad()
def test_the_pages_numbers_are_the_models(run, tmp_path):
    model, tokenizer = lightning_gpt.load(run)
    prompt = "ROMEO:\nBut, soft! what light"
    data = page_data(page(explain(model, tokenizer, prompt, max_new_tokens=4, seed=3)))
    idx = torch.tensor([tokenizer.encode(prompt)])
    T, L, H = idx.size(1), model.config.n_layer, model.config.n_head
    assert data["tokens"] == idx[0].tolist() and "".join(data["pieces"][str(i)] for i in data["tokens"]) == prompt

    rows, cols = np.tril_indices(T)
    expected = reference_attention(model, idx).numpy()
    embedded = floats(data["attention"]).reshape(L, H, -1)
    assert np.abs(embedded - expected[:, :, rows, cols]).max() < 1e-5
    assert np.abs(np.triu(expected, k=1)).max() == 0  # what the page leaves out (the masked triangle) is zero

    logits = model(idx)[0][0, -1]
    page_probs = torch.from_numpy(floats(data["logits"]).copy()).softmax(dim=-1)
    assert (page_probs - logits.softmax(dim=-1)).abs().max() < 1e-5
    lens_probs = floats(data["lens"]["probs"]).reshape(L + 1, T, -1)  # the last layer of the lens is the output
    top = model(idx)[0][0].softmax(dim=-1).topk(5)
    assert np.abs(lens_probs[L] - top.values.numpy()).max() < 1e-5
    assert np.array_equal(np.array(data["lens"]["ids"]).reshape(L + 1, T, -1)[L], top.indices.numpy())
    token_rows = floats(data["embedding"]["token"]).reshape(T, -1)
    assert np.abs(token_rows - model.transformer.wte.weight[idx[0]].numpy()).max() < 1e-6

    # The continuation is lgpt-sample's with the same settings, and its probabilities are the model's.
    (tmp_path / "prompt.txt").write_text(prompt)
    overrides = [f"ckpt_path={run}", "device=cpu", f"prompt=@{tmp_path / 'prompt.txt'}", "seed=3", "max_new_tokens=4"]
    [sampled] = write_samples(compose("sample", *overrides), out=_Null())
    ids = data["generated"]["ids"]
    assert sampled == prompt + tokenizer.decode(ids) and len(ids) == 4
    probs = model(torch.tensor([idx[0].tolist() + ids[:-1]]))[0][0, T - 1 :].softmax(dim=-1)
    assert np.allclose(data["generated"]["probs"], probs[torch.arange(4), ids].numpy(), atol=1e-5)


class _Null:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


@pytest.mark.slow
def test_a_10m_model_and_64_tokens_make_a_page_under_5_mb(tmp_path):
    """Size only: its time is a benchmark (python -m benchmarks explain), not a test on a shared machine."""
    torch.manual_seed(0)
    text = TINY_SHAKESPEARE.read_text(encoding="utf-8")
    tokenizer = CharTokenizer.from_texts([text])
    config = GPTConfig(block_size=256, vocab_size=tokenizer.vocab_size, n_layer=6, n_head=6, n_embd=384)
    model = GPT(config).eval()  # nanoGPT's shakespeare_char shape, random weights
    assert 10e6 < model.num_params() < 11e6
    prompt = text[:64]
    path = write_page(explain(model, tokenizer, prompt), tmp_path / "page.html")
    assert path.stat().st_size < 5e6
    data = page_data(path.read_text(encoding="utf-8"))
    assert len(data["tokens"]) == 64 and len(floats(data["attention"])) == 6 * 6 * 64 * 65 // 2


@pytest.mark.slow
def test_the_app_writes_the_page_into_the_run_folder(run, capsys):
    assert main([f"ckpt_path={run}", "prompt=ROMEO:", "max_new_tokens=5"]) == 0
    assert capsys.readouterr().out.strip() == str(run / "explain.html")
    html = (run / "explain.html").read_text(encoding="utf-8")
    assert "https://" not in html and "http://" not in html  # nothing to fetch: it opens from disk offline
    assert "no Mamba family yet" not in html and page_data(html)["model"]["positions"] == "learned"
    assert page_data(html)["prompt"] == "ROMEO:"


@pytest.mark.parametrize(
    "overrides, message",
    fast_first(
        [
            (["ckpt_path=/no/such/run", "prompt=ROMEO:"], "checkpoint not found"),
            (["prompt="], "the prompt is empty"),
            (["prompt=" + "a" * 40], r"longer than the model's context \(block_size 32\)"),
            (["prompt=" + "a" * 20, "max_prompt_tokens=10"], "at most max_prompt_tokens=10"),
            (["prompt=ROMEO:", "top_p=2"], r"top_p must be in \(0, 1\]"),
            (["prompt='\u2603'"], "not in the character vocabulary"),
            (["prompt=ROMEO:", "out={tmp}/notes.txt/page.html"], r"cannot write .*page.html .*; choose another out="),
        ],
        keep=2,
    ),
)
def test_bad_input_is_a_clear_error(run, tmp_path, capsys, overrides, message):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    overrides = [o.format(tmp=tmp_path) for o in overrides]
    assert main([f"ckpt_path={run}", f"out={tmp_path / 'page.html'}", *overrides]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and re.search(message, err)
    assert not (tmp_path / "page.html").exists()


def chromium(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
@pytest.mark.slow
def test_chromium_draws_every_panel_without_console_errors(run, tmp_path):
    model, tokenizer = lightning_gpt.load(run)
    data = explain(model, tokenizer, "ROMEO:\nBut, soft!", temperature=0.7, top_k=5, top_p=0.3)
    path = write_page(data, tmp_path / "page.html")
    done = chromium("--dump-dom", path.as_uri() + "#selftest", tmp_path=tmp_path)  # the page works its controls
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []  # the page logs nothing: any line here is an error message
    dom = done.stdout
    assert "data-error" not in dom
    for panel in PANELS:
        assert re.search(rf'id="panel-{panel}"[^>]*data-drawn="ok"', dom), panel
    assert re.search(r'id="panel-ssm" data-drawn="" hidden', dom)  # Mamba's panel: not a GPT-2's
    assert '<div id="emb-learned">' in dom and '<div id="emb-rotary" hidden' in dom  # learned positions, added
    assert 'data-selftest="ok"' in dom
    # The bars are the page script's: the same probabilities and cutoff as the model's, after top-k went 5 -> 3.
    logits = torch.from_numpy(data.logits) / 0.7
    probs = logits.softmax(dim=-1)
    kept = logits >= logits.topk(3).values[-1]
    ranked = probs.masked_fill(~kept, 0).sort(descending=True)
    renormalized = ranked.values / ranked.values.sum()
    kept[ranked.indices[(renormalized.cumsum(0) - renormalized) >= 0.3]] = False
    bars = re.findall(r'class="bar[^"]*" data-id="(\d+)" data-p="([^"]+)" data-kept="(\d)"', dom)
    assert len(bars) == 20
    for token, p, keep in bars:
        assert abs(float(p) - float(probs[int(token)])) < 1e-5 and bool(int(keep)) == bool(kept[int(token)])
    assert 1 <= sum(int(k) for *_, k in bars) <= 3
    thumbs = re.findall(r'class="thumb( selected)?" data-l="(\d+)" data-h="(\d+)"', dom)
    assert len(thumbs) == model.config.n_layer * model.config.n_head
    assert [(int(layer), int(head)) for selected, layer, head in thumbs if selected] == [
        (1, 1)
    ]  # the last layer's last head
    assert re.search(r"seed 1337 → .+ \(id \d+, [\d.]+% after the cutoff\)", dom)  # the sample button drew one
    assert re.search(r'<div id="tip"[^>]*>query .*pos \d+.* → key .*pos 0.*weight 0\.\d{4}', dom)  # hover
    shot = tmp_path / "page.png"
    done = chromium(
        "--hide-scrollbars", "--window-size=1400,3000", f"--screenshot={shot}", path.as_uri(), tmp_path=tmp_path
    )
    assert done.returncode == 0 and shot.stat().st_size > 50_000, done.stderr[-2000:]


@pytest.mark.slow
def test_attention_maps_callback_logs_a_png_at_each_validation(tmp_path, cache_dir):
    run = train_tiny(
        tmp_path,
        cache_dir,
        "callbacks=[default,attention_maps]",
        "logger=many",
        "trainer.max_steps=20",
        "trainer.val_check_interval=10",
    )
    assert sorted(p.name for p in (run / "attention").iterdir()) == ["step000010.png", "step000020.png"]
    from matplotlib.image import imread

    image = imread(run / "attention" / "step000020.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert [e.step for e in events.Images("attention")] == [10, 20]
    assert len(list((run / "wandb").glob("offline-run-*/files/media/images/attention_*.png"))) == 2


def test_attention_maps_callback_refuses_a_prompt_the_tokenizer_cannot_encode(tmp_path, cache_dir, capsys):
    from lightning_gpt.apps.train import main

    maps = ["callbacks=[default,attention_maps]", "callbacks.attention_maps.prompt='\u2603'"]
    assert main(train_args(tmp_path, cache_dir, "run", *maps)) == 2
    assert "callbacks.attention_maps.prompt: characters" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before lgpt-train made its folder


def test_token_pieces_show_bytes_and_bpe_pieces_as_they_are():
    byte = build_tokenizer("byte")
    assert [token_piece(byte, i) for i in byte.encode("é!")] == ["<0xC3>", "<0xA9>", "!"]
    assert token_piece(byte, byte.eot_id) == "<|endoftext|>"
    gpt2 = build_tokenizer("gpt2")
    pieces = [token_piece(gpt2, i) for i in gpt2.encode("Hello naïve 🦙")]  # the llama's 4 bytes span 3 tokens
    assert pieces == ["Hello", " naïve", " <0xF0><0x9F>", "<0xA6>", "<0x99>"]
