"""README.md's commands, as written: every lgpt-train command composes; those that fit on a CPU run for real
in a fresh folder (with a tiny model and few steps where the README's would take minutes)."""

from __future__ import annotations

import json
import re
import shlex
import sys

import pytest
import torch

from lightning_gpt.apps.evaluate import task_list

from .support.config import ROOT, SHARED, TINY, compose
from .support.eval_tasks import hellaswag_rows, write_jsonl

README = (ROOT / "README.md").read_text()
NEEDS_A_GPU_OR_NETWORK = re.compile(r"trainer=(gpu|ddp |ddp$|fsdp|multinode)|gpt2_|init_from|tokenizer=gpt2|devices=8")


def readme_commands() -> list[str]:
    """Shell lines of the ```bash blocks (continuations joined), then commands quoted inline in tables and prose."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        lines += [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    inline = re.findall(r"`((?:echo [^`|]+\| )?lgpt-[a-z]+(?: [^`]*)?)`", README)
    return lines + inline


def train_overrides(command: str) -> list[str] | None:
    """The overrides of an `lgpt-train` command (flags dropped), or None if it is no single training run."""
    words = shlex.split(command, comments=True)
    if "lgpt-train" not in words or "-m" in words:
        return None
    return [w for w in words[words.index("lgpt-train") + 1 :] if "=" in w and not w.startswith("-")]


def test_the_readme_has_the_commands_this_test_expects():
    commands = readme_commands()
    assert sum(train_overrides(c) is not None for c in commands) >= 20
    assert not [c for c in commands if "..." in c or ".../" in c]  # no placeholders a user cannot run


@pytest.mark.parametrize("command", sorted({c for c in readme_commands() if train_overrides(c) is not None}), ids=str)
@pytest.mark.slow  # ~30 compositions, half a second each: documentation drift, not an everyday edit's concern
def test_every_training_command_composes(command):
    overrides = [o.replace("<stamp>", "2026-01-01_12-00-00_ab12") for o in train_overrides(command)]
    cfg = compose("train", *overrides)
    assert cfg.trainer.max_steps > 0


def run_command(command: str, capsys) -> tuple[int, str, str]:
    """Run one README line in this process, as the shell would: `lgpt-<app> args` (or `lgpt <app> args`) is
    that app's main(args); `echo "text" | lgpt-sample ...` feeds the text to standard input; `python -c`
    runs the code. Returns the exit code and what was printed (stdout, stderr)."""
    import importlib
    import io

    from lightning_gpt.apps.lgpt import APPS as SUBCOMMANDS

    command = command.rsplit("&& ", 1)[-1]  # the set-up line: what follows the installation
    stdin = None
    if command.startswith("echo "):
        echoed, command = command.split("|", 1)
        stdin = shlex.split(echoed)[1] + "\n"
    words = shlex.split(command, comments=True)
    if words[:2] == ["python", "-c"]:
        code = 0
        exec(compile(words[2], "<readme>", "exec"), {"__name__": "__main__"})
    else:
        name, *args = words
        if name == "lgpt":
            name, *args = [f"lgpt-{args[0]}", *args[1:]]
        module = SUBCOMMANDS[name.removeprefix("lgpt-")][0]
        saved = sys.stdin
        sys.stdin = io.StringIO(stdin) if stdin is not None else sys.stdin
        try:
            code = importlib.import_module(f"lightning_gpt.apps.{module}").main(args)
        finally:
            sys.stdin = saved
    out, err = capsys.readouterr()
    return code, out, err


def tiny(command: str, steps: int) -> str:
    """The command with a tiny model and `steps` steps: only keys the command does not set itself, and the step
    count (appended last, so it wins)."""
    comment = command.find("  #")
    command = command[:comment].rstrip() if comment > 0 else command
    given = {w.split("=", 1)[0] for w in shlex.split(command) if "=" in w}
    extra = [o for o in TINY if o.split("=", 1)[0] not in given]
    extra += ["trainer.val_check_interval=5", "callbacks.model_checkpoint.every_n_train_steps=10"]
    return f"{command} {shlex.join(extra)} trainer.max_steps={steps}"


@pytest.mark.slow
def test_the_cpu_commands_run_as_written_in_a_fresh_folder(tmp_path, cache_dir, capsys, monkeypatch):
    (tmp_path / "shared").symlink_to(SHARED)  # ../shared/data/... as beside a checkout
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / "prompt.txt").write_text("First Citizen:\n")
    (clone / "other.txt").write_text("ROMEO: What say you, my lord? We shall go to the king.\n" * 300)
    monkeypatch.chdir(clone)
    monkeypatch.setenv("LGPT_CACHE_DIR", str(cache_dir))
    commands = readme_commands()

    def run(command: str) -> tuple[str, str]:
        code, out, err = run_command(command, capsys)
        assert code == 0, f"{command}\n{err[-3000:]}"
        return out, err

    # The set-up line's training run (the installation itself is what CI does).
    [setup] = [c for c in commands if c.startswith("(pip install torch")]
    run(tiny(setup, 10))
    [stamp] = [p.name for p in (clone / "outputs" / "train" / "runs").iterdir()]
    names = {"<stamp>": stamp, "<run>": f"outputs/train/runs/{stamp}", "step002000.ckpt": "step000010.ckpt"}

    def as_written(command: str) -> str:
        for placeholder, value in names.items():
            command = command.replace(placeholder, value)
        return command

    sweeps = [
        c
        for c in commands
        if c.startswith("lgpt-train -m")
        and "hparams_search" not in c  # test_sweeps
        and "trainer=ddp " not in c
        and "submitit_slurm" not in c  # test_sweeps builds its sbatch script
    ]  # GPU sweeps: test_distributed runs them with trainer=ddp_cpu
    assert len(sweeps) == 2
    for command in sweeps:
        run(tiny(command, 2))
    assert len(list((clone / "outputs" / "train" / "multiruns").glob("*/*/checkpoints/last.ckpt"))) == 4 + 3

    resume = commands[commands.index(next(c for c in commands if c.startswith("lgpt-train ckpt_path="))) :][:4]
    for i, command in enumerate(resume):
        run(tiny(as_written(command), 12 + 2 * i))
    run_dir = clone / "outputs" / "train" / "runs" / stamp
    assert [line for line in (run_dir / "resumes.yaml").read_text().splitlines() if "step:" in line] == [
        "  step: 10",
        "  step: 12",
    ]
    assert (clone / "outputs" / "myrun" / "checkpoints" / "last.ckpt").is_file()

    # The local task of the Evaluate section: its YAML as written there, questions short enough for the tiny model.
    [task_yaml] = re.findall(r"```yaml\n# my_tasks/next_line.yaml\n(.*?)```", README, re.S)
    (clone / "my_tasks").mkdir()
    (clone / "my_tasks" / "next_line.yaml").write_text(task_yaml)
    write_jsonl(clone / "my_tasks" / "next_line.jsonl", hellaswag_rows(8, max_ending=24))
    sampling = [c for c in commands if re.match(r"(echo .*\| )?lgpt-(sample|eval|export) ", c)]
    hub_tasks = [c for c in sampling if "tasks=" in c and "tasks_path=" not in c]  # the harness's: need the network
    sampling = [c for c in sampling if c not in hub_tasks]
    assert len(sampling) == 9 and len(hub_tasks) == 2  # lgpt-export format=ckpt twice: Sample... and Scale out
    done = [run(as_written(command)) for command in sampling]
    for command, (_, err) in zip(sampling, done):
        if "lgpt-sample" in command:
            assert f"loaded outputs/train/runs/{stamp}/checkpoints/last.ckpt" in err
    assert "ROMEO: Nay, I'll go." in done[2][0]
    assert (clone / "my-gpt2" / "model.safetensors").is_file()
    whole, last = (
        torch.load(p, weights_only=True) for p in (clone / "whole" / "last.ckpt", run_dir / "checkpoints/last.ckpt")
    )
    assert whole["global_step"] == last["global_step"] and whole["state_dict"].keys() == last["state_dict"].keys()
    # One file per lgpt-eval launch, in the run folder, as the Evaluate section says.
    results = [json.loads(p.read_text()) for p in (run_dir / "eval").glob("*.json")]
    assert len(results) == 3 and sum("bpb" in r for r in results) == 2
    [tasks] = [r["tasks"] for r in results if "tasks" in r]
    assert set(tasks["next_line"]) == {"acc", "acc_norm"}
    for command in hub_tasks:  # composed as they would run
        words = shlex.split(as_written(command), comments=True)[1:]
        cfg = compose("eval", *task_list(words), "paths.output_dir=.")
        assert cfg.tasks == [w for w in words if w.startswith("tasks=")][0][6:].split(",")

    infos = [c for c in commands if c.startswith("lgpt-info ")]
    assert len(infos) == 3 and "8,030,261,248 parameters" in run(infos[0])[0]
    run(infos[1])
    assert "largest micro-batch in a 80 GiB device" in run(infos[2])[0]  # Scale out's memory plan

    plots = [c for c in commands if c.startswith("lgpt-plot outputs/train/runs/<stamp>")]
    assert len(plots) == 2
    for plot in plots:
        run(as_written(plot))
    assert (clone / "loss.png").is_file() and (run_dir / "val_bpb.png").is_file()
    generate, explain = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(run(shlex.join(["python", "-c", as_written(generate)]))[0]) >= 100
    run(shlex.join(["python", "-c", as_written(explain)]))
    assert (clone / "explain.html").stat().st_size > 10_000


@pytest.mark.slow
def test_the_data_sections_commands_run_as_written_on_local_documents(tmp_path, cache_dir, capsys, monkeypatch):
    """The Data section's training commands, in a fresh folder holding the JSONL files they name, with a tiny
    model and a few steps (streaming a hub dataset needs the network: test_every_training_command_composes
    composes that one)."""
    import json

    from .support.runs import read_metrics

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LGPT_CACHE_DIR", str(cache_dir))
    section = README[README.index("## Data\n") : README.index("### Large corpora")]
    commands = [line for block in re.findall(r"```bash\n(.*?)```", section, re.S) for line in block.splitlines()]
    local = [c for c in commands if "data.streaming" not in c]
    assert len(commands) == 3 and len(local) == 2
    for name, text in (
        ("docs", "a document {} about {}"),
        ("web", "a page {} on {}"),
        ("code", "def f{}(): return {}"),
    ):
        rows = [{"text": text.format(i, "x" * (i % 40))} for i in range(400)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    for command in local:
        code, _, err = run_command(tiny(command, 6), capsys)
        assert code == 0, f"{command}\n{err[-3000:]}"
    [mixture] = [
        run for run in (tmp_path / "outputs" / "train" / "runs").iterdir() if "web" in (run / "config.yaml").read_text()
    ]
    logged = read_metrics(mixture)
    assert any(row.get("train/tokens/web") for row in logged) and any(row.get("val/loss/code") for row in logged)
