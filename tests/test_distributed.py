"""Every trainer and experiment preset runs (GPU presets simulated on the CPU), FSDP2 shards and clips,
one run folder per job on every launcher, sweeps of multi-process jobs, validation by optimizer step."""

from __future__ import annotations

import csv
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import lightning_gpt
from lightning_gpt.evaluation import evaluate_multiple_choice, read_questions

from .support.config import ROOT, TINY, TINY_SHAKESPEARE
from .support.eval_tasks import hellaswag_rows, write_jsonl
from .support.processes import kill_group, run_app, start_app, wait_for_step
from .support.runs import saved_step
from .support.tiers import fast_first

DATA = ["data=local", f"data.path={TINY_SHAKESPEARE}"]
GRAD_NORMS = "+callbacks.grad_norms._target_=tests.support.callbacks.RecordGradNorm"


def metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def values(run: Path, key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in metrics(run) if r.get(key)]


def grad_norms(run: Path) -> list[float]:
    return [float(line.split()[1]) for line in (run / "grad_norms.txt").read_text().splitlines()]


def last_step(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


def the_run(root: Path) -> Path:
    """The one run folder under root/outputs (there must be exactly one)."""
    runs = [p.parent for p in (root / "outputs").rglob("config.yaml") if ".hydra" not in p.parts]
    assert len(runs) == 1, runs
    return runs[0]


# ---------------------------------------------------------------------------------------------------
# Single-process presets, in-process


@pytest.mark.parametrize(
    "preset",
    [
        ["trainer=default"],
        ["trainer=cpu"],
        ["trainer=gpu", "trainer.accelerator=cpu"],  # bf16-mixed + fused AdamW + clipping (Lightning #21435)
        ["experiment=nanogpt_baby"],
        ["experiment=nanogpt_shakespeare_char", "data.batch_size=8", "data.val_batches=2"],
        ["experiment=speedrun_baby", "model.n_kv_head=2"],  # Muon + AdamW, the stop at a target loss
        # the same under FSDP2 (Muon's work shared out; one process here, several in test_parallel_muon)
        [
            "experiment=speedrun_baby",
            "model.n_kv_head=2",
            "trainer=fsdp",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
        ],
        # GPT-2 BPE, accumulation, 2 loader workers; on one CPU process, a tiny model uncompiled
        [
            "experiment=gpt2_124m",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "model.compile=false",
            "model.vocab_multiple=1",
            "data.batch_size=2",
            "data.val_fraction=0.1",
            "trainer.accumulate_grad_batches=2",
            "logger=[csv,tensorboard]",  # not W&B's seconds of start-up (test_loggers runs it)
        ],
    ],
    ids=lambda p: " ".join(o for o in p if o.startswith(("trainer=", "experiment="))),
)
@pytest.mark.slow
def test_each_single_process_preset_trains_clips_and_resumes(preset, lgpt_train, tmp_path):
    tiny = [o for o in TINY if not o.startswith("data.batch_size")] if "data.batch_size=2" in preset else TINY
    args = [*preset, *tiny, *DATA, "trainer.val_check_interval=3", "trainer.gradient_clip_val=0.05", GRAD_NORMS]
    lgpt_train(*args, "trainer.max_steps=4")
    run = tmp_path / "run"
    assert last_step(run) == 4
    assert [s for s, _ in values(run, "val/loss")] == [2, 3]  # every 3 optimizer steps, and at the last (step 4)
    assert max(grad_norms(run)) <= 0.05 + 1e-6  # clipped, whatever the precision and optimizer
    lgpt_train(*args, "trainer.max_steps=6", f"ckpt_path={run}", run_dir=tmp_path / "resumed")
    assert last_step(tmp_path / "resumed") == 6


@pytest.mark.slow
def test_validation_counts_optimizer_steps_under_accumulation(lgpt_train, tmp_path):
    lgpt_train(*TINY, *DATA, "trainer.max_steps=6", "trainer.val_check_interval=2", "trainer.accumulate_grad_batches=3")
    # Lightning logs validation at the step count before the step that triggered it increments.
    assert [s for s, _ in values(tmp_path / "run", "val/loss")] == [1, 3, 5]


# ---------------------------------------------------------------------------------------------------
# Several processes on the CPU (gloo)


def cli(tmp_path: Path, cache_dir: Path, *overrides: str, **kwargs) -> subprocess.CompletedProcess:
    flags = [o for o in overrides if o.startswith("-")]  # Hydra's flags (-m) come before the overrides
    result = run_app(
        "lightning_gpt.apps.train",
        *flags,
        *TINY,
        *DATA,
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={cache_dir}",
        *[o for o in overrides if o not in flags],
        **kwargs,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_shards_clips_checkpoints_and_resumes_bit_exactly(tmp_path, cache_dir, capsys):
    """Uninterrupted with one-file checkpoints; SIGKILLed (every process) after a sharded checkpoint and resumed
    on 2 processes (with activation checkpointing on): the same weights and optimizer state bit for bit, each
    moment at its parameter. (4 processes: test_an_fsdp_run_killed_mid_training_resumes_...)"""
    from lightning_gpt.checkpoints import load_checkpoint

    common = [
        "trainer=fsdp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.val_check_interval=3",
        "trainer.gradient_clip_val=0.05",
        GRAD_NORMS,
    ]
    sharded = "trainer.strategy.save_distributed_checkpoint=true"
    # The whole run also scores 9 questions at each validation, 5 and 4 per process (the downstream callback):
    # the sharded model needs every process to run as many forwards, and the summed counts must be exact.
    questions = write_jsonl(tmp_path / "questions.jsonl", hellaswag_rows(9, max_ending=24))
    downstream = [
        "callbacks=[default,downstream]",
        f"callbacks.downstream.path={questions}",
        "callbacks.downstream.batch_size=4",
    ]
    cli(tmp_path / "whole", cache_dir, *common, *downstream, "trainer.max_steps=6")
    half = tmp_path / "half" / "outputs" / "run"
    slow = ["+callbacks.slow._target_=tests.support.callbacks.Slow", "+callbacks.slow.seconds=0.3"]
    killed = start_app(
        "lightning_gpt.apps.train",
        *TINY,
        *DATA,
        f"paths.root_dir={tmp_path / 'half'}",
        f"paths.cache_dir={cache_dir}",
        f"hydra.run.dir={half}",
        *common,
        "trainer.max_steps=6",
        sharded,
        "callbacks.model_checkpoint.every_n_train_steps=1",
        *slow,
    )
    wait_for_step(half / "checkpoints" / "last.ckpt", 2, killed)
    kill_group(killed)  # every process at once, as a lost node
    assert (half / "checkpoints" / "last.ckpt").is_symlink()  # a link to a folder of shards
    assert 2 <= saved_step(half / "checkpoints" / "last.ckpt") < 6
    cli(
        tmp_path / "half",
        cache_dir,
        *common,
        "trainer.max_steps=6",
        f"ckpt_path={half}",
        "trainer.strategy.activation_checkpointing=true",
    )
    whole, resumed = the_run(tmp_path / "whole"), the_run(tmp_path / "half")  # resumed in its own folder
    assert grad_norms(whole)[-1] <= 0.05 + 1e-6 and "DTensor" in (whole / "grad_norms.txt").read_text()
    a, b = (load_checkpoint(r / "checkpoints" / "last.ckpt") for r in (whole, resumed))  # a file; a folder
    assert a["global_step"] == b["global_step"] == 6
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    moments_a, moments_b = (c["optimizer_states"][0]["state"] for c in (a, b))
    assert moments_a.keys() == moments_b.keys()
    assert all(torch.equal(v, moments_b[i][k]) for i, s in moments_a.items() for k, v in s.items())
    assert values(resumed, "val/loss")[-1][1] == values(whole, "val/loss")[-1][1]
    # The one-file checkpoint loads anywhere (lgpt-sample, lgpt-export and lgpt-eval load through lightning_gpt.load).
    model, tokenizer = lightning_gpt.load(whole / "checkpoints" / "last.ckpt")
    assert model.num_params() > 0 and tokenizer.name == "char"
    one_process = evaluate_multiple_choice(model, tokenizer, read_questions(questions))
    assert [s for s, _ in values(whole, "eval/questions/acc")] == [2, 5]
    assert values(whole, "eval/questions/acc")[-1][1] == pytest.approx(one_process["acc"])
    assert values(whole, "eval/questions/acc_norm")[-1][1] == pytest.approx(one_process["acc_norm"])
    from lightning_gpt.apps import sample

    assert sample.main([f"ckpt_path={whole}", "max_new_tokens=10", "prompt=KING", "device=cpu"]) == 0
    assert capsys.readouterr().out.startswith("KING")


# A Llama whose 4 heads, 4 key/value heads and 128 hidden units 4 tensor-parallel processes divide.
LLAMA = ["model=llama_baby", "model.n_head=4", "model.n_kv_head=4", "trainer.precision=32-true"]


@pytest.mark.slow
def test_fsdp_tp_on_four_cpu_processes_trains_as_one_process_and_every_tool_reads_its_shards(
    tmp_path, cache_dir, capsys
):
    """trainer=fsdp_tp with tensor_parallel_size=4: one data-parallel group of 4 processes splitting every block's
    heads and hidden units, which reads the one-process run's batches. Its losses are the one process's (fp32:
    sums in another order, measured within 2e-6); its sharded checkpoint samples and exports in one process and
    resumes on 2 FSDP processes into a one-file checkpoint."""
    steps = ["trainer.max_steps=4", "trainer.val_check_interval=4"]
    cli(tmp_path / "one", cache_dir, *LLAMA, *steps)
    done = cli(
        tmp_path / "tp",
        cache_dir,
        *LLAMA,
        *steps,
        "trainer=fsdp_tp",
        "trainer.accelerator=cpu",
        "trainer.devices=4",
        "trainer.strategy.tensor_parallel_size=4",
    )
    assert "global batch: 1 data-parallel groups x 8 sequences" in done.stdout + done.stderr
    one, tp = the_run(tmp_path / "one"), the_run(tmp_path / "tp")
    assert [s for s, _ in values(tp, "train/loss")] == [s for s, _ in values(one, "train/loss")]
    for (_, a), (_, b) in zip(values(one, "train/loss"), values(tp, "train/loss")):
        assert a == pytest.approx(b, abs=1e-5)
    assert values(tp, "val/loss")[-1][1] == pytest.approx(values(one, "val/loss")[-1][1], abs=1e-5)

    last = tp / "checkpoints" / "last.ckpt"
    assert last.is_symlink() and sorted(p.name for p in last.resolve().glob("*.distcp")) == [
        f"__{r}_0.distcp" for r in range(4)
    ]
    from lightning_gpt.apps import export, sample
    from lightning_gpt.checkpoints import load_checkpoint

    saved = load_checkpoint(last)["state_dict"]
    model, _ = lightning_gpt.load(tp)  # the run folder: its sharded last.ckpt
    assert all(torch.equal(model.state_dict()[k.removeprefix("model.")], v) for k, v in saved.items())
    assert sample.main([f"ckpt_path={tp}", "max_new_tokens=10", "prompt=KING", "device=cpu"]) == 0
    assert capsys.readouterr().out.startswith("KING")
    assert export.main([f"ckpt_path={last}", f"out_dir={tmp_path / 'hf'}"]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    # Resumed on 2 FSDP processes (DCP reshards 4 tensor-parallel pieces into 2 FSDP shards), saved as one file.
    resume = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", f"ckpt_path={tp}"]
    cli(tmp_path / "tp", cache_dir, *LLAMA, "trainer.max_steps=6", "trainer.val_check_interval=6", *resume)
    assert (tp / "checkpoints" / "last.ckpt").is_file() and last_step(tp) == 6


@pytest.mark.slow
def test_an_fsdp_run_killed_mid_training_resumes_from_its_shards_as_if_never_stopped(tmp_path, cache_dir):
    """trainer=fsdp on 4 processes, sharded checkpoints every 2 steps, every process SIGKILLed mid-run: resumed
    on the same count from the newest whole folder, it logs the uninterrupted run's losses bit for bit. (2
    processes: test_fsdp_on_two_cpu_processes_..., which also compares weights and moments.)"""
    devices = 4
    from .support.runs import train_args, train_losses

    common = [
        "trainer=fsdp",
        f"trainer.devices={devices}",
        "trainer.precision=32-true",
        "trainer.strategy.save_distributed_checkpoint=true",
        "trainer.max_steps=10",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=10",
        "callbacks.model_checkpoint.every_n_train_steps=2",
    ]
    whole = run_app("lightning_gpt.apps.train", *train_args(tmp_path, cache_dir, "whole", *common))
    assert whole.returncode == 0, whole.stderr[-3000:]
    slow = ["+callbacks.slow._target_=tests.support.callbacks.Slow", "+callbacks.slow.seconds=0.3"]
    killed = start_app("lightning_gpt.apps.train", *train_args(tmp_path, cache_dir, "killed", *common, *slow))
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    wait_for_step(last, 4, killed)
    kill_group(killed)  # every process at once, as a lost node
    resumed_from = saved_step(last)
    assert last.is_symlink() and 4 <= resumed_from < 10
    resumed = run_app(
        "lightning_gpt.apps.train",
        *train_args(tmp_path, cache_dir, "killed", *common, f"ckpt_path={tmp_path / 'killed'}"),
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = train_losses(tmp_path / "whole"), train_losses(tmp_path / "killed")
    assert max(got) == 9 and {s: got[s] for s in got if s >= resumed_from} == {
        s: expected[s] for s in range(resumed_from, 10)
    }


@pytest.mark.parametrize("trainer", ["trainer=cpu", "trainer=fsdp"])
@pytest.mark.slow
def test_a_resume_takes_this_launchs_optimizer_settings(trainer, lgpt_train, tmp_path):
    """optim.lr and optim.weight_decay of the resuming launch, not the checkpoint's: under FSDP the strategy
    loads the optimizer itself, before Lightning's own restore would."""
    from lightning_gpt.optim import schedule
    from lightning_gpt.schema import OptimConfig

    fsdp = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true"] if "fsdp" in trainer else []
    args = [trainer, *fsdp, *TINY, *DATA, "trainer.val_check_interval=2"]
    run = lgpt_train(*args, "trainer.max_steps=2")
    lgpt_train(*args, "trainer.max_steps=3", f"ckpt_path={run}", "optim.lr=2e-3", "optim.weight_decay=0.05")
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    groups, o = saved["optimizer_states"][0]["param_groups"], OptimConfig(**saved["hyper_parameters"]["optim"])
    assert (o.lr, o.weight_decay) == (2e-3, 0.05)
    assert groups[0]["weight_decay"] == 0.05 and groups[0]["lr"] == pytest.approx(2e-3 * schedule(o)(3))


@pytest.mark.parametrize(
    "overrides, message",
    fast_first(
        [
            (
                ["trainer=fsdp_tp", "trainer.devices=4"],
                "trainer.strategy.tensor_parallel_size=2 needs the llama family",
            ),
            (
                ["model=llama_baby", "trainer=fsdp", "trainer.devices=4", "trainer.strategy.tensor_parallel_size=3"],
                r"trainer.strategy.data_parallel_replicate \(1\) x trainer.strategy.tensor_parallel_size \(3\) = 3 "
                r"must divide the number of processes \(4\)",
            ),
            (
                ["model=llama_baby", "model.n_kv_head=1", "trainer=fsdp_tp", "trainer.devices=4"],
                r"trainer.strategy.tensor_parallel_size=2 must divide the model's n_kv_head \(1\)",
            ),
            (
                ["model=llama_baby", "model.block_size=31", "trainer=fsdp_tp", "trainer.devices=2"]
                + ["trainer.strategy.sequence_parallel=true"],
                r"trainer.strategy.tensor_parallel_size=2 processes, which must divide its 31 positions",
            ),
            (
                ["model=llama_baby", "trainer=hsdp", "trainer.devices=3", "trainer.strategy.data_parallel_replicate=2"],
                r"trainer.strategy.data_parallel_replicate \(2\) x trainer.strategy.tensor_parallel_size \(1\) = 2",
            ),
        ],
        keep=2,
    ),
    ids=["gpt2", "devices", "kv-heads", "sequence", "hsdp"],
)
def test_a_mesh_that_cannot_fit_is_one_line_before_anything_is_made(overrides, message, lgpt_train, tmp_path, capsys):
    lgpt_train("trainer.accelerator=cpu", *TINY, *DATA, *overrides, code=2)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "run").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_two_nodes(tmp_path: Path, cache_dir: Path, rendezvous: list[str], *overrides: str) -> None:
    """Two torchrun agents on this machine, one process each, as two nodes would run them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        "trainer=multinode",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.num_nodes=2",
        *TINY,
        *DATA,
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={cache_dir}",
        *overrides,
    ]
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                *[a.format(node=node) for a in rendezvous],
                "-m",
                "lightning_gpt.apps.train",
                *args,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), outputs[0][-2000:] + outputs[1][-2000:]


@pytest.mark.slow
def test_torchrun_static_and_c10d_rendezvous_make_one_run_folder_and_resume(tmp_path, cache_dir):
    static = ["--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={free_port()}"]
    torchrun_two_nodes(tmp_path, cache_dir, static, "trainer.max_steps=4", "trainer.val_check_interval=4")
    run = the_run(tmp_path)  # one folder for both nodes, without a job id
    assert last_step(run) == 4
    assert "global_batch_size: 16" in (run / "csv" / "hparams.yaml").read_text()  # 2 nodes x 8 sequences
    c10d = ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}"]
    torchrun_two_nodes(tmp_path, cache_dir, c10d, "trainer.max_steps=6", f"ckpt_path={run}")
    assert the_run(tmp_path) == run and last_step(run) == 6  # both nodes continued the run in its folder


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "submitit_local"])
def test_a_sweep_of_ddp_jobs_runs_every_job(launcher, tmp_path, cache_dir):
    """Each job one 2-process training in its own run folder, its W&B run named and grouped after it (checked
    with the basic launcher: W&B's start-up, seconds, would add nothing to what submitit's jobs show)."""
    from .test_loggers import wandb_runs

    if launcher != "basic":
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    loggers = ["logger=[csv,wandb]", "logger.wandb.offline=true"] if launcher == "basic" else ["logger=csv"]
    cli(
        tmp_path,
        cache_dir,
        "-m",
        f"hydra/launcher={launcher}",
        "trainer=ddp_cpu",
        "optim.lr=1e-3,3e-4",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        *loggers,
    )
    jobs = sorted(p.parent.parent for p in (tmp_path / "outputs").glob("train/multiruns/*/*/checkpoints/last.ckpt"))
    assert [j.name for j in jobs] == ["0", "1"]
    saved = [torch.load(j / "checkpoints" / "last.ckpt", weights_only=True) for j in jobs]
    assert [s["global_step"] for s in saved] == [4, 4]
    assert {s["hyper_parameters"]["optim"]["lr"] for s in saved} == {1e-3, 3e-4}
    assert all("global_batch_size: 16" in (j / "csv" / "hparams.yaml").read_text() for j in jobs)  # 2 processes
    if launcher != "basic":
        assert list(jobs[0].parent.glob(".submitit/*/*_log.out"))  # submitit's logs stay in the sweep folder
        return
    sweep = jobs[0].parent.name
    runs = [wandb_runs(j) for j in jobs]
    assert [[(r.display_name, r.run_group) for r in job] for job in runs] == [
        [(f"{sweep}/0", sweep)],
        [(f"{sweep}/1", sweep)],
    ]
    assert {next(t for t in job[0].tags if t.startswith("optim.lr=")) for job in runs} == {
        "optim.lr=0.001",  # as the sweeper writes them
        "optim.lr=0.0003",
    }


def compose_launcher(tmp_path: Path, *overrides: str):
    from hydra.utils import instantiate

    from .support.config import compose

    cfg = compose("train", f"paths.root_dir={tmp_path}", *overrides, hydra=True)
    return cfg, instantiate(cfg.hydra.launcher)


def test_the_submitit_slurm_launcher_makes_one_job_a_multi_gpu_training_that_lightning_requeues(tmp_path, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import submitit

    from lightning_gpt.apps.messages import describe

    overrides = ["hydra/launcher=submitit_slurm", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2"]
    cfg, launcher = compose_launcher(tmp_path, *overrides)
    assert launcher.params["submitit_folder"] == f"{cfg.hydra.sweep.dir}/.submitit/%j"  # in the sweep folder
    # The sbatch script the launcher's executor would submit (submitit wants an srun to exist to build it).
    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "submitit")
    generic = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name"}
    params = {k: v for k, v in launcher.params.items() if k not in ("submitit_folder", "max_num_timeout")}
    executor.update_parameters(
        **{k if k in generic | {"stderr_to_stdout"} else f"slurm_{k}": v for k, v in params.items()}
    )
    sbatch = executor._executor._make_submission_file_text("python -m lightning_gpt.apps.train", "uid").splitlines()
    for line in "--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--signal=USR1@90", "--requeue":
        assert f"#SBATCH {line}" in sbatch
    # trainer.devices=auto (trainer=ddp's) cannot reserve GPUs: one line says what to give.
    with pytest.raises(Exception) as error:
        compose_launcher(tmp_path, "hydra/launcher=submitit_slurm", "trainer=ddp")
    assert describe(error.value) == (
        "trainer.devices=auto: the launcher reserves GPUs for each job, give their number: trainer.devices=N"
    )


def test_the_submitit_local_launcher_runs_one_process_per_job_that_sees_its_gpus(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    _, launcher = compose_launcher(tmp_path, "hydra/launcher=submitit_local", "trainer=ddp", "trainer.devices=2")
    assert (launcher.params["tasks_per_node"], launcher.params["gpus_per_node"]) == (1, 2)  # Lightning starts the rest


def test_two_trainings_in_one_slurm_job_get_two_folders(tmp_path, cache_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("LGPT_RUN_STAMP", "TORCHELASTIC_RUN_ID")}
    env["SLURM_JOB_ID"] = "4242"
    script = "from lightning_gpt.runs import run_stamp; import sys; print(run_stamp(sys.argv[1:]))"

    def name(*overrides: str) -> str:
        command = [sys.executable, "-c", script, *overrides]
        return subprocess.run(command, env=env, capture_output=True, text=True).stdout.strip()

    first, again, other = name("optim.lr=1e-3"), name("optim.lr=1e-3"), name("optim.lr=3e-4")
    assert first.startswith("job4242_") and first == again  # every node, and the requeued job, agree
    assert other != first  # a second training in the same job gets its own folder


@pytest.mark.parametrize(
    "override, message",
    fast_first(
        [
            ("trainer.precision=garbage", "bad trainer setting: Precision 'garbage' is invalid"),
            ("trainer.strategy=garbage", "bad trainer setting: You selected an invalid strategy name"),
            ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps must be >= 1, got 0"),
            ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be >= 1, got 0"),
            ("trainer.val_check_interval=0", r"trainer.val_check_interval must be > 0, got 0"),
            ("trainer.val_check_interval=sometimes", "trainer.val_check_interval must be a positive number"),
            ("data.block_size=64", r"data.block_size=64 is longer than the model's context \(model.block_size=32\)"),
        ],
        keep=2,
    ),
)
def test_bad_trainer_settings_are_one_line_errors(override, message, lgpt_train, capsys):
    lgpt_train(*TINY, *DATA, "trainer.max_steps=2", override, code=2)
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.slow
def test_a_fresh_run_never_writes_into_a_folder_holding_another_run(lgpt_train, tmp_path, capsys):
    lgpt_train(*TINY, *DATA, "trainer.max_steps=2")
    before = (tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes()
    lgpt_train(*TINY, *DATA, "trainer.max_steps=2", "optim.lr=3e-4", code=2)
    assert "already holds another run's checkpoints; resume it with ckpt_path=auto" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes() == before


@pytest.mark.slow
def test_two_trainings_in_one_slurm_job_each_resume_their_own_after_a_kill(tmp_path, cache_dir):
    """Two `lgpt-train` calls in one SLURM job; the first is killed, and its requeued command resumes it."""
    common = [
        *TINY,
        *DATA,
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={cache_dir}",
        "trainer.max_steps=30",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "ckpt_path=auto",
        "+callbacks.slow._target_=tests.support.callbacks.Slow",
        "+callbacks.slow.seconds=0.03",  # 30 steps take over a second: the kill lands mid-run
    ]
    first, second = [*common, "optim.lr=1e-3"], [*common, "optim.lr=3e-4"]
    proc = start_app("lightning_gpt.apps.train", *first, env={"SLURM_JOB_ID": "4242"})
    runs = tmp_path / "outputs" / "train" / "runs"
    while not list(runs.glob("job4242_*/checkpoints/last.ckpt")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    [killed] = [p.parent.parent for p in runs.glob("job4242_*/checkpoints/last.ckpt")]
    wait_for_step(killed / "checkpoints" / "last.ckpt", 2, proc)
    kill_group(proc)
    assert saved_step(killed / "checkpoints" / "last.ckpt") < 30
    for args in (second, first):  # the second training, then the first's requeued command
        done = run_app("lightning_gpt.apps.train", *args, env={"SLURM_JOB_ID": "4242"})
        assert done.returncode == 0, done.stderr[-3000:]
    folders = sorted(runs.iterdir())
    assert len(folders) == 2 and killed in folders
    assert (killed / "resumes.yaml").is_file()  # resumed from its own checkpoint, not restarted
    for folder in folders:
        saved = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
        assert saved["global_step"] == 30
        assert saved["hyper_parameters"]["optim"]["lr"] == (1e-3 if folder == killed else 3e-4)
