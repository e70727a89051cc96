"""After a regular (non-editable) install, the configs ship inside the package and lgpt-train finds them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_carries_the_configs_and_runs_from_any_folder(tmp_path):
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = zipfile.ZipFile(next(tmp_path.glob("lgpt-*.whl")))
    shipped = {
        Path(n).relative_to("lightning_gpt/conf").as_posix()
        for n in wheel.namelist()
        if n.startswith("lightning_gpt/conf/")
    }
    in_repo = {p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")}
    assert shipped == in_repo
    assert "lightning_gpt/explainer_page.html" in wheel.namelist()  # lgpt-explain's page template
    assert "lightning_gpt/evaluation/shakespeare_next_line.jsonl" in wheel.namelist()  # the downstream callback's
    assert "lightning_gpt/data/module.py" in wheel.namelist()  # subpackages ship too
    site = tmp_path / "site"
    wheel.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-m", "lightning_gpt.apps.train", "--cfg", "job", "experiment=nanogpt_baby"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "task_name: nanogpt_baby" in result.stdout
    where = subprocess.run(
        [sys.executable, "-c", "from lightning_gpt.apps.launch import CONF_DIR; print(CONF_DIR)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip() == str(site / "lightning_gpt" / "conf")
