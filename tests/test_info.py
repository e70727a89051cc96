"""lgpt-info: exact sizes on the meta device, as transformers counts them."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lightning_gpt.apps.launch import CONF_DIR
from lightning_gpt.apps.info import task

from .conftest import run_cli

EXACT = {
    "gpt2_small": 124_439_808,
    "gpt2_xl": 1_557_611_200,
    "llama2_7b": 6_738_415_616,
    "llama3_8b": 8_030_261_248,
    "mamba_130m": 129_135_360,
}


def info(*overrides: str) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return task(compose("info", overrides=list(overrides)))


@pytest.mark.parametrize("preset", EXACT)
def test_presets_have_their_exact_parameter_counts(preset):
    assert info(f"model={preset}")["parameters"] == EXACT[preset]


def test_memory_and_flops_follow_the_count():
    result = info("model=gpt2_small")
    n = result["parameters"]
    assert result["memory_gib"]["fp32"]["total"] == pytest.approx(16 * n / 2**30)
    assert result["memory_gib"]["bf16"]["weights"] == pytest.approx(2 * n / 2**30)
    assert result["train_flops_per_token"] == 6 * n + 12 * 12 * 768 * 1024  # 6N + attention (PaLM appendix B)


@pytest.mark.slow
def test_the_app_prints_the_table_and_refuses_typos_in_one_line(tmp_path):
    done = run_cli("model=gpt2_xl", module="lightning_gpt.apps.info", cwd=tmp_path)
    assert done.returncode == 0 and "1,557,611,200 parameters" in done.stdout
    assert list(tmp_path.iterdir()) == []  # writes nothing
    done = run_cli("model.n_layers=4", module="lightning_gpt.apps.info", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: unknown config key 'model.n_layers'")
