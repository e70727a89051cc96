"""Dashboards: W&B runs named after their run folder and continued on a resume; TensorBoard's HPARAMS tab,
learning rate and tokens/s."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from .support.config import TINY, TINY_SHAKESPEARE

DATA = ["data=local", f"data.path={TINY_SHAKESPEARE}"]


def wandb_records(run: Path, field: str) -> list:
    """The records of one kind ("run", "history") of each offline W&B run in a run folder, oldest first. W&B
    writes them to offline-run-*/run-<id>.wandb, a log of protobuf records after a 7-byte file header, each
    record behind a 7-byte header of its own (checksum, length, kind; kind 1: a whole record)."""
    from wandb.proto import wandb_internal_pb2

    found = []
    for path in sorted((run / "wandb").glob("offline-run-*/run-*.wandb")):
        data, pos = path.read_bytes(), 7
        while pos + 7 <= len(data):
            length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
            record = wandb_internal_pb2.Record()
            if kind == 1 and record.ParseFromString(data[pos + 7 : pos + 7 + length]) and record.HasField(field):
                found.append(getattr(record, field))
            pos += 7 + length
    return found


def wandb_runs(run: Path) -> list:
    """The run record of each offline W&B run in a run folder, oldest first."""
    return wandb_records(run, "run")


def wandb_history(run: Path) -> list[dict[str, str]]:
    """Each logged row of every offline W&B run in a run folder: {metric: its value as JSON} (W&B keeps a name
    with slashes, val/loss, as its parts)."""
    rows = wandb_records(run, "history")
    return [{item.key or "/".join(item.nested_key): item.value_json for item in row.item} for row in rows]


@pytest.mark.slow
def test_a_wandb_run_is_named_after_its_run_folder_and_a_resume_continues_it(lgpt_train, tmp_path):
    pytest.importorskip("wandb")
    common = [*TINY, *DATA, "logger=wandb", "logger.wandb.offline=true", "tags=[baseline]"]
    lgpt_train(*common, "trainer.max_steps=4")
    lgpt_train(*common, "trainer.max_steps=6", "ckpt_path=auto")  # resumed in its own folder
    first, resumed = wandb_runs(tmp_path / "run")
    assert (first.display_name, first.run_group, list(first.tags)) == ("run", "", ["baseline"])
    assert resumed.run_id == first.run_id == (tmp_path / "run" / "wandb" / "run_id").read_text()
    assert resumed.display_name == "run"
    validations = [row for row in wandb_history(tmp_path / "run") if "val/loss" in row]  # steps 4 and 6
    assert len(validations) == 2  # bits per byte beside the loss: a char model on ASCII text, one byte a target
    assert all(float(r["val/bpb"]) == pytest.approx(float(r["val/loss"]) / math.log(2)) for r in validations)


@pytest.mark.slow
def test_tensorboard_has_the_config_as_hparams_one_learning_rate_and_tokens_per_second_from_the_first_log(
    lgpt_train, tmp_path
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    steps = ["trainer.max_steps=10", "trainer.log_every_n_steps=2", "trainer.val_check_interval=10"]
    peak = "callbacks.throughput.peak_flops=1e9"  # MFU's denominator where Lightning's table has no figure
    lgpt_train(*TINY, *DATA, *steps, "logger=tensorboard", "tags=[baseline]", peak)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    scalars = events.Tags()["scalars"]
    assert "epoch" not in scalars and not [tag for tag in scalars if tag.startswith("lr-")]
    assert [e.step for e in events.Scalars("train/lr")] == [1, 3, 5, 7, 9]  # beside train/loss
    assert events.Scalars("train/lr")[0].value == pytest.approx(1e-3 * 2 / 101)  # warmup: lr * (step + 1) / 101
    assert [e.step for e in events.Scalars("train/device/items_per_sec")] == [1, 3, 5, 7, 9]
    assert all(e.value > 0 for e in events.Scalars("train/device/items_per_sec"))
    flops, mfu = events.Scalars("train/device/flops_per_sec"), events.Scalars("train/device/mfu")
    assert [m.value for m in mfu] == pytest.approx([f.value / 1e9 for f in flops], rel=1e-6)
    content = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["global_batch_size"].number_value == 8
    assert start.hparams["tokens_per_step"].number_value == 8 * 32
    assert start.hparams["config/optim/lr"].number_value == pytest.approx(1e-3)
    assert start.hparams["config/model/n_layer"].number_value == 2
    assert start.hparams["config/tags"].string_value == "['baseline']"
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["val/loss", "val/ppl", "val/bpb", "train/loss"]
    assert len(events.Scalars("val/loss")) == 1  # the final value, which the HPARAMS tab shows


def test_mfu_on_an_h200_is_against_its_dense_peak_which_lightnings_table_misses():
    from lightning.fabric.utilities.throughput import _CUDA_FLOPS

    from lightning_gpt.training.callbacks import h200_peak_flops

    # What the card reports (seen on one, 2026-11-29) is none of the names in Lightning's table.
    assert "nvidia h200" not in _CUDA_FLOPS and "h200" not in _CUDA_FLOPS
    assert h200_peak_flops("NVIDIA H200", "bf16-mixed") == h200_peak_flops("NVIDIA H200", "16-mixed") == 989.4e12
    assert h200_peak_flops("NVIDIA H200", "32-true") == 66.9e12
    assert h200_peak_flops("NVIDIA H200 NVL", "bf16-mixed") == 835e12
    assert h200_peak_flops("NVIDIA A100-SXM4-80GB", "bf16-mixed") is None  # Lightning's table decides
    assert h200_peak_flops("", "bf16-mixed") is None  # no GPU


def test_parameter_groups_with_different_learning_rates_get_a_line_each(lgpt_train, tmp_path):
    import csv

    steps = ["trainer.max_steps=4", "trainer.log_every_n_steps=2", "trainer.val_check_interval=4"]
    lgpt_train(*TINY, *DATA, *steps, "+callbacks.halve._target_=tests.support.callbacks.HalveSecondGroup")
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert "train/lr" not in rows[0]
    first, second = ([float(r[key]) for r in rows if r.get(key)] for key in ("train/lr/pg0", "train/lr/pg1"))
    assert len(first) == 2 and second == pytest.approx([lr / 2 for lr in first])
