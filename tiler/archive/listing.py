"""How an archive's inputs are listed and named: a glob or a manifest, each input once, the stem of its outputs.

A glob's ``**`` never follows a symlinked folder (:func:`expand_glob`); a manifest is a text file, local or in a
bucket, with one input per line (:func:`manifest_entries`); an input's outputs take its stem (:func:`input_stem`),
and inputs sharing a stem are found in one pass (:func:`shared_stems`).
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tiler.errors import ConfigError
from tiler.io.objects import ObjectPath, as_path
from tiler.io.stac_item import split_item_path
from tiler.paths import is_remote

__all__ = ["expand_glob", "input_stem", "manifest_entries", "shared_stems", "unique"]

_DOUBLE_SUFFIXES = (".nii.gz", ".ome.tiff", ".ome.tif", ".ome.zarr")


def input_stem(path: str) -> str:
    """Return the name an input's outputs take: its file name without the suffix (``a.nii.gz`` → ``a``).

    A STAC item named ``<file.json>#<item id>`` takes its item id (:mod:`tiler.io.stac_item`), verbatim: an id
    that is not a plain file name is refused by :meth:`ArchiveConfig.store_path`.

    >>> input_stem("/cat/items.json#S2A_T33_2021"), input_stem("/x/scan.nii.gz")
    ('S2A_T33_2021', 'scan')
    """
    item_id = split_item_path(path)[1]
    if item_id is not None:
        return item_id
    name = os.path.basename(path.rstrip("/"))  # what Path(path).name gives, without parsing the whole path
    for suffix in _DOUBLE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or name


def _parts_match(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    """Whether path components match glob components (``**``: zero or more components, no hidden names)."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(
            _parts_match(parts[i:], rest) for i in range(len(parts) + 1)
            if not any(p.startswith(".") for p in parts[:i])
        )
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and _parts_match(parts[1:], rest)


def expand_glob(pattern: str) -> list[str]:
    """The paths matching ``pattern``, like ``glob.glob(pattern, recursive=True)``, never looping on symlinks.

    A ``**`` walk does not descend into symlinked folders (a symlink is still matched itself), so a link
    back up the tree cannot make it run forever.
    """
    if "**" not in pattern:
        return glob.glob(pattern)
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = Path(*parts[:first]) if first else Path(".")
    wanted = parts[first:]
    found = []
    for folder, dirnames, filenames in os.walk(base, followlinks=False):
        rel = Path(folder).relative_to(base).parts
        for name in (*dirnames, *filenames):
            if _parts_match((*rel, name), wanted):
                found.append(os.path.join(folder, name))
    return found


def unique(paths: Iterable[str]) -> list[str]:
    """The paths in order, each once (its first mention wins): one dict insert per path, O(n).

    >>> unique(["/a.tif", "/b.tif", "/a.tif"])
    ['/a.tif', '/b.tif']
    """
    return list(dict.fromkeys(paths))


def shared_stems(inputs: Iterable[str]) -> dict[str, list[str]]:
    """Each input whose stem another input has too → those other inputs (in input order); O(n).

    >>> shared_stems(["/x/a.tif", "/y/a.tif", "/x/b.tif"])
    {'/x/a.tif': ['/y/a.tif'], '/y/a.tif': ['/x/a.tif']}
    """
    by_stem: dict[str, list[str]] = {}
    for path in inputs:
        by_stem.setdefault(input_stem(path), []).append(path)
    return {p: [q for q in paths if q != p] for paths in by_stem.values() if len(paths) > 1 for p in paths}


def manifest_entries(path: str) -> Iterator[str]:
    """Yield each input a manifest lists, as its lines are read (blank lines and ``#`` comments skipped).

    A relative line is resolved against the manifest's folder; ``~`` is expanded; local paths are normalised, so
    two spellings of one file are one entry for :func:`unique`. Duplicates are yielded as they come.

    Raises:
        ConfigError: The manifest cannot be read (missing, a folder, not UTF-8 text).
    """
    where = as_path(path)
    try:
        lines = where.read_bytes().decode("utf-8").splitlines()  # a manifest in a bucket too: one GET
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"archive.manifest: {path} cannot be read ({exc}); fix: point it at a text file with one "
            "input path per line"
        ) from None
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        text = os.path.expanduser(text)
        if is_remote(text) or os.path.isabs(text):
            yield text if is_remote(text) else os.path.normpath(text)
        else:  # relative to the manifest: its folder, or its prefix in the bucket
            yield str(where.parent / text) if isinstance(where, ObjectPath) else os.path.normpath(where.parent / text)
