"""lgpt-eval: the training's validation loss and bits per byte reproduced, other text in the checkpoint's tokens,
DDP, harness tasks from a local folder, where the results go, and errors that leave nothing behind."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import lightning_gpt
from lightning_gpt.apps.evaluate import evaluate, main
from lightning_gpt.errors import UserError
from lightning_gpt.schema import EvalAppConfig, check_values

from .support.config import TINY_SHAKESPEARE, TINY_SHAKESPEARE_DATA, compose
from .support.eval_tasks import (
    HELLASWAG_TASK,
    LAMBADA_TASK,
    hellaswag_rows,
    lambada_rows,
    questions,
    write_multiple_choice_task,
    write_tasks,
)
from .support.processes import run_app
from .support.runs import column, read_metrics, train_tiny
from .support.tiers import fast_first

CPU = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
needs_harness = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("lm_eval") is None, reason="lm_eval is not installed"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir) -> Path:
    return train_tiny(tmp_path_factory.mktemp("eval"), cache_dir)


@pytest.fixture
def tasks(tmp_path) -> Path:
    """The two local tasks, in lines short enough for the tiny model's 32-character context."""
    return write_tasks(tmp_path / "tasks", hellaswag_rows(8, max_ending=24), lambada_rows(6))


def eval_args(run: Path, tmp_path: Path, cache_dir: Path) -> list[str]:
    return [
        f"ckpt_path={run}",
        f"paths.root_dir={tmp_path}",
        f"paths.output_dir={tmp_path}",
        f"paths.cache_dir={cache_dir}",
        *CPU,
    ]


def run_eval(run: Path, tmp_path: Path, cache_dir: Path, *overrides: str) -> dict:
    return evaluate(compose("eval", *eval_args(run, tmp_path, cache_dir), *overrides))


def written(capsys) -> tuple[str, Path]:
    """What lgpt-eval printed, and the results file its last line names."""
    out = capsys.readouterr().out
    return out, Path(out.strip().splitlines()[-1].removeprefix("written to "))


@pytest.mark.slow
def test_eval_reproduces_the_validation_loss_and_bits_per_byte_of_training(run, tmp_path, cache_dir, capsys):
    # Training validated on val_batches x batch_size = 2 x 8 evenly spaced windows of the same split, at its
    # last step (10): the loss in the best checkpoint's name is last.ckpt's.
    result = run_eval(run, tmp_path, cache_dir, *TINY_SHAKESPEARE_DATA, "windows=16", "data.batch_size=8")
    assert result["ckpt_path"] == str(run / "checkpoints" / "last.ckpt")  # a run folder means its last checkpoint
    [best] = (run / "checkpoints").glob("best-*.ckpt")
    assert result["loss"] == pytest.approx(float(best.stem.split("-val")[1]), abs=1e-4)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    # A char model on ASCII text, with no end-of-text: one byte per target, so bits per byte is the loss / ln 2.
    assert result["bpb"] == pytest.approx(result["loss"] / math.log(2), rel=1e-6)
    assert result["bpb"] == pytest.approx(column(read_metrics(run), "val/bpb")[-1], abs=1e-4)
    assert (result["windows"], result["block_size"], result["tokens"]) == (16, 32, 512)
    table, path = written(capsys)
    assert path.parent == run / "eval" and json.loads(path.read_text()) == result  # in the checkpoint's run folder
    assert f"loss           {result['loss']:.4f}" in table and f"bits per byte  {result['bpb']:.4f}" in table
    assert "local" in table and "val split" in table
    assert list(tmp_path.iterdir()) == []  # nothing where it ran: no outputs/, no .hydra, no log file


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
    assert result["bpb"] == pytest.approx(result["loss"] / math.log(2), rel=1e-6)


def test_text_with_a_byte_order_mark_and_windows_newlines_scores_as_the_same_text(run, tmp_path, cache_dir):
    """Issue 24, item 11, for lgpt-eval: a text saved by a Windows editor is the same text as with LF alone (a
    BOM would be a character the char model never saw, a CR one it never saw before a newline)."""
    text = TINY_SHAKESPEARE.read_text()[:20_000]
    (tmp_path / "plain.txt").write_text(text)
    (tmp_path / "windows.txt").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    plain, windows = (
        run_eval(run, tmp_path, cache_dir, "data=local", f"data.path={tmp_path / name}", "split=train")
        for name in ("plain.txt", "windows.txt")
    )
    assert {k: v for k, v in plain.items() if k != "data"} == {k: v for k, v in windows.items() if k != "data"}


