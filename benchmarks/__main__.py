"""python -m benchmarks [NAME ...] [--quick] [--gpu] [--json PATH]: run the benchmarks, print one table."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import ROOT, Stopwatch, row

MODULES = (
    "training",
    "startup",
    "data",
    "packing",
    "generation",
    "memory",
    "explain",
    "evaluation",
    "checkpoint",
    "threads",
    "tokenizers",
)
LONG = ("families", "prepare", "speedrun", "packing_loss")  # 10-40 minutes each on 2 cores: only when named
COLUMNS = ("benchmark", "case", "metric", "value", "unit", "ratio", "target", "met", "note")


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or "unknown"
    if os.path.exists("/proc/cpuinfo"):
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }


def met(r: dict[str, Any]) -> str:
    """'yes'/'no' for a target such as '>= 0.97', '<= 10' or '0.85 to 1.15', checked on the ratio if there is
    one, else the value."""
    target, actual = r.get("target") or "", r.get("ratio", r["value"])
    if between := re.fullmatch(r"\s*([-\d.e]+) to ([-\d.e]+)\s*", target):
        return "yes" if float(between[1]) <= actual <= float(between[2]) else "NO"
    match = re.fullmatch(r"\s*([<>]=?)\s*([-\d.e]+)\s*", target)
    if not match:
        return ""
    op, bound = match[1], float(match[2])
    ok = {">=": actual >= bound, ">": actual > bound, "<=": actual <= bound, "<": actual < bound}[op]
    return "yes" if ok else "NO"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = {**r, "met": met(r)}
        lines.append("| " + " | ".join(str(cells.get(c, "")).replace("|", "/") for c in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"some of: {', '.join(MODULES + LONG)} (as --only)")
    parser.add_argument("--quick", action="store_true", help="fewer steps, trials and corpora")
    parser.add_argument(
        "--only", nargs="+", choices=MODULES + LONG, metavar="NAME", help=f"some of: {', '.join(MODULES + LONG)}"
    )
    parser.add_argument("--gpu", action="store_true", help="the GPU check alone (benchmarks/gpu.py)")
    parser.add_argument("--json", default=str(ROOT / "outputs" / "benchmarks" / "results.json"), help="results file")
    args = parser.parse_args()
    if unknown := [name for name in args.names if name not in MODULES + LONG]:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(MODULES + LONG)}")

    rows: list[dict[str, Any]] = []
    failed = []
    # One token cache for every benchmark of this run (each corpus is tokenized once), unless one is given.
    load_before = os.getloadavg()[0]
    cache = tempfile.TemporaryDirectory(prefix="lgpt-bench-cache-")
    os.environ.setdefault("LGPT_BENCH_CACHE", cache.name)
    with cache, Stopwatch() as total:
        for name in ["gpu"] if args.gpu else args.names + (args.only or []) or MODULES:
            try:
                module = importlib.import_module(f"benchmarks.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"benchmarks.{name}":
                    raise
                print(f"[{name}] skipped: benchmarks/{name}.py does not exist yet", file=sys.stderr)
                continue
            print(f"[{name}] running ...", file=sys.stderr, flush=True)
            with Stopwatch() as t:
                try:
                    rows += module.run(args.quick)
                except Exception as e:  # one broken benchmark must not hide the others' results
                    traceback.print_exc()
                    failed.append(name)
                    rows.append(row(name, "-", "FAILED", float("nan"), "", note=f"{type(e).__name__}: {e}"[:200]))
            print(f"[{name}] done in {t.seconds:.0f} s", file=sys.stderr, flush=True)

    command = "python -m benchmarks " + shlex.join(sys.argv[1:])
    info = {**machine(), "load_average_before": load_before}
    print(f"\n{markdown(rows)}\n")
    print(
        f"{info['cpus']} CPUs ({info['cpu']}), GPU: {info['gpu'] or 'none'}, torch {info['torch']}; "
        f"`{command.strip()}` took {total.seconds:.0f} s"
    )
    if load_before > 0.5 * info["cpus"]:
        print(
            f"warning: the load average was {load_before:.1f} on {info['cpus']} CPUs before the benchmarks "
            "started: other processes shared the CPUs, so absolute figures are low and noisy",
            file=sys.stderr,
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": command.strip(),
        "quick": args.quick,
        "seconds": round(total.seconds, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": info,
        "rows": rows,
    }
    out.write_text(json.dumps(record, indent=1))
    print(f"results: {out}")
    sys.exit(1 if failed or any(r["metric"] == "FAILED" for r in rows) else 0)


if __name__ == "__main__":
    main()
