"""lgpt-sample and lightning_gpt.load: streaming, batches, seeds, checkpoint lookup and every bad input."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lightning_gpt
from lightning_gpt.apps.sample import SEPARATOR, main, write_samples
from lightning_gpt.errors import UserError
from lightning_gpt.generation import generate

from .support.config import compose
from .support.runs import train_tiny
from .support.tiers import fast_first


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir) -> Path:
    return train_tiny(tmp_path_factory.mktemp("sample"), cache_dir)


class Recorder:
    """A stdout that remembers each write, to see text arrive while it is generated."""

    def __init__(self):
        self.writes: list[str] = []

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.writes)


def sample(run: Path, *overrides: str, out=None) -> list[str]:
    return write_samples(compose("sample", f"ckpt_path={run}", "device=cpu", *overrides), out or Recorder())


@pytest.mark.slow
def test_samples_stream_the_first_and_print_the_rest(run):
    out = Recorder()
    samples = sample(run, "prompt=ROMEO:", "num_samples=3", "max_new_tokens=30", out=out)
    assert len(samples) == 3 and len(set(samples)) == 3
    assert all(s.startswith("ROMEO:") and len(s) == len("ROMEO:") + 30 for s in samples)  # char model: no end-of-text
    assert out.text == "".join(f"{s}\n{SEPARATOR}\n" for s in samples)
    assert len(out.writes) > 30  # the first sample arrived token by token


@pytest.mark.slow
def test_a_seed_repeats_a_sample_and_greedy_matches_the_python_api(run):
    assert sample(run, "seed=1", "max_new_tokens=40") == sample(run, "seed=1", "max_new_tokens=40")
    assert sample(run, "seed=1", "max_new_tokens=40") != sample(run, "seed=2", "max_new_tokens=40")

    model, tokenizer = lightning_gpt.load(run)
    prompt = torch.tensor([tokenizer.encode("KING:")])
    tokens = torch.cat(list(generate(model, prompt, 40, temperature=0, use_cache=False)), dim=1)[0].tolist()
    assert sample(run, "prompt=KING:", "temperature=0", "max_new_tokens=40") == ["KING:" + tokenizer.decode(tokens)]


def test_prompt_from_a_file_and_empty_prompt(run, tmp_path):
    (tmp_path / "prompt.txt").write_text("First Citizen:\nSpeak.")
    [text] = sample(run, f"prompt=@{tmp_path / 'prompt.txt'}", "max_new_tokens=5")
    assert text.startswith("First Citizen:\nSpeak.") and len(text) == len("First Citizen:\nSpeak.") + 5
    [text] = sample(run, "max_new_tokens=5")  # starts from a newline: the char vocabulary has no end-of-text
    assert len(text) == 5


def test_a_run_folder_means_its_last_checkpoint(run):
    assert {p.name.split("-")[0] for p in (run / "checkpoints").glob("*.ckpt")} == {
        "best",
        "last.ckpt",
        "step000010.ckpt",
    }
    assert lightning_gpt.find_checkpoint(run) == run / "checkpoints" / "last.ckpt"
    assert lightning_gpt.find_checkpoint(run / "checkpoints") == run / "checkpoints" / "last.ckpt"
    assert lightning_gpt.find_checkpoint(run / "checkpoints" / "last.ckpt") == run / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_a_prompt_that_needs_quoting_reads_from_stdin_or_gets_the_quoted_form(run, capsys, monkeypatch):
    text = "Ω café, I'll go"
    monkeypatch.setattr(sys, "stdin", io.StringIO("ROMEO, I'll go"))
    assert main([f"ckpt_path={run}", "prompt=-", "max_new_tokens=5", "device=cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ROMEO, I'll go") and len(out.split("\n")[0]) == len("ROMEO, I'll go") + 5
    assert main([f"ckpt_path={run}", f"prompt={text}"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    quoted = """'prompt="Ω café, I'"'"'ll go"'"""
    assert line.endswith(f"type it as {quoted}; or, for a prompt, prompt=- reads it from standard input")
    as_typed = subprocess.run(
        f"{sys.executable} -m lightning_gpt.apps.sample --cfg job {quoted}", shell=True, capture_output=True, text=True
    )
    assert f"prompt: {text}" in as_typed.stdout  # the suggested form really parses


@pytest.mark.slow
def test_help_lists_only_the_apps_own_options(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lgpt-sample: generate text") and "temperature: 0.8" in out
    assert "experiment:" not in out and "Configuration groups" not in out  # lgpt-train's: test_train


def test_load_strips_torch_compile_prefixes(run, tmp_path):
    path = lightning_gpt.find_checkpoint(run)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"] = {k.replace("model.", "model._orig_mod.", 1): v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp_path / "compiled.ckpt")
    idx = torch.randint(0, 60, (1, 16))
    assert torch.equal(lightning_gpt.load(tmp_path / "compiled.ckpt")[0](idx)[0], lightning_gpt.load(path)[0](idx)[0])


@pytest.mark.parametrize(
    "overrides, message",
    fast_first(
        [
            (["ckpt_path=/no/such/run"], "checkpoint not found"),
            (["ckpt_path={tmp}/other.ckpt"], "not a lightning_gpt checkpoint"),
            (["ckpt_path={tmp}/notes.txt"], "not a lightning_gpt checkpoint"),
            (["prompt=@{tmp}/snowman.txt"], "not in the character vocabulary"),
            (["prompt=@{tmp}/missing.txt"], "prompt file"),
            (["max_new_tokens=0"], "max_new_tokens must be at least 1"),
            (["top_p=0"], r"top_p must be in \(0, 1\]"),
            (["top_p=1.5"], r"top_p must be in \(0, 1\]"),
            (["temperature=-0.5"], "temperature must be a finite number >= 0"),
            (["num_samples=0"], "num_samples must be at least 1"),
            (["precision=8"], "unknown precision"),
            (["device=gpu"], "unknown device"),
        ],
        keep=3,
    ),
)
def test_bad_input_is_a_clear_error(run, tmp_path, overrides, message):
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "snowman.txt").write_text("a snowman: \u2603")
    with pytest.raises(UserError, match=message):
        sample(run, *(o.format(tmp=tmp_path) for o in overrides))


def test_text_goes_to_stdout_and_messages_to_stderr(run, capsys):
    [text] = write_samples(compose("sample", f"ckpt_path={run}", "device=cpu", "prompt=ROMEO:", "max_new_tokens=20"))
    out, err = capsys.readouterr()
    assert out == f"{text}\n{SEPARATOR}\n"
    assert f"loaded {run / 'checkpoints' / 'last.ckpt'}: " in err and "parameters, char tokenizer, on cpu" in err


@pytest.mark.slow
def test_the_command_line_reports_bad_input_in_one_line(run, capsys):
    assert main([f"ckpt_path={run}", "top_p=2"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines() == ["error: top_p must be in (0, 1], got 2.0"]


def test_importing_the_package_does_not_import_torch():
    code = "import sys, lightning_gpt; assert lightning_gpt.load and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
