"""Config presets ship inside the package: chosen by name, shown as TOML that loads back equal."""

from __future__ import annotations

from typer.testing import CliRunner

from diffgen.cli import app
from diffgen.config import load_config
from diffgen.presets import PRESET_DIR, config_path, preset_names


def test_presets_are_found_by_name_and_show_round_trips(tmp_path):
    assert {"tiny", "default", "gpu64", "cpu64", "cpu32"} <= set(preset_names())
    assert config_path("gpu64") == PRESET_DIR / "gpu64.toml"
    shown = CliRunner().invoke(app, ["config", "show", "gpu64"])
    assert shown.exit_code == 0
    (tmp_path / "mine.toml").write_text(shown.stdout)
    assert load_config(tmp_path / "mine.toml") == load_config(PRESET_DIR / "gpu64.toml")
    listed = CliRunner().invoke(app, ["config", "list"]).stdout.split()
    assert listed == preset_names()
    bad = CliRunner().invoke(app, ["config", "show", "nope"])
    assert bad.exit_code == 2 and "presets: cpu32" in bad.output


def test_info_without_a_checkpoint_describes_the_default_model():
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert "the embedded default model" in result.stdout and "image_size = 64" in result.stdout
    assert "training: steps" in result.stdout
