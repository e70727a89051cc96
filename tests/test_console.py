"""What a user reads: in a terminal, in a file a scheduler writes, in train.log, and when a name is misspelt."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios

import pytest

from lightning_gpt.apps.train import main

from .support.config import ROOT, TINY_SHAKESPEARE_DATA
from .support.processes import child_env
from .support.runs import train, train_args

TRAIN = [sys.executable, "-m", "lightning_gpt.apps.train"]
BAR = re.compile(r"\d+/\d+ \[|it/s\]")  # a tqdm bar's count and rate
LOG = re.compile(r"^(global batch|model: |`Trainer.fit` stopped|Reached val/loss|GPU available)")


def terminal(args: list[str], columns: int = 120) -> list[str]:
    """What a terminal shows after the command ran in it: its output through a pseudo-terminal of `columns`
    columns, rendered by a terminal emulator (pyte), as screen lines."""
    import pyte

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, cwd=ROOT, env=child_env())
    os.close(follower)
    output = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 1 << 16)
            except OSError:  # the process closed its end
                break
            if not chunk:
                break
            output += chunk
        elif proc.poll() is not None:
            break
    os.close(leader)
    assert proc.wait(timeout=60) == 0, output.decode(errors="replace")[-3000:]
    screen = pyte.HistoryScreen(columns, 50, history=10_000)
    pyte.Stream(screen).feed(output.decode(errors="replace"))
    lines = [
        "".join(char.data for char in line.values()).rstrip() for line in [*screen.history.top, *screen.buffer.values()]
    ]
    return [line for line in lines if line]


@pytest.mark.slow  # a fresh interpreter's console
def test_in_a_terminal_log_lines_stay_off_the_bar_and_the_final_bar_shows_once(tmp_path, cache_dir):
    stop = ["callbacks=[default,stop_at_loss]", "callbacks.stop_at_loss.target=5.0"]  # reached at step 10: logged
    args = train_args(tmp_path, cache_dir, "run", "trainer.max_steps=20", "trainer.val_check_interval=10", *stop)
    screen = terminal([*TRAIN, *(a for a in args if a != "trainer.enable_progress_bar=false")])
    assert [line for line in screen if BAR.search(line) and LOG.search(line)] == []
    assert sum(LOG.search(line) is not None for line in screen) >= 3  # each on a line of its own
    assert [line for line in screen if BAR.search(line)] == [next(line for line in screen if "10/20 [" in line)]
    assert any(line.startswith("Reached val/loss") for line in screen)


@pytest.mark.slow  # a fresh interpreter's console
def test_redirected_to_a_file_the_output_is_plain_lines(tmp_path, cache_dir):
    args = train_args(tmp_path, cache_dir, "run", "trainer.max_steps=20", "trainer.val_check_interval=10")
    with open(tmp_path / "out.txt", "w") as out:
        done = subprocess.run(
            [*TRAIN, *(a for a in args if a != "trainer.enable_progress_bar=false"), "trainer.log_every_n_steps=5"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=child_env(),
            timeout=300,
        )
    text = (tmp_path / "out.txt").read_text()
    assert done.returncode == 0, text[-3000:]
    assert "\r" not in text and "\x1b" not in text  # no bar frames, no cursor control
    lines = text.splitlines()
    assert [line.split(" |")[0] for line in lines if re.match(r"step \d+/20 \|", line)] == [
        f"step {s}/20" for s in (5, 10, 15, 20)
    ]
    assert "step 10: val/loss" in text and "tokens/s" in text and "left" in text


def test_train_log_holds_the_log_the_final_line_and_the_sample(tmp_path, cache_dir, capsys):
    run = train(tmp_path, cache_dir, "run", "trainer.max_steps=4", "trainer.val_check_interval=4")
    log = (run / "train.log").read_text()
    out = capsys.readouterr().out
    final = next(line for line in out.splitlines() if line.startswith("step 4: val/loss"))
    assert "global batch:" in log and final in log
    assert log.rstrip().endswith(out.rstrip().split("--- sample ---")[1].strip()) and "--- sample ---" in log


def test_the_model_summary_is_ours_with_its_flops(tmp_path, cache_dir, capsys):
    train(tmp_path, cache_dir, "run", "trainer.max_steps=1", "trainer.enable_model_summary=true")
    out = capsys.readouterr().out
    [summary] = [line for line in out.splitlines() if "model: gpt2, 2 layers x 32 wide" in line]
    flops = re.search(r"training FLOPs ([\d.]+) (\w?) per token", summary)
    assert flops and float(flops.group(1)) > 0
    assert "Total FLOPs" not in out and "┏" not in out and "| Name" not in out  # not Lightning's, nor Rich's, table


def test_a_finished_run_leaves_no_lock_and_a_smoke_test_leaves_no_folder(tmp_path, cache_dir, capsys):
    run = train(tmp_path, cache_dir, "run", "trainer.max_steps=1")
    assert not (run / ".lock").exists()
    assert main(train_args(tmp_path, cache_dir, "smoke", "debug=fast_dev_run")) == 0
    assert "fast_dev_run: one training and one validation batch ran" in capsys.readouterr().out
    assert not (tmp_path / "smoke").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "experiment=nanogpt_bby",
            "experiment=nanogpt_bby is not an option of experiment/; did you mean experiment=nanogpt_baby?",
        ),
        ("model=lama_baby", "model=lama_baby is not an option of model/; did you mean model=llama_baby?"),
        ("hydra/launcher=submitit_slurn", "did you mean hydra/launcher=submitit_slurm?"),
        ("sample.prompt=Hello, world", """type it as 'sample.prompt="Hello, world"'"""),
    ],
)
def test_a_misspelt_option_or_an_unquoted_comma_gets_the_fix(override, message, capsys):
    assert main(["--cfg", "job", override]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert message in line


@pytest.mark.slow  # a sweep in a process of its own
def test_the_sweepers_library_noise_stays_out(tmp_path):
    """Optuna's coloured log lines and alembic's plugin lines (a line per plugin, with colour codes, in a file
    too) never reach the console."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    args = ["-m", "hparams_search=optuna", "hparams_search.n_trials=1", "trainer.max_steps=2", "model.n_layer=1"]
    args += [f"paths.root_dir={tmp_path}", "model.n_embd=32", "model.n_head=2", "model.block_size=16"]
    done = subprocess.run([*TRAIN, *args], cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    assert "setup plugin alembic" not in console and "\x1b[" not in console
    assert "A new study created" in console  # Optuna's line, as a plain one


@pytest.mark.slow
def test_lgpt_eval_says_the_cpus_are_busy_in_a_plain_line(tmp_path, cache_dir, capsys, monkeypatch):
    import torch

    from lightning_gpt.apps import console, evaluate

    run = train(tmp_path, cache_dir, "run", "trainer.max_steps=2", "trainer.val_check_interval=2")
    capsys.readouterr()
    monkeypatch.setattr(os, "getloadavg", lambda: (3.5, 3.5, 3.5))  # two cores, held by other processes
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(console, "_threads_fitted", False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        args = [f"ckpt_path={run}", f"paths.cache_dir={cache_dir}", *TINY_SHAKESPEARE_DATA, "windows=2"]
        assert evaluate.main([*args, "trainer.accelerator=cpu"]) == 0
    finally:
        torch.set_num_threads(threads)
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("the CPUs are busy (load average 3.5 on 2 cores): using 1 torch thread(s)")
