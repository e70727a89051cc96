"""The training app as users meet it: composition, runs, loggers, resume, sweeps, errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_gpt.apps.launch import CONF_DIR
from lightning_gpt.apps.train import main

from .support.config import TINY, TINY_SHAKESPEARE_DATA, compose
from .support.processes import run_app
from .support.runs import column, read_metrics, train


@pytest.mark.parametrize("preset", [p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml")])
def test_every_experiment_preset_composes(preset):
    cfg = compose("train", f"experiment={preset}")
    assert cfg.task_name == preset
    assert cfg.optim.decay_steps == cfg.trainer.max_steps  # derived by interpolation


def model_shape(cfg):
    """The model config a run builds: the preset's keys over its family's defaults."""
    from lightning_gpt.models import config_from_dict

    return config_from_dict({k: v for k, v in cfg.model.items() if v is not None and k != "compile"})


@pytest.mark.slow
def test_presets_are_nanogpts_recipes():
    cfg = compose("train", "experiment=nanogpt_shakespeare_char")
    m = model_shape(cfg)
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout) == (6, 6, 384, 256, 0.2)
    assert (cfg.data.batch_size, cfg.trainer.max_steps) == (64, 5000)
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_steps, cfg.optim.betas[1]) == (1e-3, 1e-4, 100, 0.99)
    cfg = compose("train", "experiment=nanogpt_baby")
    m = model_shape(cfg)
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout, m.activation) == (4, 4, 128, 64, 0.0, "gelu")
    assert (cfg.data.batch_size, cfg.trainer.max_steps) == (12, 2000)
    assert (cfg.optim.weight_decay, cfg.trainer.gradient_clip_val, cfg.data.block_size) == (0.1, 1.0, 64)
    cfg = compose("train", "experiment=gpt2_124m")
    m = model_shape(cfg)
    assert (m.n_layer, m.n_embd, m.block_size, cfg.tokenizer.name, cfg.data.source) == (12, 768, 1024, "gpt2", "hub")


@pytest.mark.slow
def test_a_short_run_learns_checkpoints_logs_and_samples(tmp_path, cache_dir, capsys):
    run = train(
        tmp_path,
        cache_dir,
        "run",
        "trainer.max_steps=60",
        "trainer.val_check_interval=30",
        "logger=many",
        "callbacks.model_checkpoint.every_n_train_steps=20",
    )
    val = column(read_metrics(run), "val/loss")
    assert len(val) == 2 and val[1] < val[0] < 4.2  # ln(65) = 4.17 at the start
    # Bits per byte beside it: a char model on ASCII text, without end-of-text, scores one byte per target.
    bpb = column(read_metrics(run), "val/bpb")
    assert bpb == pytest.approx([loss / math.log(2) for loss in val], rel=1e-6)
    out = capsys.readouterr().out
    assert f"step 60: val/loss {val[-1]:.4f} val/bpb {bpb[-1]:.4f} | run folder {run}" in out
    names = {p.name for p in (run / "checkpoints").iterdir()}
    best = f"best-step000060-val{val[-1]:.4f}.ckpt"
    assert names == {"last.ckpt", "step000020.ckpt", "step000040.ckpt", "step000060.ckpt", best}
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert [e.value for e in events.Scalars("val/bpb")] == pytest.approx(bpb)
    assert list((run / "wandb").glob("offline-run-*"))  # offline W&B run, syncable with `wandb sync`
    assert (run / "samples.md").read_text().count("## step") == 2
    assert "--- sample ---" in out  # the run ends by printing a sample
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["tokenizer"]["name"] == "char"
    assert checkpoint["hyper_parameters"]["model"]["vocab_size"] == 65
    assert checkpoint["hyper_parameters"]["config"]["model"]["n_layer"] == 2  # the resolved run config
    assert "${" not in (run / "config.yaml").read_text()


@pytest.mark.slow
def test_resume_continues_at_the_right_step_with_the_data_stream(tmp_path, cache_dir):
    first = train(tmp_path, cache_dir, "a", "trainer.max_steps=20", "trainer.val_check_interval=10")
    saved = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 20
    assert saved["GPTDataModule"] == {"batches_seen": 20, "world_size": 1}  # the sampler's position, its processes
    resumed = train(
        tmp_path, cache_dir, "b", "trainer.max_steps=30", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}"
    )
    after = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["global_step"] == 30
    assert after["GPTDataModule"]["batches_seen"] == 30
    steps = column(read_metrics(resumed), "step")
    assert min(steps) >= 20  # the resumed run logs from step 20 on


@pytest.mark.slow
def test_ckpt_path_latest_finds_the_newest_run(tmp_path, cache_dir):
    runs = tmp_path / "outputs" / "train" / "runs"
    train(tmp_path, cache_dir, "outputs/train/runs/x", "trainer.max_steps=10", "trainer.val_check_interval=10")
    assert main([*cli_args(tmp_path, cache_dir), "trainer.max_steps=15", "ckpt_path=latest"]) == 0  # in its folder
    assert torch.load(runs / "x" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 15


def cli_args(tmp_path: Path, cache_dir: Path) -> list[str]:
    return [*TINY, *TINY_SHAKESPEARE_DATA, f"paths.root_dir={tmp_path}", f"paths.cache_dir={cache_dir}"]


@pytest.mark.slow
def test_multirun_gives_each_job_its_own_folder(tmp_path, cache_dir):
    code = main(
        [
            "-m",
            *cli_args(tmp_path, cache_dir),
            "trainer.max_steps=10",
            "trainer.val_check_interval=10",
            "optim.lr=1e-3,3e-3",
        ]
    )
    assert code == 0
    jobs = sorted(p.parent.parent for p in (tmp_path / "outputs").glob("train/multiruns/*/*/checkpoints/last.ckpt"))
    assert [j.name for j in jobs] == ["0", "1"]
    lrs = {
        torch.load(j / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]["optim"]["lr"] for j in jobs
    }
    assert lrs == {1e-3, 3e-3}


def test_a_typo_in_a_key_fails_at_once_with_its_name(tmp_path, cache_dir, capsys):
    assert main(["model.n_layers=4", *cli_args(tmp_path, cache_dir)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: unknown config key 'model.n_layers'; did you mean 'model.n_layer'?; list the keys with --cfg job"
    ]
    assert main(["model.n_layer=four", *cli_args(tmp_path, cache_dir)]) == 2
    err = capsys.readouterr().err
    assert "model.n_layer" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.ckpt"))
    assert main(["experment=nanogpt_baby", *cli_args(tmp_path, cache_dir)]) == 2  # a group, not a key
    assert "unknown config key 'experment'; did you mean experiment=...?" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_that_fails_after_composition_leaves_no_run_folder(tmp_path, cache_dir):
    for mistake in ("model.n_head=5", "ckpt_path=/no/such/run"):  # composes, then fails in the app
        assert main([*cli_args(tmp_path, cache_dir), mistake]) == 2
        assert not (tmp_path / "outputs").exists()  # not even the folders it would have made


@pytest.mark.slow
def test_the_console_prints_each_line_once_without_ads_or_library_warnings(tmp_path, cache_dir):
    # Validation at step 4, the end at 5: last.ckpt is saved by our callback, where Lightning notes weights_only.
    result = run_app(  # a fresh interpreter: import-time warnings too
        "lightning_gpt.apps.train",
        *cli_args(tmp_path, cache_dir),
        "trainer.max_steps=5",
        "trainer.val_check_interval=4",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    console = result.stdout + result.stderr
    assert console.count("GPU available") == 1 and console.count("`Trainer.fit` stopped") == 1
    for noise in ("Tip:", "LeafSpec", "FutureWarning", "weights_only", "exists and is not empty", "Warning"):
        assert noise not in console


def test_cfg_job_and_help_work_as_in_any_hydra_app(capsys):
    assert main(["--cfg", "job", "--resolve", "model=gpt2_small"]) == 0  # family defaults filled in
    assert "n_embd: 768" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "experiment: gpt2_124m, nanogpt_baby, nanogpt_shakespeare_char" in capsys.readouterr().out
    assert main(["--shell-completion", "install=bash"]) == 0
    assert "complete" in capsys.readouterr().out


def test_runs_started_in_the_same_second_get_their_own_folders():
    stamp = [sys.executable, "-c", "from lightning_gpt.runs import run_stamp; print(run_stamp())"]
    env = {k: v for k, v in os.environ.items() if k not in ("LGPT_RUN_STAMP", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID")}
    procs = [subprocess.Popen(stamp, stdout=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    stamps = [p.communicate()[0].strip() for p in procs]
    assert len(set(stamps)) == 4
    slurm = subprocess.run(stamp, capture_output=True, text=True, env={**env, "SLURM_JOB_ID": "4242"}).stdout.strip()
    assert slurm.startswith("job4242_")  # every node and a requeued job share the folder (see test_distributed)


@pytest.mark.slow
def test_a_busy_machine_gets_fewer_torch_threads_unless_omp_num_threads_is_set():
    # Two cores with a load average of 3.5 from other processes, as in docs/benchmarks.md ("threads").
    code = (
        "import os, torch; os.getloadavg = lambda: (3.5, 3.5, 3.5); os.sched_getaffinity = lambda pid: {0, 1};"
        "torch.set_num_threads(2); from lightning_gpt.apps.console import fit_threads_to_load;"
        "note = fit_threads_to_load();"
        "print(torch.get_num_threads(), note)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    busy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert busy.stdout.strip() == (
        "1 the CPUs are busy (load average 3.5 on 2 cores): using 1 torch thread(s) instead of 2; "
        "set OMP_NUM_THREADS to choose"
    )
    chosen = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "2"}
    )
    assert chosen.stdout.strip() == "2 None"


def test_the_training_step_reads_the_device_only_at_logging_steps(tmp_path, cache_dir):
    """On a GPU every host read of a tensor waits for the device: a step that reads none queues the next one
    while the device still works. Reads (the loss for the loggers and the bar, the finite check) happen after
    every log_every_n_steps-th step, back to back, so only the first waits."""
    run = train(
        tmp_path,
        cache_dir,
        "run",
        "trainer.max_steps=20",
        "trainer.log_every_n_steps=5",
        "trainer.val_check_interval=10",
        "+callbacks.count_reads._target_=tests.support.callbacks.CountHostReads",
    )
    reads = json.loads((run / "host_reads.json").read_text())
    assert sorted(map(int, reads)) == [5, 10, 15, 20]
