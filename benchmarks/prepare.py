"""lgpt-prepare at scale: MB/s and peak memory against raw tiktoken, and training from a prepared folder.

- Corpora of 10 MB, 100 MB and 1 GB (--quick: 10 MB only), made by repeating Tiny Shakespeare in a
  temporary folder (deleted after).
- lgpt-prepare: the real command, `lgpt-prepare tokenizer=gpt2 data=local data.path=<corpus> out_dir=<tmp>`
  with data.num_proc = the cores, its wall time (Python and Hydra start-up included).
- raw tiktoken: a Python process that reads the same file in blocks and calls gpt2's
  `encode_ordinary_batch(pieces, num_threads=<the cores>)` on ~1 MB pieces, dropping the tokens: the
  tokenizer's own speed, nothing written.
The two take turns (raw, ours, ours, raw, ...) so that both see the same background load; each reports its
best. Peak memory is the sum of the resident memory of the process and all its children, sampled every
20 ms (RSS counts pages shared between a parent and its forked workers once per process: an upper bound).
- training tokens/s: `lgpt-train experiment=nanogpt_baby` on Tiny Shakespeare read from the single-file
  token cache (data=local) and from a prepared folder (data=prepared), as the training benchmark times
  lgpt-train against its loop: chunk by chunk, taking turns. Equal losses show they read the same tokens.

    python -m benchmarks --only prepare
"""

from __future__ import annotations

import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks import SHARED, TINY_SHAKESPEARE, child_env, row

MB = 1_000_000
RAW = """
import sys, time, tiktoken
path, threads = sys.argv[1], int(sys.argv[2])
encoding = tiktoken.get_encoding("r50k_base")  # gpt2's ranks (what lgpt's gpt2 loads offline)
start = time.perf_counter()
with open(path, encoding="utf-8") as f:
    while block := f.read(64 * 2**20):
        pieces = [block[i : i + 2**20] for i in range(0, len(block), 2**20)]
        encoding.encode_ordinary_batch(pieces, num_threads=threads)
print("seconds", time.perf_counter() - start)
"""


def _tree_rss(root: int) -> int:
    """Resident bytes of a process and all its descendants (from /proc)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * page
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, parent in parents.items() if parent == pid]
        tree.update(children)
        frontier += children
    return sum(rss.get(p, 0) for p in tree)


def peak_rss_mb(command: list[str], env: dict[str, str], timeout: float = 1800) -> tuple[float, int, str]:
    """Run a command; return (peak MB resident in it and its children together, exit code, its stdout)."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        done.set()
        sampler.join()
    if proc.returncode != 0:
        print(stderr[-3000:], file=sys.stderr)
    return peak / 2**20, proc.returncode, stdout


