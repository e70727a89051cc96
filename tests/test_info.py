"""lgpt-info: exact sizes on the meta device, as transformers counts them."""

from __future__ import annotations

import pytest

from lightning_gpt.apps.info import main, task

from .support.config import compose

EXACT = {
    "gpt2_small": 124_439_808,
    "gpt2_xl": 1_557_611_200,
    "llama2_7b": 6_738_415_616,
    "llama3_8b": 8_030_261_248,
    "mamba_130m": 129_135_360,
}


def info(*overrides: str) -> dict:
    return task(compose("info", *overrides))


@pytest.mark.parametrize("preset", EXACT)
def test_presets_have_their_exact_parameter_counts(preset):
    assert info(f"model={preset}")["parameters"] == EXACT[preset]


def test_memory_and_flops_follow_the_count():
    result = info("model=gpt2_small")
    n = result["parameters"]
    assert result["memory_gib"]["fp32"]["total"] == pytest.approx(16 * n / 2**30)
    assert result["memory_gib"]["bf16"]["weights"] == pytest.approx(2 * n / 2**30)
    assert result["train_flops_per_token"] == 6 * n + 12 * 12 * 768 * 1024  # 6N + attention (PaLM appendix B)


def test_the_app_prints_the_table_and_refuses_typos_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["model=gpt2_xl"]) == 0 and "1,557,611,200 parameters" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []  # writes nothing
    assert main(["model.n_layers=4"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown config key 'model.n_layers'")
