"""The checkpoints a client may choose: by name, from one folder, never by a path.

A name is a file's stem in the ``--models`` folder (``tiny`` for ``tiny.safetensors``), the
``-c`` checkpoint's stem, or ``default`` for the embedded default model. Clients may also send
AUTOMATIC1111's titles (``tiny [0123456789]``, ``tiny.safetensors``): the name is read out of them.
A name that is not a plain word (``../x``, ``/etc/passwd``, ``a/b``) is refused before any lookup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from diffgen.errors import InputError

DEFAULT_NAME = "default"
SUFFIX = ".safetensors"
# a plain file stem: letters, digits, dot, dash, underscore, not starting with a dot (so no "..")
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
_TITLE_HASH = re.compile(r"\s*\[[0-9a-fA-F]{1,64}\]$")


class UnknownModel(InputError):
    """A well-formed name that the catalog does not hold (HTTP 404)."""


@dataclass(frozen=True)
class Entry:
    """One checkpoint clients may choose."""

    name: str
    path: Path
    sha256: str  # the file's SHA-256: AUTOMATIC1111's model hash is its first 10 digits

    @property
    def title(self) -> str:
        """AUTOMATIC1111's title: the name and the short hash."""
        return f"{self.name} [{self.sha256[:10]}]"


def name_from(text: object) -> str:
    """The catalog name in a client's value (a name, a file name or an A1111 title); InputError
    for anything that is not a plain name, before any file is looked at."""
    if not isinstance(text, str):
        raise InputError(f"a model is chosen by its name, got {text!r}")
    name = _TITLE_HASH.sub("", text.strip())
    name = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name
    if not _NAME.match(name) or ".." in name:
        raise InputError(f"'{text[:100]}' is not a model name: models are chosen by name (see /sdapi/v1/sd-models), "
                         "never by path")
    return name


class Catalog:
    """The checkpoints by name; the folder is read again on every listing, so new files appear."""

    def __init__(self, folder: Path | None, first: Path | None, default: Path | None):
        self.folder = folder
        self.first = first  # the -c checkpoint
        self.default = default  # the embedded default model, where there is one
        self._hashes: dict[tuple[str, int, int], str] = {}

    @property
    def first_name(self) -> str:
        """The name of the model loaded at start."""
        return self.first.name[:-len(SUFFIX)] if self.first is not None and self.first.name.endswith(SUFFIX) \
            else self.first.stem if self.first is not None else DEFAULT_NAME

    def paths(self) -> dict[str, Path]:
        """Every name and its file: the folder's, then ``default``, then the -c checkpoint."""
        found: dict[str, Path] = {}
        if self.folder is not None:
            for path in sorted(self.folder.glob(f"*{SUFFIX}")):
                name = path.name[:-len(SUFFIX)]
                if path.is_file() and _NAME.match(name) and ".." not in name:
                    found[name] = path
        if self.default is not None:
            found.setdefault(DEFAULT_NAME, self.default)
        if self.first is not None:
            found[self.first_name] = self.first
        return found

    def entries(self) -> list[Entry]:
        """Every checkpoint with its hash (hashed once per file version)."""
        return [Entry(name, path, self._sha256(path)) for name, path in self.paths().items()]

    def entry(self, text: object) -> Entry:
        """The checkpoint a client named; InputError for a path, UnknownModel for a name not held."""
        name = name_from(text)
        path = self.paths().get(name)
        if path is None:
            raise UnknownModel(f"no model named '{name}' (this server has: {', '.join(self.paths())})")
        return Entry(name, path, self._sha256(path))

    def _sha256(self, path: Path) -> str:
        from diffgen.hashing import file_sha256

        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = file_sha256(path)
        return self._hashes[key]
