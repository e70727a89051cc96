"""Nothing lost, ever: a tool writes only files it creates, never through a link it did not create, and a launch
refused for bad input leaves the disk as it was (docs/reliability.md, round three)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_gpt.apps import export, sample
from lightning_gpt.apps.train import main
from lightning_gpt.runs import WRITTEN, WRITTEN_INSIDE

from .support.config import ROOT, TINY_SHAKESPEARE, TINY_SHAKESPEARE_DATA
from .support.disks import small_disk
from .support.processes import child_env, kill_group, start_app, wait_for_step
from .support.runs import train, train_args
from .support.tiers import fast_first


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under folder: a file's bytes, a link's target, a folder as such (links never followed)."""
    found: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            found[name] = ("link", os.readlink(path))
        elif path.is_dir():
            found[name] = "folder"
        else:
            found[name] = path.read_bytes()
    return found


def refused(capsys, app, argv: list[str]) -> str:
    """The one line an app prints when it refuses argv (exit code 2)."""
    code = app(argv)
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "Traceback" not in err
    return err.strip().splitlines()[-1].removeprefix("error: ")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> Path:
    """A finished 6-step run, copied afresh by each test that may change it."""
    return train(
        tmp_path_factory.mktemp("trained"), cache_dir, "run", "trainer.max_steps=6", "trainer.val_check_interval=3"
    )


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "R"
    shutil.copytree(trained, copy, symlinks=True)
    return copy


# ---------------------------------------------------------------------------------------------------
# 1-3: a refused launch changes nothing


def test_a_refused_launch_leaves_a_folder_it_did_not_make_as_it_was(tmp_path, cache_dir, capsys, monkeypatch):
    """lgpt-train model.n_head=5 hydra.run.dir=p used to delete p's csv/ and wandb/ with the user's files."""
    p = tmp_path / "p"
    (p / "csv").mkdir(parents=True)
    (p / "wandb").mkdir()
    (p / "csv" / "mine.csv").write_text("the user's\n")
    before = snapshot(tmp_path)
    assert "must be divisible" in refused(capsys, main, train_args(tmp_path, cache_dir, "p", "model.n_head=5"))
    assert snapshot(tmp_path) == before
    monkeypatch.chdir(p)  # hydra.run.dir=. in a project folder
    assert "must be divisible" in refused(
        capsys, main, [*train_args(tmp_path, cache_dir, "p", "model.n_head=5"), "hydra.run.dir=."]
    )
    assert snapshot(tmp_path) == before


def test_a_refused_fresh_launch_leaves_no_folder(tmp_path, cache_dir, capsys):
    assert "must be divisible" in refused(
        capsys, main, train_args(tmp_path, cache_dir, "new/deep/run", "model.n_head=5")
    )
    assert not (tmp_path / "new").exists()


def test_every_other_tool_refused_on_a_run_folder_leaves_it_byte_identical(run, tmp_path, capsys, monkeypatch):
    """lgpt-sample, lgpt-export, lgpt-explain and lgpt-plot, each refused for bad input against a run folder: the
    folder, and the current folder, are as they were (lgpt-train's refusals: below; lgpt-eval's: test_eval.py)."""
    from lightning_gpt.apps.explain import main as explain
    from lightning_gpt.apps.plot import main as plot

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    launches = [
        (sample.main, [f"ckpt_path={run}", "temperature=nan"], "temperature must be a finite number"),
        (sample.main, [f"ckpt_path={run}", "prompt=@nowhere.txt"], "prompt file nowhere.txt not found"),
        (sample.main, [f"ckpt_path={run}", "num_samples=0"], "num_samples must be at least 1"),
        (export.main, [f"ckpt_path={run}", f"out_dir={run / 'checkpoints'}"], "is inside the run folder"),
        (explain, [f"ckpt_path={run}", "prompt=ROMEO:", "max_new_tokens=-1"], "max_new_tokens must be at"),
        (explain, [f"ckpt_path={run}", "prompt=ROMEO:", f"out={run / 'config.yaml'}"], "is not a page of"),
        (plot, [str(run), "--metric", "val/nope"], "holds no val/nope"),
        (plot, [str(run), "-o", str(run / "csv")], "exists and is not a chart of lgpt-plot"),
    ]
    before = snapshot(tmp_path)
    for app, argv, message in launches:
        assert message in refused(capsys, app, argv), argv
        assert snapshot(tmp_path) == before, argv


