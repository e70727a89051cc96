"""The downstream callback: a multiple-choice task's accuracy logged during training, to every logger, exactly
the library's score of the same model; its default questions rebuilt from the corpus; bad input stops the run
before it trains."""

from __future__ import annotations

import json
import re

import pytest

import lightning_gpt
from lightning_gpt.evaluation import evaluate_multiple_choice, read_questions
from lightning_gpt.evaluation.multiple_choice import SHAKESPEARE_NEXT_LINE

from .support.config import TINY, TINY_SHAKESPEARE_DATA
from .support.eval_tasks import hellaswag_rows, shakespeare_next_line_rows, write_jsonl
from .support.runs import read_metrics

ON = "callbacks=[default,downstream]"


def test_the_shipped_questions_are_rebuilt_from_the_embedded_corpus():
    rows = [json.loads(line) for line in SHAKESPEARE_NEXT_LINE.read_text(encoding="utf-8").splitlines()]
    assert rows == shakespeare_next_line_rows()
    assert len(read_questions(SHAKESPEARE_NEXT_LINE)) == 200 and len(read_questions(SHAKESPEARE_NEXT_LINE, 7)) == 7


@pytest.mark.slow
def test_accuracy_at_each_validation_and_every_n_steps_reaches_csv_and_tensorboard(lgpt_train, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    every = write_jsonl(tmp_path / "short.jsonl", hellaswag_rows(9, max_ending=24))
    run = lgpt_train(
        *TINY,
        *TINY_SHAKESPEARE_DATA,
        "model.block_size=64",  # the default questions' endings are up to 40 characters
        "logger=[csv,tensorboard]",
        "trainer.max_steps=10",
        "trainer.val_check_interval=5",
        "trainer.log_every_n_steps=4",
        ON,
        "callbacks.downstream.limit=30",
        # A second one, every 3 optimizer steps, on questions of its own:
        "+callbacks.every3._target_=lightning_gpt.training.callbacks.DownstreamEval",
        f"+callbacks.every3.path={every}",
        "+callbacks.every3.name=every3",
        "+callbacks.every3.limit=null",
        "+callbacks.every3.every_n_steps=3",
        "+callbacks.every3.batch_size=8",
    )
    rows = read_metrics(run)
    logged = {key: {int(r["step"]): float(r[key]) for r in rows if r.get(key)} for key in rows[0]}
    default = "eval/shakespeare_next_line"
    assert list(logged[f"{default}/acc"]) == [4, 9]  # at each validation, beside val/loss
    assert list(logged[f"{default}/acc"]) == list(logged["val/loss"])
    assert list(logged["eval/every3/acc_norm"]) == [2, 5, 8]  # after steps 3, 6 and 9, not at validations
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    for key in (f"{default}/acc", f"{default}/acc_norm", "eval/every3/acc"):
        assert {e.step: e.value for e in events.Scalars(key)} == pytest.approx(logged[key])
    # The last validation's numbers are the library's for the model it saved at that step.
    model, tokenizer = lightning_gpt.load(run)
    expected = evaluate_multiple_choice(model, tokenizer, read_questions(SHAKESPEARE_NEXT_LINE, 30))
    assert logged[f"{default}/acc"][9] == pytest.approx(expected["acc"])
    assert logged[f"{default}/acc_norm"][9] == pytest.approx(expected["acc_norm"])
    assert all(v * 30 == pytest.approx(round(v * 30)) for v in logged[f"{default}/acc"].values())  # counts of 30


@pytest.mark.parametrize(
    "overrides, message",
    [
        ([], r"callbacks.downstream \(shakespeare_next_line.jsonl\): the continuation .* is \d\d tokens, longer than"),
        (["callbacks.downstream.path={tmp}/nothing.jsonl"], "no questions file at {tmp}/nothing.jsonl"),
        (["callbacks.downstream.path={tmp}/snow.jsonl"], "never saw in training \\('\u2603'\\)"),
        (["callbacks.downstream.path={tmp}/bad.jsonl"], r"bad.jsonl, line 2: not a question in HellaSwag's schema"),
        (["callbacks.downstream.limit=0"], r"callbacks.downstream.limit must be at least 1 \(or null\), got 0"),
    ],
)
@pytest.mark.slow  # a launch each, about a second
def test_bad_questions_stop_the_run_before_it_trains(lgpt_train, tmp_path, capsys, overrides, message):
    write_jsonl(tmp_path / "snow.jsonl", [{"ctx": "Let it", "endings": ["\u2603", "rain"], "label": 0}])
    write_jsonl(tmp_path / "bad.jsonl", [{"ctx": "a", "endings": ["b"], "label": 0}, {"ctx": "a", "label": 0}])
    overrides = [o.format(tmp=tmp_path) for o in overrides]
    lgpt_train(*TINY, *TINY_SHAKESPEARE_DATA, ON, *overrides, code=2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("error:")]) == 1, err
    assert re.search(message.format(tmp=tmp_path), err[-1]), err[-1]
    assert not (tmp_path / "run").exists()  # a run that fails before it trains leaves no folder
