"""The training app as users meet it: composition, runs, loggers, resume, sweeps, DDP on CPU, errors."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from lightning_gpt.cli import CONF_DIR
from lightning_gpt.train import task

from .conftest import TINY, TINY_SHAKESPEARE, WARM, run_cli, warm_socket
from .warm import ENV

TINY_SHAKESPEARE_DATA = ["data=local", f"data.path={TINY_SHAKESPEARE}"]


def read_metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.mark.parametrize("preset", [p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml")])
def test_every_experiment_preset_composes(preset):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={preset}"])
    assert cfg.task_name == preset
    assert cfg.optim.decay_steps == cfg.trainer.max_steps  # derived by interpolation


def model_shape(cfg):
    """The model config a run builds: the preset's keys over its family's defaults."""
    from lightning_gpt.models import config_from_dict

    return config_from_dict({k: v for k, v in cfg.model.items() if v is not None and k not in ("compile", "init_from")})


@pytest.mark.slow
def test_presets_are_nanogpts_recipes(compose_train):
    cfg = compose_train("experiment=nanogpt_shakespeare_char")
    m = model_shape(cfg)
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout) == (6, 6, 384, 256, 0.2)
    assert (cfg.data.batch_size, cfg.trainer.max_steps) == (64, 5000)
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_steps, cfg.optim.betas[1]) == (1e-3, 1e-4, 100, 0.99)
    cfg = compose_train("experiment=nanogpt_baby")
    m = model_shape(cfg)
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout, m.activation) == (4, 4, 128, 64, 0.0, "gelu")
    assert (cfg.data.batch_size, cfg.trainer.max_steps) == (12, 2000)
    assert (cfg.optim.weight_decay, cfg.trainer.gradient_clip_val, cfg.data.block_size) == (0.1, 1.0, 64)
    cfg = compose_train("experiment=gpt2_124m")
    m = model_shape(cfg)
    assert (m.n_layer, m.n_embd, m.block_size, cfg.tokenizer.name, cfg.data.source) == (12, 768, 1024, "gpt2", "hub")


@pytest.mark.slow
def test_a_short_run_learns_checkpoints_logs_and_samples(compose_train, tmp_path, capsys):
    cfg = compose_train(
        *TINY,
        *TINY_SHAKESPEARE_DATA,
        "trainer.max_steps=60",
        "trainer.val_check_interval=30",
        "logger=many",
        "callbacks.model_checkpoint.every_n_train_steps=20",
    )
    metrics = task(cfg)
    run = tmp_path / "run"
    val = column(read_metrics(run), "val/loss")
    assert len(val) == 2 and val[1] < val[0] < 4.2  # ln(65) = 4.17 at the start
    assert metrics == pytest.approx(val[-1])
    names = {p.name for p in (run / "checkpoints").iterdir()}
    best = f"best-step000060-val{val[-1]:.4f}.ckpt"
    assert names == {"last.ckpt", "step000020.ckpt", "step000040.ckpt", "step000060.ckpt", best}
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
    assert list((run / "wandb").glob("offline-run-*"))  # offline W&B run, syncable with `wandb sync`
    assert (run / "samples.md").read_text().count("## step") == 2
    assert "--- sample ---" in capsys.readouterr().out  # the run ends by printing a sample
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["tokenizer"]["name"] == "char"
    assert checkpoint["hyper_parameters"]["model"]["vocab_size"] == 65
    assert checkpoint["hyper_parameters"]["config"]["model"]["n_layer"] == 2  # the resolved run config
    assert "${" not in (run / "config.yaml").read_text()


@pytest.mark.slow
def test_resume_continues_at_the_right_step_with_the_data_stream(compose_train, tmp_path):
    first = compose_train(*TINY, "trainer.max_steps=20", "trainer.val_check_interval=10", output_dir=tmp_path / "a")
    task(first)
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 20
    assert saved["GPTDataModule"] == {"batches_seen": 20, "world_size": 1}  # the sampler's position, its processes
    resumed = compose_train(
        *TINY,
        "trainer.max_steps=30",
        "trainer.val_check_interval=10",
        f"ckpt_path={tmp_path / 'a'}",
        output_dir=tmp_path / "b",
    )
    task(resumed)
    after = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["global_step"] == 30
    assert after["GPTDataModule"]["batches_seen"] == 30
    steps = column(read_metrics(tmp_path / "b"), "step")
    assert min(steps) >= 20  # the resumed run logs from step 20 on


@pytest.mark.slow
def test_ckpt_path_latest_finds_the_newest_run(compose_train, tmp_path):
    runs = tmp_path / "outputs" / "train" / "runs"
    task(compose_train(*TINY, "trainer.max_steps=10", "trainer.val_check_interval=10", output_dir=runs / "x"))
    cfg = compose_train(
        *TINY,
        "trainer.max_steps=15",
        "trainer.val_check_interval=5",
        "ckpt_path=latest",
        output_dir=tmp_path / "outputs" / "y",
    )
    task(cfg)
    assert torch.load(tmp_path / "outputs" / "y" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 15


def cli_args(tmp_path: Path, cache_dir: Path) -> list[str]:
    return [*TINY, f"paths.root_dir={tmp_path}", f"paths.cache_dir={cache_dir}"]


@pytest.mark.slow
def test_multirun_gives_each_job_its_own_folder(tmp_path, cache_dir):
    result = run_cli(
        "-m",
        *cli_args(tmp_path, cache_dir),
        "trainer.max_steps=10",
        "trainer.val_check_interval=10",
        "optim.lr=1e-3,3e-3",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = sorted(p.parent.parent for p in (tmp_path / "outputs").glob("train/multiruns/*/*/checkpoints/last.ckpt"))
    assert [j.name for j in jobs] == ["0", "1"]
    lrs = {
        torch.load(j / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]["optim"]["lr"] for j in jobs
    }
    assert lrs == {1e-3, 3e-3}


@pytest.mark.slow
def test_a_typo_in_a_key_fails_at_once_with_its_name(tmp_path, cache_dir):
    result = run_cli("model.n_layers=4", *cli_args(tmp_path, cache_dir))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown config key 'model.n_layers'; did you mean 'model.n_layer'?; list the keys with --cfg job"
    ]
    result = run_cli("model.n_layer=four", *cli_args(tmp_path, cache_dir))
    assert result.returncode == 2 and "model.n_layer" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.ckpt"))
    result = run_cli("experment=nanogpt_baby", *cli_args(tmp_path, cache_dir))  # a group, not a key
    assert result.returncode == 2
    assert "unknown config key 'experment'; did you mean experiment=...?" in result.stderr


@pytest.mark.slow
def test_a_run_that_fails_after_composition_leaves_no_run_folder(tmp_path, cache_dir):
    for mistake in ("model.n_head=5", "ckpt_path=/no/such/run"):  # composes, then fails in the app
        result = run_cli(*cli_args(tmp_path, cache_dir), mistake)
        assert result.returncode == 2
        assert list((tmp_path / "outputs" / "train" / "runs").iterdir()) == []


@pytest.mark.slow
def test_the_console_prints_each_line_once_without_ads_or_library_warnings(tmp_path, cache_dir):
    # Validation at step 4, the end at 5: last.ckpt is saved by our callback, where Lightning notes weights_only.
    result = run_cli(
        *cli_args(tmp_path, cache_dir),
        *TINY_SHAKESPEARE_DATA,
        "trainer.max_steps=5",
        "trainer.val_check_interval=4",
        fresh=True,  # import-time warnings too
    )
    assert result.returncode == 0, result.stderr[-2000:]
    console = result.stdout + result.stderr
    assert console.count("GPU available") == 1 and console.count("`Trainer.fit` stopped") == 1
    for noise in ("Tip:", "LeafSpec", "FutureWarning", "weights_only", "exists and is not empty", "Warning"):
        assert noise not in console


@pytest.mark.slow
def test_cfg_job_and_help_work_as_in_any_hydra_app(tmp_path):
    result = run_cli("--cfg", "job", "--resolve", "model=gpt2_small", cwd=tmp_path)  # family defaults filled in
    assert result.returncode == 0 and "n_embd: 768" in result.stdout
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0 and "experiment: gpt2_124m, nanogpt_baby, nanogpt_shakespeare_char" in result.stdout
    result = run_cli("--shell-completion", "install=bash", cwd=tmp_path)
    assert result.returncode == 0 and "complete" in result.stdout


def test_runs_started_in_the_same_second_get_their_own_folders():
    stamp = [sys.executable, "-c", "from lightning_gpt.cli import run_stamp; print(run_stamp())"]
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
        "torch.set_num_threads(2); from lightning_gpt.cli import fit_threads_to_load; note = fit_threads_to_load();"
        "print(torch.get_num_threads(), note)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env[ENV] = warm_socket()  # a forked child reads the environment and load as a fresh process would
    busy = subprocess.run([sys.executable, str(WARM), "-c", code], capture_output=True, text=True, env=env)
    assert busy.stdout.strip() == (
        "1 the CPUs are busy (load average 3.5 on 2 cores): using 1 torch thread(s) instead of 2; "
        "set OMP_NUM_THREADS to choose"
    )
    chosen = subprocess.run(
        [sys.executable, str(WARM), "-c", code], capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "2"}
    )
    assert chosen.stdout.strip() == "2 None"
