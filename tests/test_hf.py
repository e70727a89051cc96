"""GPT-2 interop with transformers: the same logits both ways, tokenizer files, fine-tuning from GPT-2 weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

import lightning_gpt
from lightning_gpt.apps.sample import write_samples
from lightning_gpt.errors import UserError
from lightning_gpt.generation import generate
from lightning_gpt.hf import export, import_config, import_model
from lightning_gpt.models.gpt2.model import GPT, GPTConfig
from lightning_gpt.tokenizers import build_tokenizer

from .support.config import TINY_SHAKESPEARE, compose
from .support.runs import train_args, train_tiny


def random_gpt2(vocab_size: int = 101, activation: str = "gelu_new", **shape) -> GPT2LMHeadModel:
    """A small transformers GPT-2 with every weight random (biases and norms included)."""
    torch.manual_seed(0)
    shape = {"n_positions": 24, "n_embd": 32, "n_layer": 2, "n_head": 4} | shape
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, activation_function=activation, **shape)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def max_logit_difference(ours: GPT, theirs: GPT2LMHeadModel, vocab_size: int) -> float:
    idx = torch.randint(0, vocab_size, (3, ours.config.block_size), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (ours(idx)[0] - theirs(idx).logits).abs().max().item()


@pytest.mark.parametrize("activation", ["gelu_new", "gelu"])
def test_a_transformers_gpt2_imports_with_the_same_logits(tmp_path, activation):
    theirs = random_gpt2(activation=activation)
    theirs.save_pretrained(tmp_path)
    ours = import_model(str(tmp_path))
    assert ours.config.activation == {"gelu_new": "gelu_tanh", "gelu": "gelu"}[activation]
    assert max_logit_difference(ours, theirs, 101) < 1e-4


def test_an_original_style_pytorch_model_bin_imports(tmp_path):
    """The hub's original gpt2 files: no transformer. prefix, causal-mask buffers, a pickled state dict."""
    theirs = random_gpt2()
    state = {k.removeprefix("transformer."): v for k, v in theirs.state_dict().items() if k != "lm_head.weight"}
    state |= {f"h.{i}.attn.bias": torch.ones(1, 1, 24, 24).tril() for i in range(2)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    theirs.config.to_json_file(tmp_path / "config.json")
    assert max_logit_difference(import_model(str(tmp_path)), theirs, 101) < 1e-4
    assert import_model(str(tmp_path), block_size=16).transformer.wpe.weight.shape == (16, 32)  # cropped context


@pytest.mark.parametrize(
    "config",
    [
        GPTConfig(block_size=24, vocab_size=101, n_layer=2, n_head=4, n_embd=32),
        GPTConfig(block_size=24, vocab_size=101, n_layer=2, n_head=4, n_embd=32, activation="gelu", vocab_multiple=64),
        GPTConfig(block_size=24, vocab_size=101, n_layer=2, n_head=4, n_embd=32, bias=False),
    ],
    ids=["gpt2", "exact-gelu-padded-vocab", "no-bias"],
)
def test_our_model_exports_to_transformers_with_the_same_logits(tmp_path, config):
    torch.manual_seed(0)
    ours = GPT(config).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    files = export(ours, build_tokenizer("byte"), tmp_path)
    assert sorted(f.name for f in files) == ["config.json", "model.safetensors"]  # no HF tokenizer for bytes
    modes = {f.name: f.stat().st_mode & 0o777 for f in files}
    assert modes["model.safetensors"] == modes["config.json"]  # readable by others alike (safetensors wrote 0600)
    theirs, info = GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert max_logit_difference(ours, theirs.eval(), 101) < 1e-4
    assert max_logit_difference(import_model(str(tmp_path)), theirs, 101) < 1e-4  # and back


@pytest.mark.slow
def test_gpt2_tokenizer_files_encode_exactly_as_tiktoken(tmp_path):
    ours = GPT(GPTConfig(block_size=16, n_layer=1, n_head=1, n_embd=8))
    export(ours, build_tokenizer("gpt2"), tmp_path)
    theirs = AutoTokenizer.from_pretrained(tmp_path)
    tiktoken_gpt2 = build_tokenizer("gpt2")
    text = TINY_SHAKESPEARE.read_text()[:20000] + " Ünïcödé, 日本語, emoji 🎉 and   spaces\n\n\tdone."
    assert theirs.encode(text) == tiktoken_gpt2.encode(text)
    assert len(theirs) == 50257 and theirs.eos_token_id == 50256
    assert json.loads((tmp_path / "config.json").read_text())["eos_token_id"] == 50256


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    """A random GPT-2 with GPT-2's vocabulary, in a Hugging Face folder: a stand-in for `gpt2` offline."""
    folder = tmp_path_factory.mktemp("gpt2")
    random_gpt2(vocab_size=50257, n_positions=64, n_embd=48, n_head=3, n_layer=1).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def finetuned_run(gpt2_folder, tmp_path_factory, cache_dir) -> Path:
    return train_tiny(
        tmp_path_factory.mktemp("finetune"),
        cache_dir,
        "model=pretrained",
        f"model.init_from={gpt2_folder}",
        "tokenizer=gpt2",
        "trainer.max_steps=1",
    )


@pytest.mark.slow
def test_fine_tuning_starts_from_gpt2_weights(gpt2_folder, finetuned_run):
    config, tokenizer, state = lightning_gpt.read_checkpoint(finetuned_run)
    # The shape is the imported model's (not TINY's 2 x 32), its context cropped to model.block_size=32.
    assert (config["n_layer"], config["n_head"], config["n_embd"], config["block_size"]) == (1, 3, 48, 32)
    assert tokenizer == {"name": "gpt2"}
    imported = import_model(str(gpt2_folder), block_size=32).state_dict()
    for name in ("transformer.h.0.mlp.c_fc.weight", "transformer.wpe.weight"):  # one warmup step moved them ~1e-5
        assert (state[name] - imported[name]).abs().max() < 1e-3


@pytest.mark.slow
def test_sampling_from_gpt2_weights_works_offline(gpt2_folder, finetuned_run):
    samples = write_samples(
        compose(
            "sample",
            f"ckpt_path={finetuned_run}",
            "device=cpu",
            "num_samples=2",
            "max_new_tokens=8",
            "stop_at_eot=false",
        )
    )
    assert len(samples) == 2 and all(samples)  # an empty prompt starts from <|endoftext|>
    [text] = write_samples(
        compose(
            "sample", f"ckpt_path={gpt2_folder}", "device=cpu", "prompt=ROMEO:", "max_new_tokens=8", "temperature=0"
        )
    )
    model, tokenizer = lightning_gpt.load(gpt2_folder)
    prompt = torch.tensor([tokenizer.encode("ROMEO:")])
    tokens = torch.cat(list(generate(model, prompt, 8, temperature=0)), dim=1)[0].tolist()
    assert text == "ROMEO:" + tokenizer.decode(tokens[: tokens.index(50256)] if 50256 in tokens else tokens)


@pytest.mark.slow
def test_lgpt_export_writes_a_folder_transformers_loads(finetuned_run, tmp_path):
    from lightning_gpt.apps.export import main

    assert main([f"ckpt_path={finetuned_run}", f"out_dir={tmp_path / 'out'}"]) == 0
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json"} <= names
    theirs = GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    ours, _ = lightning_gpt.load(finetuned_run)
    assert max_logit_difference(ours, theirs, 50257) < 1e-4


def test_bad_gpt2_sources_are_clear_errors(tmp_path, gpt2_folder, cache_dir, monkeypatch, capsys):
    import huggingface_hub.constants

    from lightning_gpt.apps.train import main

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as with no network, without waiting
    with pytest.raises(UserError, match="could not download 'gpt2-xl' from the Hugging Face hub"):
        import_config("gpt2-xl")
    with pytest.raises(UserError, match="no such folder"):
        import_config(str(tmp_path / "nowhere"))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UserError, match="is a 'bert' model; we load gpt2"):
        import_config(str(tmp_path / "bert"))
    with pytest.raises(
        ValueError, match="^block_size=128 is longer than .* 64 positions"
    ):  # lgpt-train: model.block_size
        import_config(str(gpt2_folder), block_size=128)
    assert main([*train_args(tmp_path, cache_dir, "run", "model=pretrained", f"model.init_from={gpt2_folder}")]) == 2
    assert "needs GPT-2's tokenizer" in capsys.readouterr().err  # the char tokenizer


def test_a_transformers_folder_has_no_checkpoint_to_export_as_one_file(tmp_path, gpt2_folder, capsys):
    from lightning_gpt.apps.export import main as export

    assert export([f"ckpt_path={gpt2_folder}", f"out_dir={tmp_path / 'whole'}", "format=ckpt"]) == 2
    assert "is a transformers folder, not a checkpoint of ours" in capsys.readouterr().err
    assert not (tmp_path / "whole").exists()
