"""lgpt-plot: train and validation loss curves of one or more runs, from their CSV logs, as a PNG.

lgpt-plot outputs/train/runs/<stamp>                  # one run folder -> outputs/train/runs/<stamp>/loss.png
lgpt-plot outputs/train/runs/* -o compare.png         # several runs, one colour each
lgpt-plot outputs/train/multiruns/<stamp>             # a sweep: one line per job -> <sweep folder>/loss.png
With several runs, a table of each run's best val/loss is printed too. Without -o the chart goes into the run
or sweep folder (the folder holding the runs), and its path is printed.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from lightning_gpt.apps.sweeps import job_overrides
from lightning_gpt.errors import UserError
from lightning_gpt.io import temporary_name

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


def read_curves(log: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) points of train/loss and val/loss; Lightning's CSV has one metric group per row."""
    curves: dict[str, list[tuple[int, float]]] = {"train/loss": [], "val/loss": []}
    with open(log, newline="", encoding="utf-8") as f:
        rows = csv.DictReader(f)
        if not rows.fieldnames or "step" not in rows.fieldnames:
            raise UserError(f"{log} is not a Lightning CSV log (no 'step' column); give a run's csv/{METRICS}")
        for row in rows:
            for name, points in curves.items():
                if row.get(name):
                    points.append((int(row["step"]), float(row[name])))
    if not any(curves.values()):
        raise UserError(f"{log} holds no train/loss or val/loss yet; plot it after some logged steps")
    return curves


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


def summary(logs: list[Path], overrides: list[str], curves: list[dict]) -> str:
    """A table with a row per run: job, overrides, best val/loss; the best run marked with *."""
    best = [min((v for _, v in c["val/loss"]), default=None) for c in curves]
    top = min((b for b in best if b is not None), default=None)
    jobs = [run_label(log, logs) for log in logs]
    wj, wo = max(3, *map(len, jobs)), max(9, *map(len, overrides))
    rows = [f"{'job':<{wj}}  {'overrides':<{wo}}  best val/loss"]
    for job, ov, b in zip(jobs, overrides, best):
        rows.append(f"{job:<{wj}}  {ov or '-':<{wo}}  " + ("-" if b is None else f"{b:.4f}" + " *" * (b == top)))
    return "\n".join(rows)


def default_out(paths: list[str], logs: list[Path]) -> Path:
    """loss.png in the one folder given (a run or a sweep folder), else in the folder holding all the runs."""
    given = [Path(p).expanduser() for p in paths]
    if len(given) == 1 and given[0].is_dir():
        return given[0] / "loss.png"
    return Path(os.path.commonpath([str(run_dir(log).absolute().parent) for log in logs])) / "loss.png"


def plot(paths: list[str], out: str | None = None, title: str | None = None) -> tuple[Path, str]:
    """Draw every run's train loss (line) and val loss (dots on a line) on one chart, a sweep job labelled by
    its overrides; return the PNG's path and, for several runs, the summary table (else "")."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    logs = find_logs(paths)
    curves, overrides = [read_curves(log) for log in logs], swept(logs)
    names = [ov or run_label(log, logs) for ov, log in zip(overrides, logs)]
    # One legend entry per run, below the chart: sweep labels are long, and a sweep may have many jobs.
    fig = Figure(figsize=(8, 5 + 0.2 * len(logs)), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    for i, (curve, name) in enumerate(zip(curves, names)):
        color = f"C{i % 10}"
        if curve["val/loss"]:
            steps, values = zip(*curve["val/loss"])
            ax.plot(steps, values, "o-", color=color, markersize=4, label=f"{name} (val {values[-1]:.4f})")
        if curve["train/loss"]:
            label = None if curve["val/loss"] else name
            ax.plot(*zip(*curve["train/loss"]), color=color, alpha=0.45, linewidth=1, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross-entropy, nats)")
    what = "loss" if len(logs) > 1 else f"loss: {run_label(logs[0], logs)}"
    ax.set_title(f"{title or what}\ntrain: thin line, val: dots", fontsize="medium")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", fontsize="small")
    path = Path(out).expanduser() if out else default_out(paths, logs)
    if path.is_symlink() or path.exists() and not _is_our_chart(path):
        raise UserError(f"{path} exists and is not a chart of lgpt-plot; choose another -o/--out (or move it)")
    try:
        fresh = temporary_name(path, ".png")  # a new name beside it, then renamed: nothing planted is followed
        fig.savefig(fresh, format="png", metadata={"Software": SOFTWARE})
        os.replace(fresh, path)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}); choose another -o/--out") from e
    return path, summary(logs, overrides, curves) if len(logs) > 1 else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lgpt-plot",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    parser.add_argument("runs", nargs="+", help="run folders, metrics.csv files, or folders holding runs")
    parser.add_argument("-o", "--out", help="the PNG to write (default: loss.png in the run or sweep folder)")
    parser.add_argument("--title", help="chart title (default: the run's name)")
    try:
        args = parser.parse_args(argv)
        path, table = plot(args.runs, args.out, args.title)
    except SystemExit as e:  # argparse: --help, or a usage error
        return e.code if isinstance(e.code, int) else 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{table}\n{path}" if table else path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