REFUSED_RESUMES = [
    (["optim.lr=-1"], "optim.lr must be > 0, got -1"),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val must be >= 0, got -1"),
    (["optim.min_lr=0.5"], "optim.min_lr=0.5 is above optim.lr=0.001"),
    (["model.n_layer=3"], "it was trained with model.n_layer=2, this run has model.n_layer=3"),
    (["tokenizer=byte"], "it was trained with tokenizer.name=char, this run has tokenizer.name=byte"),
    (["optim=muon"], "it was trained with optim.name=adamw, this run has optim.name=muon"),
    (["model=llama_baby"], "it was trained with model.family=gpt2, this run has model.family=llama"),
    (["data=shakespeare"], "its character vocabulary"),
    (["trainer.max_steps=4"], "is already at step 6 and trainer.max_steps=4: nothing to train"),
    (["experiment=nanogpt_baby"], "experiment=nanogpt_baby cannot change when resuming"),
]


@pytest.mark.slow
def test_every_refused_resume_leaves_the_run_folder_byte_identical_and_the_run_resumable(run, cache_dir, capsys):
    """A refused resume used to write config-resumed.yaml, resumes.yaml, .hydra/resume-* and train.log first,
    and the next, valid, resume then failed with the refused launch's values."""
    before = snapshot(run)
    common = [f"ckpt_path={run}", f"paths.cache_dir={cache_dir}", "trainer.enable_progress_bar=false"]
    for overrides, message in REFUSED_RESUMES:
        assert message in refused(capsys, main, [*common, "trainer.max_steps=8", *overrides]), overrides
        assert snapshot(run) == before, overrides
    assert main([*common, "trainer.max_steps=8"]) == 0
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8


def test_a_resume_reads_the_runs_saved_config_as_possibly_damaged(run, cache_dir, capsys):
    """config.yaml cut short (a kill, a full disk, an editor) was read as a config without its last keys:
    'unknown config key 'logger'', a key nobody gave; a damaged config-resumed.yaml is named too. Both
    refusals leave the run as it was."""
    config = run / "config.yaml"
    whole = config.read_bytes()
    before = snapshot(run)
    resume = [f"ckpt_path={run}", "trainer.max_steps=8", f"paths.cache_dir={cache_dir}"]
    config.write_bytes(whole[: len(whole) // 2])
    assert "config.yaml is cut short or damaged: it has no 'sample', which the checkpoint's config has" in refused(
        capsys, main, resume
    )
    config.write_bytes(whole)
    (run / "config-resumed.yaml").write_bytes(b"\x00{[ not yaml")
    assert "config-resumed.yaml is not a readable run config (ReaderError); restore it" in refused(capsys, main, resume)
    (run / "config-resumed.yaml").unlink()
    assert snapshot(run) == before


@pytest.mark.slow
def test_a_second_launch_on_a_folder_that_is_training_is_refused_and_records_nothing(tmp_path, cache_dir, capsys):
    """The loser of two lgpt-train on one folder used to overwrite the winner's .hydra/ and append to its log."""
    slow = ["+callbacks.slow._target_=tests.support.callbacks.Slow", "trainer.max_steps=300", "optim.lr=2e-3"]
    every = "callbacks.model_checkpoint.every_n_train_steps=2"
    proc = start_app("lightning_gpt.apps.train", *train_args(tmp_path, cache_dir, "run", *slow, every))
    try:
        wait_for_step(tmp_path / "run" / "checkpoints" / "last.ckpt", 2, proc)
        records = {
            p: p.read_bytes() for p in [*(tmp_path / "run" / ".hydra").iterdir(), tmp_path / "run" / "config.yaml"]
        }
        log = (tmp_path / "run" / "train.log").read_text()
        error = refused(capsys, main, train_args(tmp_path, cache_dir, "run", "optim.lr=1e-3", "ckpt_path=auto"))
        assert "is in use by another lgpt-train" in error
        assert {p: p.read_bytes() for p in records} == records
        assert (tmp_path / "run" / "train.log").read_text().startswith(log)  # the winner's lines only, appended
        assert "optim.lr=1e-3" not in (tmp_path / "run" / "train.log").read_text()
    finally:
        kill_group(proc)


# ---------------------------------------------------------------------------------------------------
# 5, 13: exports


def test_an_export_never_writes_into_a_folder_it_did_not_make(run, tmp_path, capsys):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "config.json").write_text("the user's own")
    victim = tmp_path / "victim.txt"
    victim.write_text("not yours")
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "config.json").symlink_to(victim)
    before = snapshot(tmp_path)
    assert "holds files lightning_gpt did not write" in refused(
        capsys, export.main, [f"ckpt_path={run}", f"out_dir={users}"]
    )
    assert "holds files lightning_gpt did not write" in refused(
        capsys, export.main, [f"ckpt_path={run}", f"out_dir={planted}"]
    )
    assert "is inside the run folder" in refused(capsys, export.main, [f"ckpt_path={run}", f"out_dir={run}"])
    assert "is inside the run folder" in refused(capsys, export.main, [f"ckpt_path={run}", f"out_dir={run / 'hf'}"])
    assert snapshot(tmp_path) == before


