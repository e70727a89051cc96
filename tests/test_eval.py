"""lgpt-eval: the training's validation loss reproduced, other text in the checkpoint's tokens, DDP, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import lightning_gpt
from lightning_gpt.apps.evaluate import evaluate
from lightning_gpt.errors import UserError

from .support.config import TINY_SHAKESPEARE_DATA, compose
from .support.processes import run_app
from .support.runs import train_tiny

CPU = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir) -> Path:
    return train_tiny(tmp_path_factory.mktemp("eval"), cache_dir)


def eval_args(run: Path, tmp_path: Path, cache_dir: Path) -> list[str]:
    return [
        f"ckpt_path={run}",
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={tmp_path / 'eval'}",
        f"paths.cache_dir={cache_dir}",
        *CPU,
    ]


def run_eval(run: Path, tmp_path: Path, cache_dir: Path, *overrides: str) -> dict:
    return evaluate(compose("eval", *eval_args(run, tmp_path, cache_dir), *overrides))


@pytest.mark.slow
def test_eval_reproduces_the_validation_loss_of_training(run, tmp_path, cache_dir, capsys):
    # Training validated on val_batches x batch_size = 2 x 8 evenly spaced windows of the same split, at its
    # last step (10): the loss in the best checkpoint's name is last.ckpt's.
    result = run_eval(run, tmp_path, cache_dir, *TINY_SHAKESPEARE_DATA, "windows=16", "data.batch_size=8")
    assert result["ckpt_path"] == str(run / "checkpoints" / "last.ckpt")  # a run folder means its last checkpoint
    [best] = (run / "checkpoints").glob("best-*.ckpt")
    assert result["loss"] == pytest.approx(float(best.stem.split("-val")[1]), abs=1e-4)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert (result["windows"], result["block_size"], result["tokens"]) == (16, 32, 512)
    assert json.loads((tmp_path / "eval" / "eval.json").read_text()) == result
    table = capsys.readouterr().out
    assert f"loss        {result['loss']:.4f}" in table and "local" in table and "val split" in table


def test_other_text_is_read_in_the_checkpoints_own_tokens(run, tmp_path, cache_dir):
    text = "".join(
        f"Citizen {'ABCDEFG'[i % 7]}:\nWe are accounted poor citizens, the patricians good.\n\n" for i in range(200)
    )
    (tmp_path / "other.txt").write_text(text)
    result = run_eval(run, tmp_path, cache_dir, "data=local", f"data.path={tmp_path / 'other.txt'}", "split=train")
    _, tokenizer, _ = lightning_gpt.read_checkpoint(run)
    caches = [json.loads(p.read_text()) for p in cache_dir.glob("*/manifest.json")]
    mine = [m for m in caches if m["source"]["path"] == str(tmp_path / "other.txt")]
    assert len(mine) == 1 and mine[0]["tokenizer"] == tokenizer  # not a vocabulary built from this text
    assert result["windows"] == (mine[0]["splits"]["train"][1] - 1) // 32  # every non-overlapping window
    assert 0 < result["loss"] < math.log(len(tokenizer["chars"])) + 0.5


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["split=test"], "split must be train or val"),
        (["data.block_size=64"], r"data.block_size=64 is longer than the model's context \(32\)"),
        (
            ["data=local", "data.path={tmp}/snowmen.txt"],
            "not in the character vocabulary.*training corpus has them all: data=local data.path=.*input.txt",
        ),
        (["ckpt_path={tmp}/nothing"], "checkpoint not found"),
    ],
)
def test_bad_input_is_a_clear_error(run, tmp_path, cache_dir, overrides, message):
    (tmp_path / "snowmen.txt").write_text("\u2603 snow\n" * 500)
    with pytest.raises(UserError, match=message):
        run_eval(run, tmp_path, cache_dir, *(o.format(tmp=tmp_path) for o in overrides))


@pytest.mark.slow
def test_one_and_two_processes_give_the_same_loss(run, tmp_path, cache_dir):
    """17 windows split over 2 processes are padded, never repeated: the mean is the same to 1e-6."""
    one = run_eval(run, tmp_path, cache_dir, *TINY_SHAKESPEARE_DATA, "windows=17", "data.batch_size=4")
    out = tmp_path / "ddp.json"
    done = run_app(
        "lightning_gpt.apps.evaluate",
        *eval_args(run, tmp_path, cache_dir),
        *TINY_SHAKESPEARE_DATA,
        "windows=17",
        "data.batch_size=4",
        "trainer=ddp_cpu",
        "trainer.devices=2",
        f"out_file={out}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["devices"] == 2 and result["windows"] == 17
    assert result["loss"] == pytest.approx(one["loss"], abs=1e-6)
