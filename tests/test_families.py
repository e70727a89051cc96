"""A model family is closed: a folder of its own is all it takes. The toy family (tests/support/toy_family),
defined only in the tests, trains, samples, resumes and generates with a cache, and the tools that need what it
lacks (a transformers mapping, inspection hooks) refuse it in one line."""

from __future__ import annotations

import torch

import lightning_gpt
from lightning_gpt.apps import explain, export, sample
from lightning_gpt.apps.train import main
from lightning_gpt.generation import generate

from .support.runs import train
from .support.toy_family import config  # noqa: F401  # registers the family, as lightning_gpt.models does its own


def test_a_family_from_its_own_folder_trains_samples_resumes_and_is_refused_by_export(tmp_path, cache_dir, capsys):
    run = train(tmp_path, cache_dir, "run", "model=toy", "model.hidden=48", "trainer.max_steps=6")
    model, tokenizer = lightning_gpt.load(run)
    assert type(model).__name__ == "Toy" and model.config.hidden == 48
    prompt = torch.tensor([tokenizer.encode("ROMEO:")])
    cached = torch.cat(list(generate(model, prompt, 12, temperature=0)), dim=1)
    assert torch.equal(cached, torch.cat(list(generate(model, prompt, 12, temperature=0, use_cache=False)), dim=1))
    capsys.readouterr()
    assert sample.main([f"ckpt_path={run}", "prompt=ROMEO:", "max_new_tokens=8", "device=cpu"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    assert main([f"ckpt_path={run}", "trainer.max_steps=9", f"paths.cache_dir={cache_dir}"]) == 0
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 9
    capsys.readouterr()
    assert export.main([f"ckpt_path={run}", f"out_dir={tmp_path / 'hf'}"]) == 2
    assert (
        capsys.readouterr().err.strip() == "error: the toy family has no transformers equivalent: it cannot be exported"
    )
    assert explain.main([f"ckpt_path={run}", "prompt=ROMEO:"]) == 2
    assert "toy" in capsys.readouterr().err and not (tmp_path / "hf").exists()