def make_corpus(folder: Path, megabytes: int) -> Path:
    text = TINY_SHAKESPEARE.read_text()
    path = folder / f"corpus_{megabytes}MB.txt"
    with open(path, "w") as f:
        for _ in range(-(-megabytes * MB // len(text))):
            f.write(text)
    return path


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, float, float]:
    """(wall seconds, peak MB, seconds of work: what the command itself reports, else the wall time, CPU
    seconds of the command and the children it waited for: what load from other processes changes least)."""
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    peak, code, stdout = peak_rss_mb(command, env)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if code != 0:
        raise RuntimeError(f"{' '.join(command[:5])} ... exited with {code}")
    # raw: "seconds <s>"; lgpt-prepare's last log line: "... M characters in <s> s"
    found = re.findall(r"(?:^seconds | characters in )([\d.]+)", stdout, re.M)
    return seconds, peak, float(found[-1]) if found else seconds, cpu


def prepare_throughput(sizes: list[int], repeats: int, cores: int, env: dict[str, str]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="lgpt-bench-prepare-") as tmp:
        for megabytes in sizes:
            corpus = make_corpus(Path(tmp), megabytes)
            size = corpus.stat().st_size / MB
            raw = [sys.executable, "-c", RAW, str(corpus), str(cores)]
            results: dict[str, list[tuple[float, float, float, float]]] = {"raw": [], "prepare": []}
            for i in range(repeats if megabytes < 1000 else 1):
                out = Path(tmp) / f"out{i}"
                ours = [
                    sys.executable,
                    "-m",
                    "lightning_gpt.apps.prepare",
                    "tokenizer=gpt2",
                    "data=local",
                    f"data.path={corpus}",
                    f"out_dir={out}",
                    f"data.num_proc={cores}",
                ]
                for name in ("raw", "prepare") if i % 2 == 0 else ("prepare", "raw"):
                    results[name].append(timed(raw if name == "raw" else ours, env))
                subprocess.run(["rm", "-rf", str(out)], check=True)
            raw_mbs = size / min(r[0] for r in results["raw"])
            ours_mbs = size / min(r[0] for r in results["prepare"])
            work_ratio = min(r[2] for r in results["raw"]) / min(r[2] for r in results["prepare"])
            cpu = {name: min(r[3] for r in runs) for name, runs in results.items()}
            load = os.getloadavg()[0]
            rows.append(
                row(
                    "prepare",
                    f"{megabytes} MB, raw tiktoken",
                    "MB/s",
                    round(raw_mbs, 2),
                    "MB/s",
                    note=f"peak {max(r[1] for r in results['raw']):.0f} MB; load {load:.1f} on {cores} cores",
                )
            )
            rows.append(
                row(
                    "prepare",
                    f"{megabytes} MB, lgpt-prepare",
                    "MB/s (ratio: to raw tiktoken)",
                    round(ours_mbs, 2),
                    "MB/s",
                    ratio=round(ours_mbs / raw_mbs, 2),
                    target=">= 0.8" if megabytes == 100 else None,
                    note=f"{len(results['prepare'])} runs each, best; whole command, start-up included "
                    f"(the work alone, start-up excluded on both sides: ratio {work_ratio:.2f}); CPU seconds: "
                    f"{cpu['prepare']:.0f} vs raw {cpu['raw']:.0f} (ratio {cpu['raw'] / cpu['prepare']:.2f})",
                )
            )
            peak = max(r[1] for r in results["prepare"])
            rows.append(
                row(
                    "prepare",
                    f"{megabytes} MB, lgpt-prepare",
                    "peak memory, workers included",
                    round(peak),
                    "MB",
                    target="< 1000" if megabytes == 100 else None,
                )
            )
            corpus.unlink()
    return rows


def training_from_prepared(quick: bool, env: dict[str, str]) -> list[dict]:
    from benchmarks.training import Case, _lgpt_train, paired_trial

    first, last = (10, 50) if quick else (20, 140)
    with tempfile.TemporaryDirectory(prefix="lgpt-bench-prepared-") as tmp:
        folder = Path(tmp) / "shakespeare"
        prepare = [sys.executable, "-m", "lightning_gpt.apps.prepare", "data=local", f"data.path={TINY_SHAKESPEARE}"]
        subprocess.run([*prepare, f"out_dir={folder}", "shard_tokens=100000"], env=env, check=True, capture_output=True)
        common = ["experiment=nanogpt_baby", f"paths.root_dir={tmp}", "trainer.enable_progress_bar=false"]
        cases = {
            "single file (data=local)": ["data=local", f"data.path={TINY_SHAKESPEARE}"],
            "prepared, 12 shards": ["data=prepared", f"data.path={folder}"],
        }
        commands = {
            name: _lgpt_train(Case(name, [*common, *data], first, last, 10, "")) for name, data in cases.items()
        }
        results = paired_trial(commands, chunks=(last - first) // 10, env=env)
    rows = []
    rates = {name: r["tokens_per_step"] * 10 / statistics.median(r["chunks"]) for name, r in results.items()}
    base = rates["single file (data=local)"]
    for name, rate in rates.items():
        rows.append(
            row(
                "prepare",
                f"nanogpt_baby training, {name}",
                "tokens/s (ratio: to the single file)",
                round(rate),
                "tokens/s",
                ratio=round(rate / base, 3),
                note=f"loss at step {last}: {results[name]['loss']:.4f}",
            )
        )
    return rows


def run(quick: bool) -> list[dict]:
    env = child_env(TIKTOKEN_CACHE_DIR=str(SHARED / "data" / "tiktoken"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    sizes = [10] if quick else [10, 100, 1000]
    return prepare_throughput(sizes, 1 if quick else 2, cores, env) + training_from_prepared(quick, env)
