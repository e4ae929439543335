"""The archive file: an ``archive`` section plus a job template, and the inputs, stores and truths it names."""

from __future__ import annotations

import copy
import json
import os
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

from tiler.archive.collection import check_stac_section, parse_interval, stac_inputs
from tiler.archive.ledger import LEDGER_NAME
from tiler.archive.listing import expand_glob, input_stem, manifest_entries, unique
from tiler.config.loading import parse_config
from tiler.config.overrides import apply_overrides
from tiler.config.schema import JobConfig
from tiler.errors import ConfigError
from tiler.io.objects import AnyPath, ObjectPath, as_path
from tiler.io.stac_item import local_href, split_item_path
from tiler.paths import is_object_url, is_remote
from tiler.yamlsafe import load_yaml

_TRUTH_FIELDS = ("stem", "name")

class ArchiveSection(BaseModel):
    """The ``archive`` section: where outputs, ledger and reports go, and how inputs are listed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: Annotated[str, Strict(), Field(min_length=1)]
    # the run ledger (SQLite): <root>/ledger.sqlite by default; required for a root in object storage
    ledger: Annotated[str, Strict(), Field(min_length=1)] | None = None
    manifest: Annotated[str, Strict(), Field(min_length=1)] | None = None
    missing_truth: Literal["fail", "unscored"] = "fail"
    busy_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    stale_after_hours: Annotated[float, Field(gt=0)] = 24.0
    # a STAC catalog as the inputs (see tiler.archive.collection): each item one input, its assets stacked as bands
    stac: Annotated[str, Strict(), Field(min_length=1)] | None = None
    assets: tuple[Annotated[str, Strict(), Field(min_length=1)], ...] | None = None
    bbox: tuple[float, float, float, float] | None = None
    datetime: Annotated[str, Strict(), Field(min_length=1)] | None = None
    properties: dict[str, Any] | None = None

    @field_validator("root")
    @classmethod
    def _writable_root(cls, value: str) -> str:
        if is_remote(value) and not is_object_url(value):  # Path("https://h/out") would be a local folder "https:"
            raise ValueError(
                f"{value} is a URL or GDAL path tiler cannot write to (http(s) and /vsi paths are read-only); fix: "
                "give a local or shared folder, or object storage as s3://bucket/prefix, gs://... or az://..."
            )
        return value

    @field_validator("ledger")
    @classmethod
    def _local_ledger(cls, value: str | None) -> str | None:
        if value is not None and is_remote(value):
            raise ValueError(
                f"{value} is not a local file: the ledger is a SQLite database, which object storage cannot hold "
                "(no locks, no in-place writes); fix: give a file on the machine that runs the archive, or on a "
                "shared POSIX folder, e.g. ledger: /var/lib/tiler/nightly.sqlite"
            )
        return value

    @field_validator("assets")
    @classmethod
    def _unique_assets(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError("must list at least one asset key, each once")
        return value

    @field_validator("bbox")
    @classmethod
    def _ordered_bbox(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None and (value[0] > value[2] or value[1] > value[3]):
            raise ValueError("must be [minx, miny, maxx, maxy] with min <= max")
        return value

    @field_validator("datetime")
    @classmethod
    def _interval(cls, value: str | None) -> str | None:
        if value is not None:
            parse_interval(value)
        return value


_SECTION_FIXES = {
    "root": "set archive.root to the output folder, e.g. root: ../out/nightly",
    "ledger": "set archive.ledger to a local file, e.g. ledger: /var/lib/tiler/nightly.sqlite, or null",
    "manifest": "set archive.manifest to a text file with one input path per line, or null",
    "missing_truth": "use fail or unscored",
    "busy_timeout_s": "use a positive number of seconds, e.g. 60",
    "stale_after_hours": "use a positive number of hours, e.g. 24",
    "stac": "set archive.stac to a STAC Catalog, Collection or ItemCollection JSON file, or null",
    "assets": "list the item asset keys to stack as bands in model channel order, e.g. [B02, B03, B04, B08]",
    "bbox": "give [minx, miny, maxx, maxy] in EPSG:4326 degrees, e.g. [10.0, 45.0, 11.0, 46.0]",
    "datetime": 'give an interval "2021-01-01/2021-12-31" (".." for an open end) or one date-time',
    "properties": "give a mapping of item property to required value, e.g. {platform: sentinel-2a}",
}
_STAC_ONLY = ("assets", "bbox", "datetime", "properties")
"""Archive keys that only mean something with ``archive.stac``."""


@dataclass(frozen=True)
class ArchiveConfig:
    """A validated archive file: the archive section and the job template it applies to every input.

    Attributes:
        source: The config file (for messages and reports).
        archive: The archive section, with ``root`` and ``manifest`` made absolute.
        template: The job sections as a mapping, with ``input.path`` (the glob) and ``model.weights``
            absolute, ``output.path`` unset and ``scoring.truth`` kept as the pattern written.

    """

    source: str
    archive: ArchiveSection
    template: Mapping[str, Any]

    @property
    def root(self) -> AnyPath:
        """The output root: a folder, or a prefix in a bucket."""
        return as_path(self.archive.root)

    @property
    def ledger_path(self) -> Path:
        """The run ledger: ``archive.ledger``, else ``<root>/ledger.sqlite``."""
        if self.archive.ledger is not None:
            return Path(self.archive.ledger)
        if isinstance(self.root, ObjectPath):  # load_archive refuses this; an ArchiveConfig built by hand may not
            raise ConfigError(f"archive.ledger: is needed for archive.root {self.root} in object storage; fix: set "
                              "archive.ledger to a local file")
        return self.root / LEDGER_NAME

    @property
    def truth_pattern(self) -> str | None:
        """The per-input truth pattern, or None when the archive is not scored."""
        scoring = self.template.get("scoring") or {}
        truth = scoring.get("truth") if isinstance(scoring, Mapping) else None
        return truth if isinstance(truth, str) else None

    def store_path(self, input_path: str) -> str:
        """Return ``<root>/<stem>/<stem>.zarr`` for an input.

        Raises:
            ConfigError: The stem is not a plain file name (``..``, ``.``, empty), so the store would not
                lie inside ``archive.root``.
        """
        stem = input_stem(input_path)
        bad = stem in ("", ".", "..") or any(c in stem for c in ("/", "\\", "\0"))
        if isinstance(self.root, ObjectPath):
            store, outside = str(self.root / stem / f"{stem}.zarr"), False
        else:
            store = os.path.abspath(os.path.join(self.root, stem, f"{stem}.zarr"))
            outside = os.path.dirname(os.path.dirname(store)) != os.path.abspath(self.root)
        if bad or outside:
            if split_item_path(input_path)[1] is not None:
                raise ConfigError(
                    f"{input_path}: its STAC item id {stem!r} is not a plain file name, so its store would not lie "
                    f"inside archive.root {self.root}; fix: give the item an id without '/', '\\' or NUL that is not "
                    "'.' or '..', or leave it out with archive.properties / archive.bbox"
                )
            raise ConfigError(
                f"{input_path}: its name gives the output stem {stem!r}, which would put its store outside "
                f"archive.root {self.root}; fix: rename the file (its name without suffix must be a plain name)"
            )
        return store

    def truth_path(self, input_path: str) -> str | None:
        """Return the input's truth file from the pattern (relative → the input's directory), or None.

        For a STAC item (``<file.json>#<item id>``) both ``{stem}`` and ``{name}`` are the item id, and a relative
        result lies in the folder of the item's JSON file.
        """
        pattern = self.truth_pattern
        if pattern is None:
            return None
        href, item_id = split_item_path(input_path)
        values = {"stem": input_stem(input_path), "name": item_id or os.path.basename(input_path.rstrip("/"))}
        # only plain {stem} / {name} fields get here (_check_truth_pattern): no format specs, conversions or nesting
        text = "".join(
            literal + (values[field] if field is not None else "")
            for literal, field, _, _ in string.Formatter().parse(pattern)
        )
        text = os.path.expanduser(text)
        if is_remote(text) or os.path.isabs(text):
            return text
        return os.path.normpath(os.path.join(os.path.dirname(local_href(href)), text))

    def inputs(self) -> list[str]:
        """Return the inputs of this archive, absolute, each once, in a stable (sorted or manifest) order.

        With ``archive.stac``, each item the catalog lists and the filters keep is one input
        (:func:`tiler.archive.collection.stac_inputs`), in catalog order. A manifest is read line by line and
        de-duplicated in one pass (first mention wins): a 100,000-line manifest is listed in well under a second.
        The list itself is kept (a path string per input): the run needs every input before the first starts,
        for its total, the truth files to leave out and the stems two inputs share (:func:`shared_stems`; those
        inputs fail alone, when the run reaches them).

        Raises:
            ConfigError: The manifest or the STAC catalog cannot be read, or nothing matched.

        """
        section = self.archive
        if section.stac is not None:
            interval = parse_interval(section.datetime) if section.datetime is not None else None
            found = stac_inputs(section.stac, bbox=section.bbox, interval=interval, properties=section.properties)
            where = f"archive.stac {section.stac} (after its filters)"
        elif section.manifest is not None:
            found = unique(manifest_entries(section.manifest))
            where = f"archive.manifest {section.manifest}"
        else:
            pattern = str(self.template["input"]["path"])
            found = sorted(unique(os.path.abspath(p) for p in expand_glob(pattern)))
            where = f"input.path {pattern!r}"
        if not isinstance(self.root, ObjectPath):  # outputs under the root are never inputs
            root = os.path.abspath(self.root)
            found = [p for p in found if os.path.commonpath([root, _file_of(p)]) != root]
        truths = {self.truth_path(p) for p in found} - {None}
        inputs = [p for p in found if p not in truths]
        if not inputs:
            raise ConfigError(
                f"{self.source}: {where} lists no inputs (outputs under archive.root and truth files are "
                "left out); fix: check the glob or manifest and that the files exist"
            )
        return inputs

    def stem_clash(self, input_path: str, others: Sequence[str]) -> ConfigError:
        """The error of an input whose stem other inputs share: they would all write one store.

        Only these inputs fail (each with this one line); the rest of the archive runs.
        """
        return ConfigError(
            f"{input_path}: has the stem {input_stem(input_path)!r} like {', '.join(others)}, so both would write "
            f"{self.store_path(input_path)}; fix: rename one of the files, or list them in archives with different "
            "archive.root"
        )

    def job_for(self, input_path: str) -> JobConfig:
        """Return the JobConfig of one input (its path, its store and its truth file filled in).

        Raises:
            ConfigError: The template does not validate for this input, or its truth file is missing
                and ``archive.missing_truth`` is ``fail``.

        """
        data = copy.deepcopy(dict(self.template))
        data["input"] = {**(data.get("input") or {}), "path": input_path}
        if self.archive.assets is not None:  # a STAC item's assets, stacked as bands by its reader
            data["input"]["assets"] = list(self.archive.assets)
        data["output"] = {**(data.get("output") or {}), "path": self.store_path(input_path)}
        truth = self.truth_path(input_path)
        if truth is not None and not is_remote(truth) and not os.path.exists(truth):
            if self.archive.missing_truth == "fail":
                raise ConfigError(
                    f"{input_path}: its truth file {truth} (scoring.truth {self.truth_pattern!r}) does not "
                    "exist; fix: add it, or set archive.missing_truth: unscored to run such inputs unscored"
                )
            truth = None
        if truth is not None or self.truth_pattern is not None:
            data["scoring"] = {**(data.get("scoring") or {}), "truth": truth}
        return parse_config(data, source=f"{self.source} (input {input_path})")


def _file_of(input_path: str) -> str:
    """The absolute local file an input path reads (a STAC item's JSON file), for the under-the-root check."""
    return os.path.abspath(local_href(split_item_path(input_path)[0]))


def _resolve_local(value: Any, base: Path) -> Any:
    if not isinstance(value, str) or not value or is_remote(value):
        return value
    expanded = os.path.expanduser(value)
    return expanded if os.path.isabs(expanded) else os.path.normpath(os.path.join(base, expanded))


def _section_error(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        key = "archive." + ".".join(str(p) for p in err["loc"])
        name = str(err["loc"][0]) if err["loc"] else ""
        value = err.get("input")
        if err["type"] == "missing":
            lines.append(f"{source}: {key}: required key is missing; fix: {_SECTION_FIXES.get(name, '')}")
        elif err["type"] == "extra_forbidden":
            lines.append(
                f"{source}: {key}: unknown key (got {json.dumps(value, default=str)}); "
                f"fix: remove it, or use one of: {', '.join(ArchiveSection.model_fields)}"
            )
        elif err["type"] == "value_error" and "; fix: " in str(err.get("ctx", {}).get("error", "")):
            lines.append(f"{source}: {key}: {err['ctx']['error']}")  # a message that names its own fix
        else:
            lines.append(
                f"{source}: {key}: {err['msg'].lower()} (got {json.dumps(value, default=str)}); "
                f"fix: {_SECTION_FIXES.get(name, 'see configs/archive.yaml')}"
            )
    head = f"{len(lines)} problem{'s' if len(lines) != 1 else ''} in the archive section:\n"
    return ConfigError(head + "\n".join(lines))


def _check_truth_pattern(pattern: Any, source: str) -> None:
    if pattern is None:
        return
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(
            f"{source}: scoring.truth: must be a path pattern or null (got {json.dumps(pattern)}); "
            'fix: write e.g. "{stem}_truth.tif"'
        )
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as exc:
        raise ConfigError(
            f"{source}: scoring.truth: {pattern!r} is not a valid pattern ({exc}); "
            'fix: use {stem} or {name} in braces, e.g. "{stem}_truth.tif"'
        ) from None
    try:
        parts = list(string.Formatter().parse(pattern))
    except ValueError:  # pragma: no cover - parsed above
        parts = []
    fancy = [(f, spec, conv) for _, f, spec, conv in parts if f is not None and (spec or conv)]
    if fancy:
        f, spec, conv = fancy[0]
        raise ConfigError(
            f"{source}: scoring.truth: {{{f}{'!' + conv if conv else ''}{':' + spec if spec else ''}}} in "
            f"{pattern!r} has a format spec or conversion; fix: write plain {{stem}} or {{name}}"
        )
    bad = [f for f in fields if f not in _TRUTH_FIELDS]
    if bad:
        raise ConfigError(
            f"{source}: scoring.truth: placeholder {{{bad[0]}}} in {pattern!r} is unknown; "
            "fix: use {stem} (file name without suffix) or {name} (file name)"
        )


def _split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str], str | None]:
    """Split ``--set`` items into archive-section ones, job-template ones and a raw truth pattern."""
    archive, job, truth = [], [], None
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key.startswith("archive."):
            archive.append(item)
        elif key == "scoring.truth":
            truth = item.partition("=")[2]
        else:
            job.append(item)
    return archive, job, truth


def _parse_value(text: str, key: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{source}: override {key}: value {text!r} is not valid YAML ({exc}); fix: quote strings"
        ) from None


_PATH_KEYS = ("root", "ledger", "manifest", "stac")
"""Archive keys holding a path, resolved against the config file's folder (``--set``: the current folder)."""


def load_archive(path: str | Path, overrides: Sequence[str] = ()) -> ArchiveConfig:
    """Read and validate an archive file.

    Relative paths in the file (``archive.root``, ``archive.manifest``, the ``input.path`` glob and
    ``model.weights``) are resolved against its directory, those given in ``overrides`` against the
    current working directory; ``scoring.truth`` stays a pattern resolved per input.

    Args:
        path: The YAML file.
        overrides: ``key.path=value`` strings (``archive.root=/data/out``, ``tiling.overlap=16``).

    Raises:
        ConfigError: A missing or invalid file, section, key or value; one line per problem.

    """
    file = Path(path)
    source = str(file)
    if not file.is_file():
        raise ConfigError(f"{file}: archive config does not exist or is not a file; fix: check the path")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot be read ({exc}); fix: check the file") from None
    data = load_yaml(text, source)  # unique keys, alias bombs refused
    if not isinstance(data, dict):
        raise ConfigError(
            f"{file}: the top level must be a mapping with an archive section and the job sections; "
            "fix: see configs/archive.yaml"
        )
    base = file.resolve().parent
    raw_section = data.pop("archive", None)
    if not isinstance(raw_section, dict):
        raise ConfigError(
            f"{file}: archive: required section is missing or not a mapping (got {json.dumps(raw_section)}); "
            "fix: add `archive:` with at least `root: <output folder>`"
        )
    section = {k: _resolve_local(v, base) if k in _PATH_KEYS else v for k, v in raw_section.items()}
    archive_sets, job_sets, truth_set = _split_overrides(overrides)
    for item in archive_sets:
        key, _, text = item.partition("=")
        name = key.strip().split(".", 1)[1]
        value = _parse_value(text, key, f"{file} --set")
        section[name] = _resolve_local(value, Path.cwd()) if name in _PATH_KEYS else value
    try:
        archive = ArchiveSection.model_validate(section)
    except ValidationError as exc:
        raise _section_error(exc, source) from None

    for sec, key in (("input", "path"), ("model", "weights")):
        part = data.get(sec)
        if isinstance(part, dict) and key in part:
            part[key] = _resolve_local(part[key], base)
    data = apply_overrides(data, job_sets, source=f"{file} --set")
    if truth_set is not None:
        text = truth_set.strip()  # kept raw: "{stem}_truth.tif" is not valid YAML
        truth = None if text in ("", "null", "~", "None") else text.strip("'\"")
        data["scoring"] = {**(data.get("scoring") or {}), "truth": truth}
    return _validated(source, archive, data)


def _validated(source: str, archive: ArchiveSection, data: dict[str, Any]) -> ArchiveConfig:
    output = data.get("output") or {}
    if isinstance(output, dict) and output.get("path") is not None:
        raise ConfigError(
            f"{source}: output.path: is set by the archive to <archive.root>/<stem>/<stem>.zarr "
            f"(got {json.dumps(output['path'])}); fix: remove output.path and set archive.root"
        )
    if is_object_url(archive.root) and archive.ledger is None:
        raise ConfigError(
            f"{source}: archive.ledger: is needed for archive.root {archive.root} in object storage, where the "
            "ledger (a SQLite database) cannot live; fix: set archive.ledger to a local file, e.g. "
            "--set archive.ledger=/var/lib/tiler/nightly.sqlite"
        )
    given = (data.get("input") or {}).get("path") if isinstance(data.get("input"), dict) else None
    if archive.stac is not None:
        check_stac_section(source, archive, given, data)
    else:
        stray = [k for k in _STAC_ONLY if getattr(archive, k) is not None]
        if stray:
            raise ConfigError(
                f"{source}: archive.{stray[0]}: is set but archive.stac is not; fix: set archive.stac to a STAC "
                f"catalog, or remove archive.{', archive.'.join(stray)}"
            )
    if archive.stac is None and (given is None) == (archive.manifest is None):
        both = "both are set" if given is not None else "neither is set"
        raise ConfigError(
            f"{source}: input.path / archive.manifest: {both} (input.path={json.dumps(given)}, "
            f"archive.manifest={json.dumps(archive.manifest)}); fix: give a glob in input.path, or a "
            "manifest file in archive.manifest, not both"
        )
    scoring = data.get("scoring")
    _check_truth_pattern(scoring.get("truth") if isinstance(scoring, dict) else None, source)
    probe = copy.deepcopy(data)
    probe["input"] = {**(probe.get("input") or {}), "path": given or "<manifest entry>"}
    if archive.stac is not None:
        probe["input"] = {**probe["input"], "path": "<stac item>.json#<item id>", "assets": list(archive.assets or ())}
    probe["output"] = {**(probe.get("output") or {}), "path": str(as_path(archive.root) / "x" / "x.zarr")}
    if isinstance(probe.get("scoring"), dict) and probe["scoring"].get("truth") is not None:
        probe["scoring"]["truth"] = "<truth>"
    parse_config(probe, source=source)  # every template problem, before any input runs
    template = copy.deepcopy(data)
    template.setdefault("input", {})
    return ArchiveConfig(source=source, archive=archive, template=template)
