"""The config presets that ship inside the package (configs/*.toml): chosen by name, shown as TOML.

A wheel carries them as package data (diffgen/configs links to the top-level configs/ folder in a
source checkout), so `--config gpu64` and `diffgen config show gpu64` work wherever diffgen is
installed.
"""

from __future__ import annotations

from pathlib import Path

from diffgen.errors import InputError

PRESET_DIR = Path(__file__).resolve().parent / "configs"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def config_path(value: str) -> Path:
    """A preset name (``gpu64``) or a path to a TOML file; InputError naming the presets if neither."""
    path = Path(value)
    if path.suffix == ".toml" or path.exists() or "/" in value:
        if not path.is_file():
            raise InputError(f"config file not found: {value}")
        return path
    preset = PRESET_DIR / f"{value}.toml"
    if not preset.is_file():
        raise InputError(f"no config preset '{value}' (presets: {', '.join(preset_names())}; or give a .toml path)")
    return preset