def test_an_export_never_replaces_the_current_folder(run, tmp_path, capsys, monkeypatch):
    """out_dir= (empty) or out_dir=. in an empty folder renamed the export over the current folder: the shell
    was left in a folder that no longer existed."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert "'out_dir' needs a value" in refused(capsys, export.main, [f"ckpt_path={run}", "out_dir="])
    assert "is the current folder; give a new folder in it" in refused(
        capsys, export.main, [f"ckpt_path={run}", "out_dir=."]
    )
    assert here.is_dir() and os.path.samefile(os.getcwd(), here) and list(here.iterdir()) == []


def test_a_re_export_replaces_the_earlier_one_whole_and_cleans_up_after_a_killed_one(run, tmp_path, capsys):
    out = tmp_path / "hf"
    assert export.main([f"ckpt_path={run}", f"out_dir={out}"]) == 0
    (out / "stale.txt").write_text("from the earlier export")  # a file the next export does not write
    killed = tmp_path / "hf.0123456789abcdef.tmp"  # what a kill during a re-export leaves beside it
    shutil.copytree(out, killed)
    assert export.main([f"ckpt_path={run}", f"out_dir={out}"]) == 0
    assert not (out / "stale.txt").exists() and not killed.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R", "hf"]
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out) is not None


@pytest.mark.slow
def test_a_full_disk_during_an_export_is_one_line_and_keeps_the_earlier_export(run, tmp_path):
    out = tmp_path / "hf"
    assert export.main([f"ckpt_path={run}", f"out_dir={out}"]) == 0
    before = snapshot(out)
    limit = (out / "model.safetensors").stat().st_size // 2  # the next model.safetensors cannot be written
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}));"
        "from lightning_gpt.apps.export import main; raise SystemExit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, f"ckpt_path={run}", f"out_dir={out}"],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: no space left to write out_dir")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R", "hf"]  # no temporary left


def test_a_really_full_disk_during_an_export_is_one_line_and_keeps_the_earlier_export(run, tmp_path, capsys):
    """Issue 24, item 13: safetensors' SafetensorError (ENOSPC, 'os error 28') was a traceback, and config.json
    stayed behind. The tiny model's export is about 120 KB: one fits on a 200 KB disk, not a second beside it."""
    with small_disk(tmp_path / "disk", "200k") as disk:
        out = disk / "hf"
        assert export.main([f"ckpt_path={run}", f"out_dir={out}"]) == 0
        capsys.readouterr()
        before = snapshot(disk)
        for target in (out, disk / "other"):  # a re-export (built beside the first), a new one
            error = refused(capsys, export.main, [f"ckpt_path={run}", f"out_dir={target}"])
            assert error.startswith(f"no space left to write out_dir {target}; nothing of it was written"), error
            assert snapshot(disk) == before  # the earlier export whole, no temporary folder left


