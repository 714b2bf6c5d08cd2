"""Progress goes to stderr (lines when stderr is not a terminal); stdout carries only results."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from diffgen.progress import LineProgress

from .helpers import TRAIN_CONFIG


def test_line_progress_reports_counts_fields_and_eta():
    stream = io.StringIO()
    with LineProgress("sampling", ("rate",), every=0.0, stream=stream) as progress:
        bar = progress.add_task("x", total=10, rate="")
        progress.advance(bar, 4)
        progress.update(bar, rate="2.0 img/s")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("sampling: 4/10") and "eta" in lines[0]
    assert lines[-1].startswith("sampling: 4/10, rate 2.0 img/s")
    quiet = io.StringIO()
    with LineProgress("x", (), every=0.0, disable=True, stream=quiet) as progress:
        progress.advance(progress.add_task("x", total=2), 1)
    assert quiet.getvalue() == ""


@pytest.mark.slow
def test_train_stdout_is_only_its_json_summary(shapes_folder, tmp_path):
    config = tmp_path / "train.toml"
    config.write_text(TRAIN_CONFIG)
    proc = subprocess.run([sys.executable, "-m", "diffgen", "train", str(shapes_folder), "-o", str(tmp_path / "run"),
                           "--config", str(config), "--steps", "3", "--clip-steps", "2", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert summary["steps"] == 3
    assert "diffusion: 3/3" in proc.stderr and "clip: 2/2" in proc.stderr  # progress lines, not on stdout
