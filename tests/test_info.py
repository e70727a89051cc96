"""lgpt-info: exact sizes on the meta device, as transformers counts them."""

from __future__ import annotations

import pytest

from lightning_gpt.apps.info import main, task

from .support.config import compose
from .support.tiers import fast_first

EXACT = {
    "gpt2_small": 124_439_808,
    "gpt2_xl": 1_557_611_200,
    "llama2_7b": 6_738_415_616,
    "llama3_8b": 8_030_261_248,
    "mamba_130m": 129_135_360,
}


def info(*overrides: str) -> dict:
    return task(compose("info", *overrides))


@pytest.mark.parametrize("preset", fast_first(EXACT))
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


def test_the_memory_plan_follows_the_trainer_and_says_what_fits_a_device(capsys):
    """lgpt-info prints parallel.memory's plan for the strategy, devices, precision and micro-batch given, and the
    largest micro-batch that fits info.gpu_memory_gib (tests/test_parallel_memory.py checks the plan itself)."""
    from lightning_gpt.apps.info import vocabulary
    from lightning_gpt.parallel.memory import GIB, largest_micro_batch, plan
    from lightning_gpt.training.build import build_model_config

    overrides = ["model=llama3_8b", "trainer=fsdp", "trainer.devices=8", "data.batch_size=1", "data.block_size=8192"]
    cfg = compose("info", *overrides, "info.gpu_memory_gib=80")
    result = task(cfg)
    out = capsys.readouterr().out
    settings, config = result["plan"], build_model_config(cfg, vocabulary(cfg))
    assert settings["strategy"] == "fsdp" and settings["devices"] == 8 and settings["precision"] == "bf16-mixed"
    assert "per process (fsdp over 8 processes: replicate 1 x shard 8 x tensor 1), bf16-mixed" in out
    assert f"  {'total':<12}{plan(config, **settings).total / GIB:>10.2f} GiB" in out
    one = {k: v for k, v in settings.items() if k != "micro_batch"}
    fits = [
        largest_micro_batch(config, 80 * GIB, **{**one, "precision": p, "activation_checkpointing": True})
        for p in ("32-true", "bf16-mixed")
    ]
    assert fits[1] >= 1 and f"  activation checkpointing{fits[0]:>8}{fits[1]:>13}" in out.split("largest micro")[1]


def test_a_mesh_the_planner_cannot_lay_out_is_one_line(capsys):
    assert (
        main(["model=llama3_8b", "trainer=fsdp_tp", "trainer.devices=6", "trainer.strategy.tensor_parallel_size=4"])
        == 2
    )
    assert capsys.readouterr().err.strip() == (
        "error: no memory plan for these settings: tensor_parallel_size x data_parallel_replicate must divide 6 "
        "processes"
    )