@pytest.mark.parametrize(
    "tokenizer, message",
    [
        ("char", "holds char tokens of another vocabulary than the model's .* data=local data.path="),
        ("byte", "holds byte tokens, but the model reads char tokens .* data=local data.path="),
    ],
)
def test_a_prepared_folder_of_other_tokens_is_refused_naming_what_the_model_reads(
    run, tmp_path, cache_dir, tokenizer, message
):
    """Issue 24, item 16: a char checkpoint on a folder of char tokens of another vocabulary was told to use
    tokenizer.name=char, which it had; on a folder of byte tokens, to train with tokenizer.name=byte."""
    from lightning_gpt.data.prepare import prepare_folder
    from lightning_gpt.data.sources import Source

    (tmp_path / "abc.txt").write_text("abc cab bac\n" * 300)
    folder, _ = prepare_folder(Source("local", path=str(tmp_path / "abc.txt")), tokenizer, 0.1, tmp_path / "p")
    with pytest.raises(UserError, match=message):
        run_eval(run, tmp_path, cache_dir, "data=prepared", f"data.path={folder}")


@pytest.mark.parametrize(
    "overrides, message",
    fast_first(
        [
            (["split=test"], "split must be val, train or null"),
            (["tasks=[x]", "limit=0"], r"limit must be >= 1, got 0"),  # the schema's ranges (below) checked in the app
            (["tasks=[x,' ']"], r"tasks holds 1 empty name\(s\)"),
            (["data.block_size=64"], r"data.block_size=64 is longer than the model's context \(32\)"),
            (
                ["data=local", "data.path={tmp}/snowmen.txt"],
                "not in the character vocabulary.*training corpus has them all: data=local data.path=.*input.txt",
            ),
            (["ckpt_path={tmp}/nothing"], "checkpoint not found"),
            (["out_file={tmp}/snowmen.txt"], "snowmen.txt already exists; lgpt-eval writes a new file"),
        ],
        keep=2,
    ),
)
def test_bad_input_is_a_clear_error(run, tmp_path, cache_dir, overrides, message):
    (tmp_path / "snowmen.txt").write_text("\u2603 snow\n" * 500)
    with pytest.raises(UserError, match=message):
        run_eval(run, tmp_path, cache_dir, *(o.format(tmp=tmp_path) for o in overrides))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"split": None, "tasks": []}, "nothing to evaluate: split=null scores no data; give tasks="),
        ({"windows": 0}, r"windows must be >= 1, got 0"),
        ({"limit": 0}, r"limit must be >= 1, got 0"),
        ({"limit": -3}, r"limit must be >= 1, got -3"),
        ({"num_fewshot": -1}, r"num_fewshot must be >= 0, got -1"),
        ({"batch_size": 0}, r"batch_size must be >= 1, got 0"),
        ({"max_gen_toks": 0}, r"max_gen_toks must be >= 1, got 0"),
        ({"bootstrap_iters": -1}, r"bootstrap_iters must be >= 0, got -1"),
    ],
)
def test_the_schema_declares_the_ranges_of_its_keys(values, message):
    with pytest.raises(UserError, match=message):
        check_values(OmegaConf.create({"tasks": ["hellaswag"], **values}), EvalAppConfig)
    fine = {"split": None, "tasks": ["hellaswag"], "limit": 1, "num_fewshot": 0, "bootstrap_iters": 0}
    check_values(OmegaConf.create(fine), EvalAppConfig)


def slow(*values) -> pytest.param:
    return pytest.param(*values, marks=pytest.mark.slow)


def files(folder: Path) -> dict[str, float]:
    """Each file and folder, with its modification time."""
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