# ---------------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM in the apps that read a checkpoint (lgpt-train and lgpt-prepare: tests/test_reliability.py,
# tests/test_prepare.py)


def _wait(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.002)


def _entries(folder: Path, pattern: str) -> list[Path]:
    """What matches pattern in a folder another process is writing (a folder it removes meanwhile is no error)."""
    try:
        return list(folder.glob(pattern))
    except FileNotFoundError:
        return []


def _stopped(proc: subprocess.Popen, signum: int) -> str:
    """Send signum; the app's last line on stderr, once it has exited with 128 + signum and no traceback."""
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum and "Traceback" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


def test_a_signal_while_a_write_is_put_in_place_waits_for_it(tmp_path):
    """The two renames of a re-export (the old folder aside, the new one in) are one step: a Ctrl-C or SIGTERM
    between them used to lose both folders (the new one cleaned up, the old one left as <out>.<hex>.old for the
    next export to remove). Now the signal acts once the step is done, and the app knows what was written."""
    from lightning_gpt.apps.launch import stop_on_signals
    from lightning_gpt.errors import Interrupted
    from lightning_gpt.io import PLACED, placing

    (tmp_path / "new").mkdir()
    with pytest.raises(KeyboardInterrupt):  # Python's own Ctrl-C handler, after the block
        with placing(tmp_path / "out"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # where a handler would have run
            os.rename(tmp_path / "new", tmp_path / "out")
    assert (tmp_path / "out").is_dir() and PLACED[-1] == tmp_path / "out"
    with pytest.raises(Interrupted) as stopped, stop_on_signals():  # the apps' handler
        with placing(tmp_path / "again"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
            os.rename(tmp_path / "out", tmp_path / "again")
    assert stopped.value.signum == signal.SIGTERM and PLACED[-1] == tmp_path / "again"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers as they were


@pytest.fixture(scope="module")
def larger(tmp_path_factory, cache_dir) -> Path:
    """A 10M-parameter run: its export takes long enough to be interrupted while it writes."""
    shape = ["model.n_layer=6", "model.n_embd=384", "model.n_head=6", "trainer.max_steps=1"]
    return train(tmp_path_factory.mktemp("larger"), cache_dir, "run", *shape, "trainer.val_check_interval=1")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_during_a_re_export_leaves_the_earlier_export_and_no_temporary(larger, tmp_path, signum):
    """Ctrl-C was a KeyboardInterrupt traceback; SIGTERM killed the export and left its model-sized temporary
    folder until the next export. Now both remove it and say so in one line."""
    out = tmp_path / "hf"
    assert export.main([f"ckpt_path={larger}", f"out_dir={out}"]) == 0
    before = snapshot(tmp_path)
    proc = start_app("lightning_gpt.apps.export", f"ckpt_path={larger}", f"out_dir={out}")
    _wait(lambda: any(tmp_path.glob("hf.*.tmp/config.json")), proc)  # it writes the new export beside
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert _stopped(proc, signum) == (
        f"interrupted by {name}: nothing of this export was written; out_dir is as it was"
    )
    assert snapshot(tmp_path) == before


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_during_lgpt_eval_or_lgpt_sample_is_one_line_and_writes_nothing(
    run, tmp_path, cache_dir, signum
):
    """lgpt-eval exited 0 on SIGTERM (Lightning's SIGTERMException is a SystemExit(0)) as if it had finished,
    and 1 on Ctrl-C; lgpt-sample printed a KeyboardInterrupt traceback or died silently."""
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    before = snapshot(run)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = [f"ckpt_path={run}", f"paths.cache_dir={cache_dir}", *TINY_SHAKESPEARE_DATA, "windows=1000000"]
    proc = start_app("lightning_gpt.apps.evaluate", *args, "data.batch_size=1", "trainer.accelerator=cpu", cwd=cwd)
    maps = Path(f"/proc/{proc.pid}/maps")
    _wait(lambda: str(cache_dir) in maps.read_text(), proc)  # the split's shards are mapped: it evaluates
    assert _stopped(proc, signum) == f"interrupted by {name}: no results were written"
    proc = start_app("lightning_gpt.apps.sample", f"ckpt_path={run}", "max_new_tokens=1000000", "device=cpu", cwd=cwd)
    while not proc.stderr.readline().startswith("loaded "):  # then it generates
        assert proc.poll() is None
    assert _stopped(proc, signum) == f"interrupted by {name}: the text printed so far is all there is"
    assert snapshot(run) == before and list(cwd.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_while_lgpt_train_tokenizes_records_nothing(tmp_path, signum):
    """Before training starts a signal stops the launch as a refusal would: Ctrl-C was a KeyboardInterrupt
    traceback, SIGTERM killed it and left the run folder and a half-made token cache until the next run.
    (Once training has started, LastCheckpoint finishes the step and saves: tests/test_reliability.py.)"""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_SHAKESPEARE.read_text() * 40)  # 45 MB: seconds of tokenizing
    cache = tmp_path / "cache"
    args = ["data=local", f"data.path={corpus}", f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = start_app("lightning_gpt.apps.train", *args, "trainer.max_steps=2", cwd=tmp_path)
    _wait(lambda: _entries(cache, "*/shard_*"), proc)  # its first shard is being written
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    assert _stopped(proc, signum) == f"interrupted by {name}: nothing was recorded"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "corpus.txt"] and list(cache.rglob("*")) == []


# ---------------------------------------------------------------------------------------------------
# 6: links planted where a tool writes


@pytest.mark.parametrize("name", fast_first([*WRITTEN, *WRITTEN_INSIDE], keep=3))
def test_a_link_planted_where_a_run_writes_is_refused_and_its_target_untouched(tmp_path, cache_dir, capsys, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("not yours")
    folder = tmp_path / "run"
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).symlink_to(outside / "victim" if "." in Path(name).name else outside)
    before = snapshot(tmp_path)
    error = refused(capsys, main, train_args(tmp_path, cache_dir, "run", "trainer.max_steps=2"))
    assert "is a symbolic link" in error
    assert snapshot(tmp_path) == before


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resumes.yaml", "config-resumed.yaml", "train.log", "samples.md", "csv/metrics.csv"])
def test_a_link_planted_in_a_run_folder_stops_its_resume_before_it_writes(run, tmp_path, cache_dir, capsys, name):
    victim = tmp_path / "victim"
    victim.write_text("not yours")
    if (run / name).exists():
        (run / name).unlink()
    (run / name).symlink_to(victim)
    before = snapshot(tmp_path)
    error = refused(capsys, main, [f"ckpt_path={run}", "trainer.max_steps=8", f"paths.cache_dir={cache_dir}"])
    assert "is a symbolic link" in error
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("target", ["outside", "checkpoints/../x.0123456789abcdef"])
def test_a_link_planted_at_a_sharded_checkpoint_name_never_removes_what_it_points_at(tmp_path, target):
    """A sharded checkpoint's name is a link to its data folder, which a save replaces and a pruning removes: a
    link planted at that name (to a folder of the user's, or one named like our data folders) had its target
    deleted, files and all."""
    from lightning_gpt.parallel.checkpoint import ShardedCheckpointWriter, remove_checkpoint

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    victim = tmp_path / Path(target).name
    victim.mkdir()
    (victim / "mine.txt").write_text("not yours")
    before = snapshot(victim)
    link = str(victim) if target == "outside" else target.removeprefix("checkpoints/")
    (folder / "last.ckpt").symlink_to(link)
    ShardedCheckpointWriter().save({"state_dict": {"w": torch.zeros(3)}, "global_step": 1}, folder / "last.ckpt")
    assert snapshot(victim) == before
    (folder / "step000001.ckpt").symlink_to(link)
    remove_checkpoint(folder / "step000001.ckpt")
    assert snapshot(victim) == before and not (folder / "step000001.ckpt").exists()


def test_a_link_planted_where_lgpt_explain_writes_is_refused(run, tmp_path, capsys):
    from lightning_gpt.apps.explain import main as explain

    victim = tmp_path / "victim.html"
    victim.write_text("not yours")
    (run / "explain.html").symlink_to(victim)
    error = refused(capsys, explain, [f"ckpt_path={run}", "prompt=ROMEO:", "max_new_tokens=2"])
    assert "is a symbolic link" in error and victim.read_text() == "not yours"
    assert "is not a page of lgpt-explain" in refused(
        capsys, explain, [f"ckpt_path={run}", "prompt=ROMEO:", f"out={victim}"]
    )
    assert victim.read_text() == "not yours"


def test_a_link_planted_where_lgpt_prepare_writes_is_refused(tmp_path, capsys):
    from lightning_gpt.apps.prepare import main as prepare

    victim = tmp_path / "victim"
    victim.write_text("not yours")
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "manifest.json").symlink_to(victim)
    before = snapshot(tmp_path)
    refused(capsys, prepare, ["data=local", f"data.path={TINY_SHAKESPEARE}", f"out_dir={out}"])
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "name",
    fast_first([".lock", "progress.json", "tokenizer.json", "shard_00000.bin", "docs_00000.idx", "manifest.json"]),
)
def test_a_link_planted_in_an_interrupted_prepared_folder_is_never_followed(tmp_path, capsys, name):
    """An out_dir of ours (an interrupted lgpt-prepare's: its .lgpt-prepare marker, no manifest) with a link
    planted at a name lgpt-prepare writes: replaced by the file itself, or (the lock) refused in one line, where
    a link at .lock was an OSError's traceback. The link's target is never written."""
    from lightning_gpt.apps.prepare import main as prepare

    victim = tmp_path / "victim"
    victim.write_text("not yours")
    out = tmp_path / "prepared"
    out.mkdir()
    (out / ".lgpt-prepare").write_text("an interrupted run's")
    (out / name).symlink_to(victim)
    small = tmp_path / "small.txt"
    small.write_text(TINY_SHAKESPEARE.read_text()[:20_000])
    code = prepare(["data=local", f"data.path={small}", f"out_dir={out}", "data.num_proc=1"])
    err = capsys.readouterr().err
    assert victim.read_text() == "not yours" and "Traceback" not in err
    if name == ".lock":
        assert code == 2 and err.strip().splitlines()[-1] == (
            f"error: {out / '.lock'} is a symbolic link; a lock is taken only on a file of its own: remove the link"
        )
    else:
        assert code == 0 and not [p for p in out.iterdir() if p.is_symlink()]


