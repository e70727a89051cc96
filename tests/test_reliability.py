"""Runs die; resuming is exact; checkpoints are never corrupt; every mistake is one clear line."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_gpt.cli import describe
from lightning_gpt.errors import UserError
from lightning_gpt.train import task

from .conftest import TINY, TINY_SHAKESPEARE

ROOT = Path(__file__).resolve().parents[1]
DATA = ["data=local", f"data.path={TINY_SHAKESPEARE}"]


def train_args(tmp_path: Path, cache_dir: Path, run: str, *extra: str) -> list[str]:
    return [*TINY, *DATA, f"paths.root_dir={tmp_path}", f"paths.cache_dir={cache_dir}",
            f"hydra.run.dir={tmp_path / run}", *extra]  # fmt: skip


def start(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lightning_gpt.train", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)  # fmt: skip


def run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_gpt.train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def saved_step(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True, map_location="cpu", mmap=True)["global_step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


def wait_for_step(path: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while saved_step(path) < step:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def train_losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


EXACT = ["model.dropout=0.1", "trainer.deterministic=true", "trainer.log_every_n_steps=1", "trainer.max_steps=40",
         "trainer.val_check_interval=20", "callbacks.model_checkpoint.every_n_train_steps=5"]  # fmt: skip


def test_a_run_killed_and_resumed_logs_the_same_losses_as_an_uninterrupted_one(tmp_path, cache_dir):
    whole = run(train_args(tmp_path, cache_dir, "whole", *EXACT))
    assert whole.returncode == 0, whole.stderr[-3000:]
    proc = start(train_args(tmp_path, cache_dir, "killed", *EXACT, "+callbacks.slow._target_=tests.helpers.Slow"))
    wait_for_step(tmp_path / "killed" / "checkpoints" / "last.ckpt", 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    resumed_from = saved_step(tmp_path / "killed" / "checkpoints" / "last.ckpt")
    assert 10 <= resumed_from < 40
    resumed = run(train_args(tmp_path, cache_dir, "resumed", *EXACT, f"ckpt_path={tmp_path / 'killed'}"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = train_losses(tmp_path / "whole"), train_losses(tmp_path / "resumed")
    assert min(got) == resumed_from and max(got) == 39
    assert got == {step: expected[step] for step in got}  # bit for bit: weights, optimizer, LR, RNG, data


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_preempting_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path, cache_dir, signum):
    args = train_args(tmp_path, cache_dir, "run", "callbacks.model_checkpoint.every_n_train_steps=5")
    proc = start([*args, "trainer.max_steps=500", "+callbacks.slow._target_=tests.helpers.Slow"])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    wait_for_step(last, 5, proc)
    time.sleep(0.3)  # a few steps past the periodic checkpoint
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    stopped_at = saved_step(last)
    assert 5 < stopped_at < 500  # saved at the signal, not just the last periodic checkpoint
    resumed = run([*args, f"trainer.max_steps={stopped_at + 3}", "ckpt_path=auto"])  # as a requeued job would
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert saved_step(last) == stopped_at + 3


def recorded_losses(run_dir: Path) -> dict[tuple[int, int], float]:
    """{(step, micro-batch): loss} from tests.helpers.RecordLosses, across every run in the folder."""
    with open(run_dir / "losses.jsonl") as f:
        return {(r["step"], r["micro_batch"]): r["loss"] for r in map(json.loads, f)}


ACCUMULATING = ["model.dropout=0.1", "trainer.deterministic=true", "trainer.accumulate_grad_batches=2",
                "trainer.max_steps=20", "trainer.val_check_interval=10",
                "+callbacks.record._target_=tests.helpers.RecordLosses"]  # fmt: skip


@pytest.fixture(scope="module")
def accumulating_run(tmp_path_factory, cache_dir) -> Path:
    tmp = tmp_path_factory.mktemp("whole")
    result = run(train_args(tmp, cache_dir, "whole", *ACCUMULATING))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "whole"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_a_signal_between_micro_batches_stops_after_the_step_and_resumes_exactly(
    tmp_path, cache_dir, accumulating_run, signum
):
    # Batch 22 is the first micro-batch of step 12: the run must go on to the step's end, then save.
    signal_at = ["+callbacks.signal._target_=tests.helpers.SignalAt", f"+callbacks.signal.signum={int(signum)}",
                 "+callbacks.signal.batch=22"]  # fmt: skip
    stopped = run(train_args(tmp_path, cache_dir, "run", *ACCUMULATING, *signal_at))
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    assert f"stopped by {signum.name} at step 12" in stopped.stdout + stopped.stderr
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == 12 and last["GPTDataModule"]["batches_seen"] == 24
    resumed = run(train_args(tmp_path, cache_dir, "run", *ACCUMULATING, "ckpt_path=auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = recorded_losses(accumulating_run), recorded_losses(tmp_path / "run")
    assert len((tmp_path / "run" / "losses.jsonl").read_text().splitlines()) == 40  # each micro-batch once
    assert got == expected  # bit for bit: the resumed steps are the uninterrupted run's


def test_a_kill_during_a_save_never_leaves_a_corrupt_checkpoint(tmp_path, cache_dir):
    # 1.6M parameters: each save (weights + Adam moments, ~20 MB, synced to disk) can be killed midway.
    args = train_args(tmp_path, cache_dir, "run", "model.n_layer=2", "model.n_embd=256", "model.n_head=8",
                      "trainer.max_steps=1000", "callbacks.model_checkpoint.every_n_train_steps=1")  # fmt: skip
    folder = tmp_path / "run" / "checkpoints"
    for _ in range(10):
        proc = start(args)
        wait_for_step(folder / "last.ckpt", 1, proc)
        while not (folder / "last.ckpt.tmp").exists():  # a save is under way
            assert proc.poll() is None
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        if (folder / "last.ckpt.tmp").exists():
            break  # killed mid-write: exactly the case to check
    assert (folder / "last.ckpt.tmp").exists(), "never managed to kill during a save"
    assert saved_step(folder / "last.ckpt") >= 1  # the previous checkpoint is whole and loads


def test_a_kill_during_a_multi_process_save_never_leaves_a_corrupt_checkpoint(tmp_path, cache_dir):
    args = train_args(
        tmp_path,
        cache_dir,
        "run",
        "trainer=ddp_cpu",
        "model.n_layer=2",
        "model.n_embd=512",
        "model.n_head=8",
        "trainer.max_steps=1000",
        "callbacks.model_checkpoint.every_n_train_steps=1",
    )
    folder = tmp_path / "run" / "checkpoints"
    proc = start(args, start_new_session=True)
    wait_for_step(folder / "last.ckpt", 2, proc)
    while not (folder / "last.ckpt.tmp").exists():
        assert proc.poll() is None
        time.sleep(0.001)
    os.killpg(proc.pid, signal.SIGKILL)  # every rank at once, as a lost node would
    proc.communicate()
    assert saved_step(folder / "last.ckpt") >= 2


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, cache_dir):
    args = train_args(tmp_path, cache_dir, "run", "trainer.max_steps=100", "trainer.log_every_n_steps=5",
                      "callbacks.model_checkpoint.every_n_train_steps=10",
                      "+callbacks.poison._target_=tests.helpers.PoisonWeights",
                      "+callbacks.poison.step=12")  # fmt: skip
    result = run(args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: the training loss is nan at step 14") and "Traceback" not in result.stderr
    assert saved_step(tmp_path / "run" / "checkpoints" / "last.ckpt") == 10
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, cache_dir) -> Path:
    tmp = tmp_path_factory.mktemp("ckpt")
    result = run(train_args(tmp, cache_dir, "run", "trainer.max_steps=5", "trainer.val_check_interval=5"))
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "run" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.n_layer=3", "it was trained with model.n_layer=2, this run has model.n_layer=3"),
        ("tokenizer=byte", "it was trained with tokenizer.name=char, this run has tokenizer.name=byte"),
    ],
)
def test_resuming_with_another_shape_or_tokenizer_names_what_differs(tiny_checkpoint, compose_train, override, message):
    cfg = compose_train(*TINY, *DATA, override, f"ckpt_path={tiny_checkpoint}")
    with pytest.raises(UserError, match=message):
        task(cfg)


def test_a_truncated_checkpoint_is_a_clear_error(tiny_checkpoint, compose_train, tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(UserError, match="is truncated or corrupt"):
        task(compose_train(*TINY, *DATA, f"ckpt_path={broken}"))
    not_ours = tmp_path / "weights.ckpt"
    torch.save({"weights": torch.zeros(3)}, not_ours)
    with pytest.raises(UserError, match="is not a lightning_gpt checkpoint"):
        task(compose_train(*TINY, *DATA, f"ckpt_path={not_ours}"))


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tiny_checkpoint, tmp_path, cache_dir):
    run_dir = tiny_checkpoint.parent.parent
    before = tiny_checkpoint.read_bytes()
    # The file-size limit makes the next checkpoint write fail as a full disk would (EFBIG instead of ENOSPC).
    limited = (
        "import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) // 2}, {len(before) // 2}));"
        "sys.argv = ['lgpt-train', *sys.argv[1:]]; runpy.run_module('lightning_gpt.train', run_name='__main__')"
    )
    args = [*train_args(tmp_path, cache_dir, "x"), f"hydra.run.dir={run_dir}", "trainer.max_steps=8",
            "trainer.val_check_interval=8", "ckpt_path=auto"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", limited, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: no space left to save")
    assert tiny_checkpoint.read_bytes() == before
    assert not list(tiny_checkpoint.parent.glob("*.tmp"))


BAD_INPUTS = [
    (["model.n_embd=100", "model.n_head=3"], "model.n_embd (100) must be divisible by model.n_head (3)"),
    (["model.block_size=0"], "block_size must be a positive integer, got 0"),
    (["data.batch_size=0"], "data.batch_size must be a positive integer, got 0"),
    (["optim.lr=0"], "optim.lr must be positive, got 0.0"),
    (["data=local", "data.path=/nonexistent/corpus.txt"], "matches no files"),
    (["tokenizer.name=sentencepiece"], "unknown tokenizer 'sentencepiece'"),
    (["tokenizer=gpt2", "model.vocab_size=1000"], "smaller than the gpt2 tokenizer's 50257 tokens"),
    (["ckpt_path=/nonexistent/last.ckpt"], "checkpoint not found"),
    (["data=local", "data.path=${paths.root_dir}/short.txt", "model.block_size=64"], "fewer than block_size + 1"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_INPUTS)
def test_bad_input_is_one_clear_error(compose_train, tmp_path, overrides, message):
    (tmp_path / "short.txt").write_text("to be or not to be\n")
    with pytest.raises(UserError) as error:
        task(compose_train(*TINY, *overrides))
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.n_layers=4", "unknown config key 'model.n_layers'; did you mean 'model.n_layer'?"),
        ("optim.lr=fast", "bad value for 'optim.lr'"),
        ("data.pth=x", "did you mean 'data.path'?"),
        ("model=gpt5", "Could not find 'model/gpt5'"),
    ],
)
def test_config_mistakes_are_one_line_naming_the_key(compose_train, override, message):
    with pytest.raises(Exception) as error:
        compose_train(override)
    assert message in describe(error.value) and "\n" not in describe(error.value)


def test_the_cli_prints_one_line_and_exits_2_with_the_traceback_on_demand(tmp_path, cache_dir):
    result = run(train_args(tmp_path, cache_dir, "run", "model.n_head=5"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: model.n_embd (32) must be divisible by model.n_head (5); try model.n_head=4"
    ]
    full = subprocess.run([sys.executable, "-m", "lightning_gpt.train", *train_args(tmp_path, cache_dir, "run"),
                           "model.n_head=5"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HYDRA_FULL_ERROR": "1"})  # fmt: skip
    assert full.returncode != 0 and "Traceback" in full.stderr


def test_an_unwritable_output_folder_is_a_clear_error(tmp_path, cache_dir):
    (tmp_path / "a_file").write_text("")
    result = run(train_args(tmp_path, cache_dir, "a_file/run"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot write")
