"""Runs die; resuming is exact; checkpoints are never corrupt; every mistake is one clear line."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import lightning_gpt
from lightning_gpt.apps import evaluate, export, sample
from lightning_gpt.apps.messages import describe
from lightning_gpt.apps.train import main
from lightning_gpt.data.cache import prepare_tokens
from lightning_gpt.data.sources import Source
from lightning_gpt.errors import UserError

from .support.config import ROOT, TINY_SHAKESPEARE, compose
from .support.disks import small_disk
from .support.processes import child_env, kill_group, run_app, start_app, wait_for_step
from .support.runs import read_metrics, saved_step, train, train_args, train_losses
from .support.tiers import fast_first

TRAIN = "lightning_gpt.apps.train"


def refused(capsys, argv: list[str], app=main) -> str:
    """The one line an app prints when it refuses argv (it must exit 2)."""
    code = app(argv)
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in err, err[-3000:]
    return lines[-1].removeprefix("error: ")


EXACT = [
    "model.dropout=0.1",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=1",
    "trainer.max_steps=40",
    "trainer.val_check_interval=20",
    "callbacks.model_checkpoint.every_n_train_steps=5",
]


@pytest.mark.slow
def test_a_run_killed_and_resumed_logs_the_same_losses_as_an_uninterrupted_one(tmp_path, cache_dir):
    train(tmp_path, cache_dir, "whole", *EXACT)
    slow = "+callbacks.slow._target_=tests.support.callbacks.Slow"
    proc = start_app(TRAIN, *train_args(tmp_path, cache_dir, "killed", *EXACT, slow))
    wait_for_step(tmp_path / "killed" / "checkpoints" / "last.ckpt", 10, proc)
    kill_group(proc)
    resumed_from = saved_step(tmp_path / "killed" / "checkpoints" / "last.ckpt")
    assert 10 <= resumed_from < 40
    train(tmp_path, cache_dir, "resumed", *EXACT, f"ckpt_path={tmp_path / 'killed'}")
    expected, got = train_losses(tmp_path / "whole"), train_losses(tmp_path / "resumed")
    assert min(got) == resumed_from and max(got) == 39
    assert got == {step: expected[step] for step in got}  # bit for bit: weights, optimizer, LR, RNG, data


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=lambda s: s.name)
@pytest.mark.slow
def test_a_preempting_signal_saves_a_checkpoint_and_exits_cleanly(tmp_path, cache_dir, signum):
    extra = ["callbacks.model_checkpoint.every_n_train_steps=5"]
    args = train_args(tmp_path, cache_dir, "run", *extra)
    proc = start_app(TRAIN, *args, "trainer.max_steps=500", "+callbacks.slow._target_=tests.support.callbacks.Slow")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    wait_for_step(last, 5, proc)
    time.sleep(0.3)  # a few steps past the periodic checkpoint
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    stopped_at = saved_step(last)
    assert 5 < stopped_at < 500  # saved at the signal, not just the last periodic checkpoint
    # As a requeued job would (in this process: the resume itself is no different).
    train(tmp_path, cache_dir, "run", *extra, f"trainer.max_steps={stopped_at + 3}", "ckpt_path=auto")
    assert saved_step(last) == stopped_at + 3


def recorded_losses(run_dir: Path) -> dict[tuple[int, int], float]:
    """{(step, micro-batch): loss} from tests.support.callbacks.RecordLosses, across every run in the folder."""
    with open(run_dir / "losses.jsonl") as f:
        return {(r["step"], r["micro_batch"]): r["loss"] for r in map(json.loads, f)}


ACCUMULATING = [
    "model.dropout=0.1",
    "trainer.deterministic=true",
    "trainer.accumulate_grad_batches=2",
    "trainer.max_steps=20",
    "trainer.val_check_interval=10",
    "+callbacks.record._target_=tests.support.callbacks.RecordLosses",
]


@pytest.fixture(scope="module")
def accumulating_run(tmp_path_factory, cache_dir) -> Path:
    tmp = tmp_path_factory.mktemp("whole")
    train(tmp, cache_dir, "whole", *ACCUMULATING)
    return tmp / "whole"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_between_micro_batches_stops_after_the_step_and_resumes_exactly(
    tmp_path, cache_dir, accumulating_run, signum
):
    # Batch 22 is the first micro-batch of step 12: the run must go on to the step's end, then save.
    signal_at = [
        "+callbacks.signal._target_=tests.support.callbacks.SignalAt",
        f"+callbacks.signal.signum={int(signum)}",
        "+callbacks.signal.batch=22",
    ]
    stopped = run_app(TRAIN, *train_args(tmp_path, cache_dir, "run", *ACCUMULATING, *signal_at))
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    assert f"stopped by {signum.name} at step 12" in stopped.stdout + stopped.stderr
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == 12 and last["GPTDataModule"]["batches_seen"] == 24
    train(tmp_path, cache_dir, "run", *ACCUMULATING, "ckpt_path=auto")
    expected, got = recorded_losses(accumulating_run), recorded_losses(tmp_path / "run")
    assert len((tmp_path / "run" / "losses.jsonl").read_text().splitlines()) == 40  # each micro-batch once
    assert got == expected  # bit for bit: the resumed steps are the uninterrupted run's

    def logged(run: Path) -> list[tuple[str, str]]:
        return [(r["step"], r["train/loss"]) for r in read_metrics(run) if r.get("train/loss")]

    assert logged(tmp_path / "run") == logged(accumulating_run)  # metrics.csv: every step from 0, once, the same


@pytest.mark.slow
def test_a_kill_during_a_save_never_leaves_a_corrupt_checkpoint(tmp_path, cache_dir):
    # 1.6M parameters: each save (weights + Adam moments, ~20 MB, synced to disk) can be killed midway.
    args = train_args(
        tmp_path,
        cache_dir,
        "run",
        "model.n_layer=2",
        "model.n_embd=256",
        "model.n_head=8",
        "trainer.max_steps=1000",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "ckpt_path=auto",
    )
    folder = tmp_path / "run" / "checkpoints"
    for _ in range(10):
        proc = start_app(TRAIN, *args)
        wait_for_step(folder / "last.ckpt", 1, proc)
        while not list(folder.glob("*.ckpt.*.tmp")):  # a save is under way (last.ckpt is then its hard link)
            assert proc.poll() is None
            time.sleep(0.001)
        kill_group(proc)
        if list(folder.glob("*.ckpt.*.tmp")):
            break  # killed mid-write: exactly the case to check
    assert list(folder.glob("*.ckpt.*.tmp")), "never managed to kill during a save"
    assert saved_step(folder / "last.ckpt") >= 1  # the previous checkpoint is whole and loads


@pytest.mark.slow
def test_a_kill_during_a_multi_process_save_never_leaves_a_corrupt_checkpoint(tmp_path, cache_dir):
    args = train_args(
        tmp_path,
        cache_dir,
        "run",
        "trainer=ddp_cpu",
        "model.n_layer=2",
        "model.n_embd=256",  # as the single-process test: ~20 MB per save, long enough to be caught in
        "model.n_head=8",
        "trainer.max_steps=1000",
        "callbacks.model_checkpoint.every_n_train_steps=1",
    )
    folder = tmp_path / "run" / "checkpoints"
    proc = start_app(TRAIN, *args)
    wait_for_step(folder / "last.ckpt", 2, proc)
    while not list(folder.glob("*.ckpt.*.tmp")):
        assert proc.poll() is None
        time.sleep(0.001)
    kill_group(proc)  # every rank at once
    assert saved_step(folder / "last.ckpt") >= 2


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, cache_dir, capsys):
    args = train_args(
        tmp_path,
        cache_dir,
        "run",
        "trainer.max_steps=100",
        "trainer.log_every_n_steps=5",
        "callbacks.model_checkpoint.every_n_train_steps=10",
        "+callbacks.poison._target_=tests.support.callbacks.PoisonWeights",
        "+callbacks.poison.step=12",
    )
    assert refused(capsys, args).startswith("the training loss is nan at step 15")
    assert saved_step(tmp_path / "run" / "checkpoints" / "last.ckpt") == 10
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, cache_dir) -> Path:
    """Trained in this process: a subprocess would import torch and Lightning again (seconds)."""
    run = train(
        tmp_path_factory.mktemp("ckpt"), cache_dir, "run", "trainer.max_steps=5", "trainer.val_check_interval=5"
    )
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.n_layer=3", "it was trained with model.n_layer=2, this run has model.n_layer=3"),
        ("tokenizer=byte", "it was trained with tokenizer.name=char, this run has tokenizer.name=byte"),
    ],
)
@pytest.mark.slow
def test_resuming_with_another_shape_or_tokenizer_names_what_differs(
    tiny_checkpoint, tmp_path, cache_dir, capsys, override, message
):
    assert message in refused(capsys, train_args(tmp_path, cache_dir, "run", override, f"ckpt_path={tiny_checkpoint}"))


def test_a_truncated_checkpoint_is_a_clear_error(tiny_checkpoint, tmp_path, cache_dir, capsys):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    assert "is truncated or corrupt" in refused(capsys, train_args(tmp_path, cache_dir, "run", f"ckpt_path={broken}"))
    not_ours = tmp_path / "weights.ckpt"
    torch.save({"weights": torch.zeros(3)}, not_ours)
    error = refused(capsys, train_args(tmp_path, cache_dir, "run", f"ckpt_path={not_ours}"))
    assert "is not a lightning_gpt checkpoint" in error


@pytest.mark.slow
def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tiny_checkpoint, tmp_path, cache_dir):
    run_dir = tiny_checkpoint.parent.parent
    before = tiny_checkpoint.read_bytes()
    # The file-size limit makes the next checkpoint write fail as a full disk would (EFBIG instead of ENOSPC).
    limited = (
        "import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({len(before) // 2}, {len(before) // 2}));"
        "sys.argv = ['lgpt-train', *sys.argv[1:]]; runpy.run_module('lightning_gpt.apps.train', run_name='__main__')"
    )
    args = [
        *train_args(tmp_path, cache_dir, "x"),
        f"hydra.run.dir={run_dir}",
        "trainer.max_steps=8",
        "trainer.val_check_interval=8",
        "ckpt_path=auto",
    ]
    result = subprocess.run(
        [sys.executable, "-c", limited, *args], cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: no space left to save")
    assert tiny_checkpoint.read_bytes() == before
    assert not list(tiny_checkpoint.parent.glob("*.tmp"))


BAD_INPUTS = [
    (["model.n_embd=100", "model.n_head=3"], "model.n_embd (100) must be divisible by model.n_head (3)"),
    (["model.block_size=0"], "model.block_size must be a positive integer, got 0"),
    (["data.batch_size=0"], "data.batch_size must be >= 1, got 0"),
    (["optim.lr=0"], "optim.lr must be > 0, got 0.0"),
    (["data=local", "data.path=/nonexistent/corpus.txt"], "matches no files"),
    (["tokenizer.name=sentencepiece"], "unknown tokenizer 'sentencepiece'"),
    pytest.param(
        ["tokenizer=gpt2", "model.vocab_size=1000"],
        "smaller than the gpt2 tokenizer's 50257 tokens",
        marks=pytest.mark.slow,  # tokenizes the corpus with tiktoken first
    ),
    (["ckpt_path=/nonexistent/last.ckpt"], "checkpoint not found"),
    (["optim.betas=[2,3]"], "optim.betas must be in [0, 1), got 2.0"),
    (["optim.betas=[0.9]"], "optim.betas must be two numbers in [0, 1), e.g. [0.9, 0.95]; got [0.9]"),
    (["optim.name=sgd"], "optim.name must be one of adamw, muon; got 'sgd'"),
    (["optim.schedule=linear"], "optim.schedule must be one of cosine, wsd; got 'linear'"),
    (["model=llama_baby", "model.mlp=gelu"], "model.mlp must be swiglu or relu2, got 'gelu'"),
    (["data.num_workers=-1"], "data.num_workers must be >= 0, got -1"),
    (["data=local", "data.path=${paths.root_dir}/short.txt", "model.block_size=64"], "fewer than block_size + 1"),
]


@pytest.mark.parametrize(("overrides", "message"), fast_first(BAD_INPUTS, keep=3))
def test_bad_input_is_one_clear_error(tmp_path, cache_dir, capsys, overrides, message):
    (tmp_path / "short.txt").write_text("to be or not to be\n")
    assert message in refused(capsys, train_args(tmp_path, cache_dir, "run", *overrides))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.n_layers=4", "unknown config key 'model.n_layers'; did you mean 'model.n_layer'?"),
        ("optim.lr=fast", "bad value for 'optim.lr'"),
        ("data.pth=x", "did you mean 'data.path'?"),
        ("model=gpt5", "model=gpt5 is not an option of model/; did you mean model=gpt2?"),
    ],
)
def test_config_mistakes_are_one_line_naming_the_key(override, message):
    with pytest.raises(Exception) as error:
        compose("train", override)
    assert message in describe(error.value) and "\n" not in describe(error.value)


@pytest.mark.slow
def test_the_cli_prints_one_line_and_exits_2_with_the_traceback_on_demand(tmp_path, cache_dir, capsys):
    error = refused(capsys, train_args(tmp_path, cache_dir, "run", "model.n_head=5"))
    assert error == "model.n_embd (32) must be divisible by model.n_head (5); try model.n_head=4"
    full = run_app(TRAIN, *train_args(tmp_path, cache_dir, "run"), "model.n_head=5", env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Traceback" in full.stderr


def test_an_unwritable_output_folder_is_a_clear_error(tmp_path, cache_dir, capsys):
    (tmp_path / "a_file").write_text("")
    assert refused(capsys, train_args(tmp_path, cache_dir, "a_file/run")).startswith("cannot write")


# ---------------------------------------------------------------------------------------------------
# Full disks, damaged files, files outside the run folder


@pytest.mark.slow
def test_a_really_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, cache_dir):
    with small_disk(tmp_path / "disk", "1100k") as disk:  # room for two checkpoints of ~0.4 MB, not three
        args = train_args(
            tmp_path,
            cache_dir,
            "x",
            f"hydra.run.dir={disk / 'run'}",
            "trainer.max_steps=20",
            "callbacks.model_checkpoint.every_n_train_steps=2",
        )
        result = run_app(TRAIN, *args)
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.strip().splitlines()[-1].startswith("error: no space left to save")
        assert "Traceback" not in result.stderr
        folder = disk / "run" / "checkpoints"
        assert not list(folder.glob("*.tmp"))
        assert lightning_gpt.load_checkpoint(folder / "last.ckpt")["global_step"] == 4  # whole, verified


def test_a_full_cache_disk_while_tokenizing_is_one_line_and_leaves_nothing_partial(tmp_path):
    with small_disk(tmp_path / "disk", "512k") as disk:  # Tiny Shakespeare's tokens take 2.2 MB
        with pytest.raises(UserError, match=r"^no space left in the data cache .*LGPT_CACHE_DIR"):
            prepare_tokens(Source("local", path=str(TINY_SHAKESPEARE)), "char", 0.1, str(disk))
        assert [p.name for p in disk.iterdir() if not p.name.endswith(".lock")] == []


def test_a_complete_read_only_cache_is_used_and_an_incomplete_one_names_lgpt_cache_dir(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_SHAKESPEARE.read_text()[:20_000])
    with small_disk(tmp_path / "disk", "8m") as disk:
        folder = prepare_tokens(Source("local", path=str(corpus)), "char", 0.1, str(disk))
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        assert prepare_tokens(Source("local", path=str(corpus)), "char", 0.1, str(disk)) == folder
        with pytest.raises(UserError, match=r"is not writable .* set LGPT_CACHE_DIR \(or paths.cache_dir\)"):
            prepare_tokens(Source("local", path=str(corpus)), "byte", 0.1, str(disk))


class NotWeights:
    """Pickled by reference: loading it would import and run code."""


def _damaged(tiny_checkpoint: Path, tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.ckpt"
    data = bytearray(tiny_checkpoint.read_bytes())
    if kind == "zeroed":
        middle = len(data) // 2
        data[middle : middle + 5000] = bytes(5000)
        path.write_bytes(data)
    elif kind == "truncated":
        path.write_bytes(data[:5000])
    elif kind == "unsafe":
        torch.save({**torch.load(tiny_checkpoint, weights_only=True), "extra": NotWeights()}, path)
    elif kind == "legacy":
        torch.save(torch.load(tiny_checkpoint, weights_only=True), path, _use_new_zipfile_serialization=False)
    return path


CHECKPOINT_PROBLEMS = [
    ("zeroed", r"is corrupt \(checksum mismatch in .*\)|is truncated or corrupt"),
    ("truncated", "is truncated or corrupt"),
    ("unsafe", "holds Python objects other than tensors and plain data"),
    ("legacy", "not a zip archive: a legacy torch.save format"),
]


@pytest.mark.parametrize(("kind", "message"), CHECKPOINT_PROBLEMS)
@pytest.mark.slow
def test_every_tool_names_a_damaged_or_unsafe_checkpoint(tiny_checkpoint, tmp_path, cache_dir, capsys, kind, message):
    path = _damaged(tiny_checkpoint, tmp_path, kind)
    tools = {
        "resume": (main, train_args(tmp_path, cache_dir, "run", f"ckpt_path={path}", "trainer.max_steps=8")),
        "lgpt-sample": (sample.main, [f"ckpt_path={path}", "device=cpu"]),
        "lgpt-eval": (
            evaluate.main,
            [f"ckpt_path={path}", f"paths.root_dir={tmp_path}", f"paths.cache_dir={cache_dir}"],
        ),
        "lgpt-export": (export.main, [f"ckpt_path={path}", f"out_dir={tmp_path / 'hf'}"]),
    }
    for name, (app, argv) in tools.items():
        assert re.search(message, refused(capsys, argv, app)), name
        assert not (tmp_path / "hf").exists(), name
    with pytest.raises(UserError, match=message):
        lightning_gpt.load(path)


def test_resuming_a_finished_run_says_so(tiny_checkpoint, tmp_path, cache_dir, capsys):
    error = refused(
        capsys, train_args(tmp_path, cache_dir, "run", f"ckpt_path={tiny_checkpoint}", "trainer.max_steps=5")
    )
    assert re.search(r"is already at step 5 and trainer.max_steps=5: nothing to train; raise", error)


@pytest.mark.slow
def test_checkpoints_of_one_step_are_hard_links_and_snapshots_are_bounded(tmp_path, cache_dir):
    every_step = "callbacks.model_checkpoint.every_n_train_steps=1"
    folder = train(tmp_path, cache_dir, "run", "trainer.max_steps=8", "trainer.val_check_interval=8", every_step)
    folder = folder / "checkpoints"
    files = {p.name: p.stat() for p in folder.iterdir()}
    [best] = [name for name in files if name.startswith("best-")]
    assert sorted(files) == sorted([best, "last.ckpt", *(f"step{s:06d}.ckpt" for s in range(4, 9))])  # newest 5
    assert files["last.ckpt"].st_ino == files[best].st_ino == files["step000008.ckpt"].st_ino
    assert files["last.ckpt"].st_nlink == 3 and files["step000007.ckpt"].st_nlink == 1


def test_saves_never_follow_a_planted_symlink_and_stale_temporaries_go(tmp_path, cache_dir):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    (folder / "last.ckpt.tmp").symlink_to(outside)  # the old fixed temporary name
    (folder / "last.ckpt.0123456789abcdef.tmp").symlink_to(outside)
    (folder / "step000002.ckpt.fedcba9876543210.tmp").write_bytes(bytes(1000))  # a save killed midway
    train(tmp_path, cache_dir, "run", "trainer.max_steps=3")  # ends before any periodic save
    assert outside.read_text() == "not yours"
    names = sorted(p.name for p in folder.iterdir())  # validated at the last step: best, last and step 3
    assert names == [next(n for n in names if n.startswith("best-step000003-")), "last.ckpt", "step000003.ckpt"]
    assert not (folder / "last.ckpt").is_symlink() and (folder / "last.ckpt").stat().st_mode & 0o777 == 0o644
    assert lightning_gpt.load_checkpoint(folder / "last.ckpt")["global_step"] == 3


# ---------------------------------------------------------------------------------------------------
# Input that used to end in a traceback


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["temperature=nan"], "temperature must be a finite number >= 0 (0 is greedy), got nan"),
        (["prompt=@{latin1}"], "is not valid UTF-8 text (invalid continuation byte at byte 3); convert it"),
    ],
)
def test_bad_sampling_input_is_one_line(tiny_checkpoint, tmp_path, capsys, overrides, message):
    (tmp_path / "latin1.txt").write_bytes("café olé".encode("latin-1"))
    overrides = [o.replace("{latin1}", str(tmp_path / "latin1.txt")) for o in overrides]
    assert message in refused(capsys, [f"ckpt_path={tiny_checkpoint}", "device=cpu", *overrides], sample.main)


def test_a_tiny_temperature_is_greedy_not_nan(tiny_checkpoint, capsys):
    def continuation(temperature: str) -> str:
        argv = [f"ckpt_path={tiny_checkpoint}", "device=cpu", f"temperature={temperature}", "max_new_tokens=30"]
        assert sample.main([*argv, "prompt=ROMEO:"]) == 0
        return capsys.readouterr().out

    assert continuation("1e-40") == continuation("0")


def test_a_broken_hugging_face_folder_is_one_line(tmp_path):
    malformed = tmp_path / "malformed"
    malformed.mkdir()
    (malformed / "config.json").write_text('{"model_type": "gpt2", ')
    with pytest.raises(UserError, match=r"config.json is not valid JSON .*; restore the model's config.json"):
        lightning_gpt.read_checkpoint(malformed)
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    (unsafe / "config.json").write_text(
        json.dumps(
            {"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 8, "n_positions": 16, "vocab_size": 50257}
        )
    )
    torch.save({"wte.weight": torch.zeros(50257, 8), "code": NotWeights()}, unsafe / "pytorch_model.bin")
    with pytest.raises(UserError, match="holds Python objects other than tensors, which could run code"):
        lightning_gpt.read_checkpoint(unsafe)