@pytest.mark.parametrize("planted", ["folder", "lock"])
def test_a_link_planted_in_the_token_cache_is_refused(tmp_path, planted):
    """The token cache names its folders <fingerprint>/ (with <fingerprint>.lock beside): a link at either
    was followed (written through, or an OSError's traceback)."""
    from lightning_gpt.data.cache import fingerprint, prepare_tokens
    from lightning_gpt.data.sources import Source
    from lightning_gpt.errors import UserError

    small = tmp_path / "small.txt"
    small.write_text(TINY_SHAKESPEARE.read_text()[:20_000])
    source, cache = Source("local", path=str(small)), tmp_path / "cache"
    cache.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "notes.txt").write_text("not yours")
    name = fingerprint(source, "char", 0.1)
    (cache / (name if planted == "folder" else f"{name}.lock")).symlink_to(outside)
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match="is a symbolic link; .* remove the link"):
        prepare_tokens(source, "char", 0.1, str(cache), num_proc=1)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------------
# 7: values that train wrong


@pytest.mark.parametrize(
    "override, message",
    fast_first(
        [
            ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val must be >= 0, got -1"),
            ("optim.min_lr=0.01", "optim.min_lr=0.01 is above optim.lr=0.001"),
            ("optim.min_lr=nan", "optim.min_lr must be a finite number, got nan"),
            ("optim.eps=inf", "optim.eps must be a finite number, got inf"),
            ("optim.weight_decay=nan", "optim.weight_decay must be a finite number, got nan"),
            ("trainer.max_steps=-1", "trainer.max_steps must be >= 1, got -1"),
            (
                "trainer.max_epochs=0",
                "trainer.max_epochs must be -1 (no limit: trainer.max_steps ends the run) or >= 1",
            ),
            ("data.val_fraction=1.5", "data.val_fraction must be in (0, 1), got 1.5"),
            ("model.dropout=nan", "model.dropout must be in [0, 1), got nan"),
        ],
        keep=2,
    ),
)
def test_values_that_would_train_wrong_are_refused_naming_the_key(tmp_path, cache_dir, capsys, override, message):
    assert message in refused(capsys, main, train_args(tmp_path, cache_dir, "run", override))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------
