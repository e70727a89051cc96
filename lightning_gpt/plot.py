"""lgpt-plot: train and validation loss curves of one or more runs, from their CSV logs, as a PNG.

lgpt-plot outputs/train/runs/<stamp>                  # one run folder (or its csv/metrics.csv) -> loss.png
lgpt-plot outputs/train/runs/* -o compare.png         # several runs, one colour each
lgpt-plot outputs/train/multiruns/<stamp>             # every run found under a folder
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from lightning_gpt.errors import UserError

METRICS = "metrics.csv"


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


def run_label(log: Path, logs: list[Path]) -> str:
    """The run folder's path, shortened to what tells it apart from the other runs."""
    run = log.parent.parent if log.parent.name == "csv" else log.parent
    if len(logs) == 1:
        return run.name
    runs = [p.parent.parent if p.parent.name == "csv" else p.parent for p in logs]
    common = Path(os.path.commonpath([str(r.resolve()) for r in runs]))
    return str(run.resolve().relative_to(common)) if run.resolve() != common else run.name


def plot(paths: list[str], out: str = "loss.png", title: str | None = None) -> Path:
    """Draw every run's train loss (line) and val loss (dots on a line) on one chart; return the PNG's path."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    logs = find_logs(paths)
    fig = Figure(figsize=(8, 5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    for i, log in enumerate(logs):
        curves, label, color = read_curves(log), run_label(log, logs), f"C{i % 10}"
        if curves["train/loss"]:
            ax.plot(*zip(*curves["train/loss"]), color=color, alpha=0.45, linewidth=1, label=f"{label} train")
        if curves["val/loss"]:
            steps, values = zip(*curves["val/loss"])
            ax.plot(steps, values, "o-", color=color, markersize=4, label=f"{label} val (last {values[-1]:.4f})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross-entropy, nats)")
    ax.set_title(title or ("loss" if len(logs) > 1 else f"loss: {run_label(logs[0], logs)}"))
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(out).expanduser()
    try:
        fig.savefig(path)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}); choose another -o/--out") from e
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lgpt-plot", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))  # fmt: skip
    parser.add_argument("runs", nargs="+", help="run folders, metrics.csv files, or folders holding runs")
    parser.add_argument("-o", "--out", default="loss.png", help="the PNG to write (default: loss.png)")
    parser.add_argument("--title", help="chart title (default: the run's name)")
    args = parser.parse_args(argv)
    try:
        print(plot(args.runs, args.out, args.title))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