@needs_harness
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["limit=0"], "limit must be >= 1, got 0"),
        (["tasks=[snow]"], "the text holds 1 characters the model never saw in training ('\u2603')"),
        # Slow: a second or so each, and each reaches the same guarantee through another way of failing.
        slow(["lgpt.ckpt_path=x"], "unknown config key 'lgpt'"),
        slow(["ckpt_path={tmp}/nothing"], "checkpoint not found: {tmp}/nothing"),
        slow(["tasks_path={tmp}/nowhere"], "tasks_path '{tmp}/nowhere' is not a folder"),
        slow(["data.path={tmp}/snowmen.txt"], "characters '\u2603' are not in the character vocabulary"),
        slow(["tasks=[long]"], "the continuation ' long enough to outgrow the window' is 34 tokens, longer than"),
    ],
)
def test_a_refused_or_failed_eval_is_one_line_and_writes_nothing(
    run, tmp_path, cache_dir, capsys, monkeypatch, tasks, overrides, message
):
    """Hydra writes no folder, no .hydra and no log file for lgpt-eval, and the results file comes last."""
    (tmp_path / "snowmen.txt").write_text("\u2603 snow\n" * 500)
    write_multiple_choice_task(tasks, "snow", [{"ctx": "Snow is", "endings": ["\u2603", "white"], "label": 1}])
    write_multiple_choice_task(
        tasks, "long", [{"ctx": "A line", "endings": ["long enough to outgrow the window"], "label": 0}]
    )
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = files(run), files(tasks)
    argv = [f"ckpt_path={run}", f"paths.root_dir={tmp_path}", f"paths.cache_dir={cache_dir}", *CPU, "data=local"]
    defaults = {
        "data.path": str(TINY_SHAKESPEARE),
        "tasks": f"{HELLASWAG_TASK},{LAMBADA_TASK}",
        "tasks_path": str(tasks),
        "bootstrap_iters": "0",
    }
    overrides = [o.format(tmp=tmp_path) for o in overrides]
    given = {o.split("=")[0] for o in overrides}
    argv += [f"{k}={v}" for k, v in defaults.items() if k not in given] + overrides
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress bars of the tokenizer too, before it
    assert [line for line in err if line.startswith("error:")] == err[-1:], err
    assert err[-1].startswith("error: " + message.format(tmp=tmp_path)), err[-1]
    assert (files(run), files(tasks)) == before and list(cwd.iterdir()) == []
    assert not (tmp_path / "outputs").exists()


@needs_harness
@pytest.mark.slow  # two launches through the harness
def test_local_tasks_run_beside_the_split_and_land_in_the_run_folder(run, tmp_path, cache_dir, capsys, tasks):
    """tasks=a,b as the harness spells it; acc and acc_norm are the library's own scores; contexts longer than
    the model's window are cut on the left; each launch writes a new file, never replacing one."""
    from lightning_gpt.evaluation import evaluate_multiple_choice

    rows = hellaswag_rows(8, max_ending=24)
    rows[0]["ctx"] = " ".join(row["ctx"] for row in rows)  # hundreds of characters: cut on the left
    write_tasks(tasks, rows, lambada_rows(6))
    argv = [*eval_args(run, tmp_path, cache_dir), *TINY_SHAKESPEARE_DATA, "windows=4", "bootstrap_iters=0"]
    argv += [f"tasks={HELLASWAG_TASK},{LAMBADA_TASK}", f"tasks_path={tasks}", "batch_size=8"]
    assert main(argv) == 0
    out, path = written(capsys)
    assert path.parent == run / "eval"
    result = json.loads(path.read_text())
    model, tokenizer = lightning_gpt.load(run)
    ours = evaluate_multiple_choice(model, tokenizer, questions(rows))
    assert result["tasks"][HELLASWAG_TASK] == {"acc": ours["acc"], "acc_norm": ours["acc_norm"]}
    assert result["tasks"][LAMBADA_TASK]["perplexity"] > 1 and 0 <= result["tasks"][LAMBADA_TASK]["acc"] <= 1
    assert result["harness"]["results"][HELLASWAG_TASK]["acc,none"] == ours["acc"]  # the harness's own JSON
    assert result["windows"] == 4 and result["bpb"] == pytest.approx(result["loss"] / math.log(2), rel=1e-6)
    for line in ("bits per byte", HELLASWAG_TASK, "acc_norm", LAMBADA_TASK, "perplexity"):
        assert line in out
    assert main([*argv, "split=null", "limit=2"]) == 0  # tasks only: another file, the first one kept
    _, second = written(capsys)
    assert second != path and path.is_file() and "loss" not in json.loads(second.read_text())
    assert json.loads(second.read_text())["harness"]["n-samples"][HELLASWAG_TASK]["effective"] == 2


@needs_harness
@pytest.mark.slow
def test_an_unknown_task_names_close_ones(run, tmp_path, cache_dir, capsys, tasks):
    argv = [
        *eval_args(run, tmp_path, cache_dir),
        "split=null",
        f"tasks_path={tasks}",
        "tasks=hellaswg,lgpt_tiny_lambad",
    ]
    assert main(argv) == 2
    assert "error: unknown task 'hellaswg' (did you mean hellaswag" in capsys.readouterr().err


