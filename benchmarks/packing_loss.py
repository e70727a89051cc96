"""What packing and document masking do to the loss: nanogpt_baby (GPT-2, 4x4x128, char tokens, batch 12, block
64) trained the same number of steps with data.packing=random or bos_aligned, data.doc_masking=false or true, on
two multi-document corpora:

- the embedded corpus (`data=shakespeare`): Shakespeare's 38 plays, each a document of ~126,000 characters,
  so a 65-token row almost never holds a boundary;
- Tiny Shakespeare's 7,222 speeches (split at blank lines) shuffled into a JSONL file, one document a row:
  152 characters on average, 44% shorter than a row, and no speech related to the one before it.

Each run validates once, at its last step, on data.val_batches=100 batches of fixed windows (76,800 tokens),
masked as it trained (`val/loss`); then `lgpt-eval` scores every checkpoint on the same windows with masking
(`data.doc_masking=true`), so that every model is compared on the same question: each token predicted from its
own document only. Bits per byte are val/loss / ln 2: char tokens of ASCII text (the plays hold 64 em dashes in
4.8 M characters: 1.00003 bytes a character). The runs go one after the other: losses do not depend on the load.

    python -m benchmarks.packing_loss [--quick]     # or: python -m benchmarks packing_loss (8 runs, ~10-20 min)
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import TINY_SHAKESPEARE, child_env, lgpt_train, row, run_child

CASES = {
    "random": [],
    "random, masked": ["data.doc_masking=true"],
    "bos_aligned": ["data.packing=bos_aligned"],
    "bos_aligned, masked": ["data.packing=bos_aligned", "data.doc_masking=true"],
}


def speeches_jsonl(folder: Path) -> Path:
    """Tiny Shakespeare's speeches in a seeded random order, one JSON line each."""
    speeches = [p for p in TINY_SHAKESPEARE.read_text().split("\n\n") if p.strip()]
    random.Random(0).shuffle(speeches)
    path = folder / "speeches.jsonl"
    path.write_text("".join(json.dumps({"text": s}) + "\n" for s in speeches))
    return path


def val_loss(run: Path) -> float:
    with open(run / "csv" / "metrics.csv") as f:
        return [float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")][-1]


def run(quick: bool) -> list[dict]:
    steps, val_batches = (60, 10) if quick else (400, 100)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lgpt-bench-packing-loss-") as tmp:
        folder = Path(tmp)
        cache = os.environ.get("LGPT_BENCH_CACHE", str(folder / "cache"))
        corpora = {
            "38 plays": ["data=shakespeare"],
            "7,222 shuffled speeches": ["data=local", f"data.path={speeches_jsonl(folder)}"],
        }
        env = child_env(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
        for corpus, data in corpora.items():
            for case, settings in CASES.items():
                run_dir = folder / f"{corpus}-{case}".replace(" ", "_").replace(",", "")
                start = time.perf_counter()
                run_child(
                    [
                        *lgpt_train(),
                        "experiment=nanogpt_baby",
                        *data,
                        *settings,
                        f"trainer.max_steps={steps}",
                        f"trainer.val_check_interval={steps}",
                        f"data.val_batches={val_batches}",
                        f"paths.cache_dir={cache}",
                        f"hydra.run.dir={run_dir}",
                        "trainer.enable_progress_bar=false",
                        "sample.max_new_tokens=1",
                    ],
                    env,
                    timeout=1800,
                )
                seconds = time.perf_counter() - start
                out_file = folder / f"{run_dir.name}.json"
                run_child(
                    [
                        sys.executable,
                        "-m",
                        "lightning_gpt.apps.evaluate",
                        f"ckpt_path={run_dir}",
                        *data,
                        "data.doc_masking=true",
                        f"windows={val_batches * 12}",
                        "data.batch_size=12",
                        f"paths.cache_dir={cache}",
                        f"paths.root_dir={folder}",
                        f"out_file={out_file}",
                        "trainer.accelerator=cpu",
                        "trainer.enable_progress_bar=false",
                    ],
                    env,
                    timeout=600,
                )
                own, masked = val_loss(run_dir), json.loads(out_file.read_text())["loss"]
                note = (
                    f"{steps} steps, {seconds:.0f} s with startup and validation; val/loss as trained {own:.4f} "
                    f"({own / math.log(2):.3f} bpb); load {os.getloadavg()[0]:.1f}"
                )
                rows.append(
                    row(
                        "packing_loss",
                        f"{corpus}: {case}",
                        "val loss, masked windows (value: bpb)",
                        round(masked / math.log(2), 4),
                        "bits/byte",
                        note=f"loss {masked:.4f}; {note}",
                    )
                )
    return rows


if __name__ == "__main__":
    from benchmarks.__main__ import markdown

    print(markdown(run("--quick" in sys.argv)))
