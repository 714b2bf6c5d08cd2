"""The command line: instant help, thin commands, one-line errors with the right exit code."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from diffgen.checkpoint import save_model
from diffgen.cli import app

runner = CliRunner()


def test_help_does_not_import_torch():
    code = "import sys, diffgen.cli; assert 'torch' not in sys.modules and 'open_clip' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "diffgen", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("diffgen ")


def test_info_shows_the_checkpoint(tmp_path, tiny_model):
    path = tmp_path / "tiny.safetensors"
    digest = save_model(path, tiny_model)
    result = runner.invoke(app, ["info", str(path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert digest[:16] in result.output
    assert "8 x 8 px" in result.output


def test_bad_checkpoint_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_text("hello")
    result = runner.invoke(app, ["info", str(bad)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {bad} is not a safetensors file"]
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["info", str(tmp_path / "missing.safetensors"), "--debug"])
    assert result.exit_code == 2
    assert "Traceback" in result.output