@pytest.mark.slow  # two launches
def test_a_checkpoint_outside_a_run_folder_writes_under_outputs(run, tmp_path, cache_dir, capsys):
    loose = tmp_path / "model.ckpt"
    loose.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    argv = [*eval_args(loose, tmp_path, cache_dir), *TINY_SHAKESPEARE_DATA, "windows=2"]
    assert main(argv) == 0
    _, path = written(capsys)
    assert path.parent == tmp_path / "outputs" / "eval"
    out_file = tmp_path / "named.json"
    assert main([*argv, f"out_file={out_file}"]) == 0
    assert written(capsys)[1] == out_file and json.loads(out_file.read_text())["windows"] == 2


def test_results_are_never_written_through_a_link(run, tmp_path, cache_dir, capsys):
    copy = tmp_path / "copy"  # a run folder of its own, where a link is planted at eval/
    (copy / "checkpoints").mkdir(parents=True)
    (copy / "checkpoints" / "last.ckpt").write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (copy / "eval").symlink_to(elsewhere)
    assert main([*eval_args(copy, tmp_path, cache_dir), "windows=2"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            f"{copy / 'eval'} is a symbolic link; lgpt-eval writes only into a folder of its own: remove the link, "
            "or give out_file=..."
        )
    )
    (tmp_path / "dangling.json").symlink_to(elsewhere / "target.json")
    assert main([*eval_args(copy, tmp_path, cache_dir), f"out_file={tmp_path / 'dangling.json'}"]) == 2
    assert "dangling.json already exists" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []


@pytest.mark.slow
def test_one_and_two_processes_give_the_same_loss_and_bits_per_byte(run, tmp_path, cache_dir):
    """17 windows split over 2 processes are padded, never repeated: the sums are exact, the means the same."""
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
    assert result["bpb"] == pytest.approx(one["bpb"], abs=1e-6)


@needs_harness
@pytest.mark.slow
@pytest.mark.parametrize("family", ["baby", "llama_baby", "mamba_baby"])
def test_harness_tasks_on_checkpoints_of_every_family_trained_by_lgpt_train(tmp_path, cache_dir, capsys, family):
    """lgpt-train, then lgpt-eval tasks=<hellaswag-style>,<lambada-style> on its run folder: the table shows
    acc, acc_norm and perplexity, the JSON lands in <run>/eval/, and acc is our own scorer's on that model."""
    from lightning_gpt.apps.train import main as train_main
    from lightning_gpt.evaluation import evaluate_multiple_choice

    from .support.runs import train_args

    args = train_args(tmp_path, cache_dir, "run", f"model={family}", "trainer.max_steps=10")
    assert train_main([a for a in args if family != "mamba_baby" or not a.startswith("model.n_head")]) == 0
    run = tmp_path / "run"
    rows = hellaswag_rows(12, max_ending=24)
    tasks = write_tasks(tmp_path / "tasks", rows, lambada_rows(8))
    capsys.readouterr()
    argv = [*eval_args(run, tmp_path, cache_dir), *TINY_SHAKESPEARE_DATA, "windows=4", "bootstrap_iters=0"]
    assert main([*argv, f"tasks={HELLASWAG_TASK},{LAMBADA_TASK}", f"tasks_path={tasks}"]) == 0
    out, path = written(capsys)
    assert path.parent == run / "eval"
    result = json.loads(path.read_text())
    model, tokenizer = lightning_gpt.load(run)
    assert result["harness"]["config"]["model_family"] == model.config.family
    ours = evaluate_multiple_choice(model, tokenizer, questions(rows))
    hellaswag, lambada = result["tasks"][HELLASWAG_TASK], result["tasks"][LAMBADA_TASK]
    assert (hellaswag["acc"], hellaswag["acc_norm"]) == (ours["acc"], ours["acc_norm"])
    assert lambada["perplexity"] > 1 and 0 <= lambada["acc"] <= 1
    table = {line.split("|")[5].strip(): line for line in out.splitlines() if line.count("|") > 7}  # by metric
    assert f"{hellaswag['acc_norm']:.4f}" in table["acc_norm"] and f"{lambada['perplexity']:.4f}" in table["perplexity"]
    assert f"bits per byte  {result['bpb']:.4f}" in out
