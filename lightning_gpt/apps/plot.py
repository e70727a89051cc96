"""lgpt-plot: train and validation loss curves of one or more runs, from their CSV logs, as a PNG.

lgpt-plot outputs/train/runs/<stamp>                  # one run folder -> outputs/train/runs/<stamp>/loss.png
lgpt-plot outputs/train/runs/* -o compare.png         # several runs, one colour each
lgpt-plot outputs/train/multiruns/<stamp>             # a sweep: one line per job -> <sweep folder>/loss.png
lgpt-plot outputs/train/runs/<stamp> --metric val/bpb # bits per byte (compares tokenizers) -> <run>/val_bpb.png
With several runs, a table of each run's best val/loss (or --metric) is printed too. Without -o the chart goes
into the run or sweep folder (the folder holding the runs), and its path is printed.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from pathlib import Path
from typing import Any

from lightning_gpt.apps.sweeps import job_overrides
from lightning_gpt.errors import UserError
from lightning_gpt.io import create_new, temporary_name

METRICS = "metrics.csv"
SOFTWARE = "lgpt-plot"  # in each chart's PNG metadata: how a chart of ours is told from another file


def _is_our_chart(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return SOFTWARE.encode() in f.read(4096)
    except OSError:
        return False


def find_logs(paths: list[str]) -> list[Path]:
    """The metrics.csv of each path: the file itself, a run folder's csv/metrics.csv, or all those under a folder.

    Of several paths (`runs/*`), those without a log (a run that failed before logging) are skipped, saying so.
    """
    logs, missing = [], []
    for arg in paths:
        path = Path(arg).expanduser()
        if path.is_file():
            logs.append(path)
        elif (path / "csv" / METRICS).is_file():
            logs.append(path / "csv" / METRICS)
        elif path.is_dir() and (found := sorted(path.rglob(METRICS))):
            logs.extend(found)
        else:
            missing.append(arg)
    if missing and not logs:
        raise UserError(f"no {METRICS} at {missing[0]}: give a run folder (with csv/{METRICS}) or a CSV file")
    for arg in missing:
        print(f"skipping {arg}: no {METRICS} in it", file=sys.stderr)
    return logs


LABELS = {"val/loss": "loss (cross-entropy, nats)", "val/bpb": "bits per byte", "val/ppl": "perplexity"}


def higher_is_better(metric: str) -> bool:
    """Accuracies (the downstream callback's eval/<task>/acc, acc_norm) rise as a model learns; losses fall."""
    return metric.rsplit("/", 1)[-1] in ("acc", "acc_norm")


def read_curves(log: Path, metric: str = "val/loss") -> dict[str, list[tuple[int, float]]]:
    """(step, value) points of the metric, and of train/loss beside val/loss; Lightning's CSV has one metric
    group per row."""
    names = ["train/loss", metric] if metric == "val/loss" else [metric]  # no train/bpb: training logs the loss
    curves: dict[str, list[tuple[int, float]]] = {name: [] for name in names}
    with _read(log) as f:
        rows = csv.DictReader(f)
        if not rows.fieldnames or "step" not in rows.fieldnames:
            raise UserError(f"{log} is not a Lightning CSV log (no 'step' column); give a run's csv/{METRICS}")
        for row in _whole(rows, log):
            for name, points in curves.items():
                if row.get(name):
                    try:
                        points.append((int(row["step"]), float(row[name])))
                    except (TypeError, ValueError):
                        raise UserError(
                            f"{log} is damaged at line {rows.line_num}: {name} {row[name]!r} at step {row['step']!r}; "
                            "remove that line, or plot the other runs"
                        ) from None
    if not any(curves.values()):
        if metric != "val/loss":
            raise UserError(f"{log} holds no {metric}; plot one of its columns: {', '.join(columns(log))}")
        raise UserError(f"{log} holds no train/loss or val/loss yet; plot it after some logged steps")
    return curves


def _read(log: Path) -> Any:
    """A CSV log opened as text, read as possibly damaged: bytes that are not UTF-8 are one line naming the file."""
    try:
        return io.StringIO(log.read_bytes().decode("utf-8-sig"), newline="")
    except OSError as e:
        raise UserError(f"cannot read {log} ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise UserError(
            f"{log} is damaged (not UTF-8 text at byte {e.start}); restore it, or plot the other runs"
        ) from e


def _whole(rows: csv.DictReader, log: Path) -> Any:
    """The rows of a CSV log; a line the csv module cannot read (a NUL byte) is one line naming it."""
    try:
        yield from rows
    except csv.Error as e:
        raise UserError(
            f"{log} is damaged after line {rows.line_num} ({e}); remove that line, or plot the other runs"
        ) from e


def columns(log: Path) -> list[str]:
    """The validation and evaluation metrics a CSV log has columns for."""
    with _read(log) as f:
        return [name for name in next(csv.reader(f), []) if name.startswith(("val/", "eval/"))]


def run_dir(log: Path) -> Path:
    return log.parent.parent if log.parent.name == "csv" else log.parent


def run_label(log: Path, logs: list[Path]) -> str:
    """The run folder's path, shortened to what tells it apart from the other runs."""
    run = run_dir(log)
    if len(logs) == 1:
        return run.name
    common = Path(os.path.commonpath([str(run_dir(p).resolve()) for p in logs]))
    return str(run.resolve().relative_to(common)) if run.resolve() != common else run.name


def short(override: str) -> str:
    """`optim.lr=0.0026018844` -> `optim.lr=0.002602`: labels stay readable when a sampler picked the values."""
    key, _, value = override.partition("=")
    try:
        return f"{key}={float(value):.4g}" if "." in value or "e" in value.lower() else override
    except ValueError:
        return override


def swept(logs: list[Path]) -> list[str]:
    """Each run's overrides that differ between the runs (sweep jobs); empty for runs without overrides."""
    overrides = [job_overrides(run_dir(log)) for log in logs]
    common = set.intersection(*map(set, overrides)) if len(logs) > 1 else set()
    return [" ".join(short(o) for o in ov if o not in common) for ov in overrides]


def summary(logs: list[Path], overrides: list[str], curves: list[dict], metric: str = "val/loss") -> str:
    """A table with a row per run: job, overrides, best value of the metric; the best run marked with *."""
    pick = max if higher_is_better(metric) else min
    best = [pick((v for _, v in c[metric]), default=None) for c in curves]
    top = pick((b for b in best if b is not None), default=None)
    jobs = [run_label(log, logs) for log in logs]
    wj, wo = max(3, *map(len, jobs)), max(9, *map(len, overrides))
    rows = [f"{'job':<{wj}}  {'overrides':<{wo}}  best {metric}"]
    for job, ov, b in zip(jobs, overrides, best):
        rows.append(f"{job:<{wj}}  {ov or '-':<{wo}}  " + ("-" if b is None else f"{b:.4f}" + " *" * (b == top)))
    return "\n".join(rows)


def default_out(paths: list[str], logs: list[Path], metric: str = "val/loss") -> Path:
    """loss.png (<metric>.png: val_bpb.png) in the one folder given (a run or a sweep folder), else in the folder
    holding all the runs."""
    name = "loss.png" if metric == "val/loss" else metric.replace("/", "_") + ".png"
    given = [Path(p).expanduser() for p in paths]
    if len(given) == 1 and given[0].is_dir():
        return given[0] / name
    return Path(os.path.commonpath([str(run_dir(log).absolute().parent) for log in logs])) / name


def plot(
    paths: list[str], out: str | None = None, title: str | None = None, metric: str = "val/loss"
) -> tuple[Path, str]:
    """Draw every run's validation metric (dots on a line) and, for val/loss, its train loss (line) on one chart,
    a sweep job labelled by its overrides; return the PNG's path and, for several runs, the summary table (else
    "")."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    logs = find_logs(paths)
    curves, overrides = [read_curves(log, metric) for log in logs], swept(logs)
    names = [ov or run_label(log, logs) for ov, log in zip(overrides, logs)]
    short_name = metric.removeprefix("val/")
    # One legend entry per run, below the chart: sweep labels are long, and a sweep may have many jobs.
    fig = Figure(figsize=(8, 5 + 0.2 * len(logs)), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    for i, (curve, name) in enumerate(zip(curves, names)):
        color = f"C{i % 10}"
        if curve[metric]:
            steps, values = zip(*curve[metric])
            ax.plot(steps, values, "o-", color=color, markersize=4, label=f"{name} ({short_name} {values[-1]:.4f})")
        if curve.get("train/loss"):
            label = None if curve[metric] else name
            ax.plot(*zip(*curve["train/loss"]), color=color, alpha=0.45, linewidth=1, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(LABELS.get(metric, metric))
    what = "loss" if metric == "val/loss" else metric
    what = what if len(logs) > 1 else f"{what}: {run_label(logs[0], logs)}"
    legend = "train: thin line, val: dots" if metric == "val/loss" else "at each validation"
    ax.set_title(f"{title or what}\n{legend}", fontsize="medium")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", fontsize="small")
    path = Path(out).expanduser() if out else default_out(paths, logs, metric)
    if path.is_symlink() or path.exists() and not _is_our_chart(path):
        raise UserError(f"{path} exists and is not a chart of lgpt-plot; choose another -o/--out (or move it)")
    fresh = temporary_name(path, ".png")  # a new name beside it, then renamed: nothing planted is followed
    try:
        with create_new(fresh) as f:
            fig.savefig(f, format="png", metadata={"Software": SOFTWARE})
        os.replace(fresh, path)
    except BaseException as e:
        fresh.unlink(missing_ok=True)  # a full disk, Ctrl-C: no half-written chart left beside
        if isinstance(e, OSError):
            raise UserError(f"cannot write {path} ({e.strerror}); choose another -o/--out") from e
        raise
    return path, summary(logs, overrides, curves, metric) if len(logs) > 1 else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lgpt-plot",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument("runs", nargs="+", help="run folders, metrics.csv files, or folders holding runs")
    parser.add_argument(
        "-o", "--out", help="the PNG to write (default: loss.png, or <metric>.png, in the run or sweep folder)"
    )
    parser.add_argument("--title", help="chart title (default: the run's name)")
    parser.add_argument(
        "--metric",
        default="val/loss",
        help="the validation metric to draw: val/loss (with train/loss; the default), val/bpb (bits per byte, "
        "comparable across tokenizers), val/ppl, or a logged eval/<task>/acc_norm",
    )
    try:
        args = parser.parse_args(argv)
        path, table = plot(args.runs, args.out, args.title, args.metric)
    except SystemExit as e:  # argparse: --help, or a usage error
        return e.code if isinstance(e.code, int) else 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{table}\n{path}" if table else path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