# 10, 11: damaged files, byte-order marks


def test_a_damaged_last_checkpoint_falls_back_to_the_newest_whole_one(run, capsys):
    """16 bytes flipped in the middle of last.ckpt, a file of its own: its checksums no longer hold."""
    last = run / "checkpoints" / "last.ckpt"
    data = bytearray(last.read_bytes())
    last.unlink()  # last.ckpt was a hard link to step000006.ckpt: damage a copy of its own
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    last.write_bytes(data)
    assert sample.main([f"ckpt_path={run}", "max_new_tokens=5", "device=cpu"]) == 0
    err = capsys.readouterr().err
    assert "last.ckpt is missing or damaged; using" in err and "loaded" in err and "last.ckpt:" not in err


def test_a_prompt_file_with_a_byte_order_mark_and_crlf_reads_as_its_text(run, tmp_path, capsys):
    (tmp_path / "plain.txt").write_bytes(b"ROMEO:\nO, she doth teach")
    (tmp_path / "windows.txt").write_bytes(b"\xef\xbb\xbfROMEO:\r\nO, she doth teach")
    outputs = []
    for name in ("plain.txt", "windows.txt"):
        assert sample.main([f"ckpt_path={run}", f"prompt=@{tmp_path / name}", "max_new_tokens=8", "device=cpu"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].startswith("ROMEO:\nO, she")


def test_a_prompt_on_standard_input_reads_as_a_prompt_file_does(run, capsys, monkeypatch):
    """prompt=- took the locale's decoding of standard input: a byte-order mark and a lone CR stayed, and bytes
    that are not UTF-8 were a traceback."""
    outputs = []
    for data in (b"ROMEO:\nO, she", b"\xef\xbb\xbfROMEO:\r\nO, she", b"ROMEO:\rO, she"):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="latin-1"))
        assert sample.main([f"ckpt_path={run}", "prompt=-", "max_new_tokens=8", "device=cpu"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2] and outputs[0].startswith("ROMEO:\nO, she")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9 au lait")))
    assert "standard input is not valid UTF-8 text (invalid continuation byte at byte 3)" in refused(
        capsys, sample.main, [f"ckpt_path={run}", "prompt=-"]
    )


@pytest.mark.parametrize(
    "damage, message",
    [
        (b"6,0,not a number,,,,\n", "metrics.csv is damaged at line 5: train/loss 'not a number' at step '6'"),
        (b"6,0,\xff\xfe,,,,\n", "metrics.csv is damaged (not UTF-8 text at byte"),
        (b"6,0,4.1\x00,,,,\n", "metrics.csv is damaged at line 5: train/loss '4.1\\x00' at step '6'"),
        (b'6,0,"' + b"9" * 200_000 + b'",,,,\n', "metrics.csv is damaged after line 4 (field larger than field limit"),
    ],
)
def test_lgpt_plot_reads_a_damaged_log_in_one_line_and_writes_no_chart(run, tmp_path, capsys, damage, message):
    """A row cut or garbled in metrics.csv was a ValueError's or UnicodeDecodeError's traceback."""
    import csv

    from lightning_gpt.apps.plot import main as plot

    with open(run / "csv" / "metrics.csv", "ab") as f:
        f.write(damage)
    before = snapshot(tmp_path)
    limit = csv.field_size_limit(131_072)  # csv's default, as in lgpt-plot's process (scipy's arff raises it)
    try:
        assert message in refused(capsys, plot, [str(run)])
    finally:
        csv.field_size_limit(limit)
    assert snapshot(tmp_path) == before


def test_lgpt_plot_labels_a_run_whose_recorded_overrides_are_damaged_and_never_writes_through_a_link(
    run, tmp_path, capsys
):
    """A damaged .hydra/overrides.yaml (what labels a sweep's jobs) was a traceback: it now records no overrides.
    A link planted where the chart goes is refused, its target untouched."""
    from lightning_gpt.apps.plot import main as plot

    other = tmp_path / "other"
    shutil.copytree(run, other, symlinks=True)
    (run / ".hydra" / "overrides.yaml").write_bytes(b"- optim.lr=\xff\n")
    (other / ".hydra" / "overrides.yaml").write_bytes(b"{not: [yaml")
    assert plot([str(run), str(other), "-o", str(tmp_path / "both.png")]) == 0
    assert (tmp_path / "both.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    victim = tmp_path / "victim.png"
    victim.write_text("not yours")
    (run / "loss.png").symlink_to(victim)
    capsys.readouterr()
    assert "loss.png exists and is not a chart of lgpt-plot" in refused(capsys, plot, [str(run)])
    assert victim.read_text() == "not yours" and (run / "loss.png").is_symlink()
    assert not [p for p in tmp_path.rglob("*.tmp*")]


@pytest.mark.parametrize(
    "damage",
    [
        lambda m: [m],  # JSON, not an object
        lambda m: {k: v for k, v in m.items() if k != "dtype"},
        lambda m: {**m, "shards": "shard_00000.bin"},
        lambda m: {**m, "tokenizer": None},
    ],
    ids=["a list", "no dtype", "shards a string", "no tokenizer"],
)
def test_a_damaged_manifest_is_one_line_and_a_damaged_progress_file_is_redone(tmp_path, damage):
    """A manifest.json of the right format with a key missing or of another type (or a JSON list) was an
    AttributeError's, KeyError's or TypeError's traceback, from data=prepared and from lgpt-prepare alike."""
    import json

    from lightning_gpt.data.prepare import prepare_folder
    from lightning_gpt.data.shards import PreparedFolder
    from lightning_gpt.data.sources import Source
    from lightning_gpt.errors import UserError

    (tmp_path / "a.txt").write_text(TINY_SHAKESPEARE.read_text()[:20_000])
    source = Source("local", path=str(tmp_path / "a.txt"))
    folder, _ = prepare_folder(source, "char", 0.1, tmp_path / "p", num_proc=1)
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps(damage(json.loads(manifest.read_text()))))
    before = snapshot(folder)
    with pytest.raises(UserError, match="manifest.json is not a manifest of lgpt-prepare|manifest.json is damaged"):
        PreparedFolder(folder)
    with pytest.raises(UserError, match="manifest.json that lgpt-prepare did not write|prepared with other settings"):
        prepare_folder(source, "byte", 0.1, folder, num_proc=1)  # lgpt-prepare with other settings: refused
    assert snapshot(folder) == before
    (folder / ".lgpt-prepare").write_text("an interrupted run's")  # ours: the same command prepares it again,
    (folder / "progress.json").write_text(json.dumps(damage({"settings": "x", "version": 2, "shards": []})))
    assert prepare_folder(source, "char", 0.1, folder, num_proc=1) == (folder, True)  # a damaged progress too
    assert PreparedFolder(folder).num_tokens > 0


@pytest.mark.parametrize("path", ["/dev/zero", "{tmp}"])
def test_a_prompt_that_is_no_text_file_says_what_it_is(run, tmp_path, capsys, path):
    error = refused(capsys, sample.main, [f"ckpt_path={run}", f"prompt=@{path.format(tmp=tmp_path)}"])
    assert ("is a folder" if path == "{tmp}" else "is not a regular file") in error


# ---------------------------------------------------------------------------------------------------
# 15: a message that blamed an override never given


@pytest.mark.slow
def test_resuming_on_other_data_keeps_the_runs_context(run, tmp_path, cache_dir, capsys):
    """A group override (data=local) resolved data.block_size against the default model (64), not the run's
    (32): the resume was refused, naming a data.block_size override nobody gave."""
    text = tmp_path / "more.txt"
    shutil.copy(TINY_SHAKESPEARE, text)  # the same characters, another source
    args = [
        f"ckpt_path={run}",
        "trainer.max_steps=8",
        "data=local",
        f"data.path={text}",
        f"paths.cache_dir={cache_dir}",
    ]
    assert main(args) == 0, capsys.readouterr().err[-2000:]
