"""What an export format is: its name, dimensionality, files, the settings it is drawn with, and how it is written.

A format is a value (:class:`ExportFormat`); the registry (:mod:`tiler.exports`) lists them. The config's
allowed values, the identity hash, the output paths, the finishing step and ``tiler verify`` read the
registry; nothing else switches on an export's name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tiler.io.atomic import BeforeMove
from tiler.io.objects import AnyPath

Deliver = Callable[["DeliverContext"], "Mapping[str, Any] | None"]
"""Sends an export somewhere once it is written and recorded; returns what to report (None: nothing to send)."""


REPORT_FILES = {
    "scores_json": ".scores.json", "scores_confusion": ".scores.confusion.png",
    "scores_per_class": ".scores.per_class.png", "report_json": ".report.json", "report_md": ".report.md",
}  # fmt: skip
"""Files every finishing may write beside the store besides the exports: role → suffix after the stem (the score's
two charts are named as :func:`tiler.metrics.report.chart_paths` names them beside its JSON)."""


@dataclass(frozen=True)
class DeliverContext:
    """What an export's delivery gets (in the process that finished the export).

    Attributes:
        store: The :class:`~tiler.io.store.OutputStore`; the delivery records what it sent there.
        paths: File role → path of the export's files, all written and recorded.
        output: The job's ``output`` section as a dict (``output.dicom.send`` and the like).
        job_hash: The config hash of this finishing (the delivery's record carries it).
    """

    store: Any
    paths: Mapping[str, AnyPath]
    output: Mapping[str, Any]
    job_hash: str


@dataclass(frozen=True)
class WriteContext:
    """Everything an export's writer gets (in the process that writes it, never the driver).

    Attributes:
        store: The finished :class:`~tiler.io.store.OutputStore` (its blocks all recorded).
        paths: File role → path for this export's files (the main file first, then its sidecars).
        reader: The job's input, open (the OME-Zarr image, the QuPath level-0 scale and the quicklook read it).
        settings: The export's settings (:attr:`ExportFormat.settings` keys of ``output``, with their values).
        before_move: Hook the writer passes to the atomic writes (records the file's intent in the store).
        parts: For an export drawn from the store's polygons: the band files workers drew them into
            (:func:`tiler.io.vector.write_polygon_band`); empty: the writer draws them itself.
        overviews: For an export drawn from the map's mode overview levels: the folder workers drew them into
            (:func:`tiler.io.overviews.write_overview_band`); None: the writer reads the map itself.
        job_hash: The finishing's config hash (what the store records as ``job_hash``), for an export that names
            it (:attr:`ExportFormat.names_job`); None when not known.
    """

    store: Any
    paths: Mapping[str, AnyPath]
    reader: Any
    settings: Mapping[str, Any] = field(default_factory=dict)
    before_move: BeforeMove | None = None
    parts: tuple[str, ...] = ()
    overviews: str | None = None
    job_hash: str | None = None

    @property
    def path(self) -> AnyPath:
        """The export's main file."""
        return next(iter(self.paths.values()))


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Attributes:
        name: Its name in ``output.exports`` (and the record name of its main file).
        dims: Spatial dimensionalities it can be written for (``{2}``, ``{3}`` or both).
        files: File role → suffix after the output's stem, main file first (``{"cog": ".cog.tif", ...}``);
            the roles are the names the store records the files under.
        settings: ``output`` keys the file is drawn with besides the store (they enter the config hash, and a
            recorded file is reused only when they are unchanged).
        write: Writes every file of the export (its assembly step).
        why_not: For a dimensionality it cannot be written for: the fix to print.
        polygons: Drawn from the store's polygons, which finishing draws once per input, band by band on
            several workers (the block step every polygon export shares), before this export's assembly.
        overviews: Drawn (for a 2D map) from its mode overview levels, which finishing draws once per input, band
            by band on several workers, before this export's assembly.
        inputs: Reader formats (:data:`tiler.io.FORMATS`) it can be drawn for; empty: any input.
        why_not_input: For an input of another format: what is wrong and the fix (checked before any block runs).
        deliver: Sends the written export on (e.g. a DICOM SEG to a PACS) and records the delivery, so that a rerun
            sends only what was not acknowledged; a failed delivery fails the input and keeps the files.
        names_job: The file names the finishing's config hash (a STAC Item's provenance): it is drawn again
            whenever a finishing with another config hash (another truth, other exports) reaches the store.
    """

    name: str
    dims: frozenset[int]
    files: Mapping[str, str]
    write: Callable[[WriteContext], None]
    settings: tuple[str, ...] = ()
    why_not: str = ""
    polygons: bool = False
    overviews: bool = False
    inputs: frozenset[str] = frozenset()
    why_not_input: str = ""
    deliver: Deliver | None = None
    names_job: bool = False

    def input_problem(self, reader_format: str) -> str | None:
        """What is wrong with drawing this export for an input of ``reader_format``, or None when it fits.

        >>> from tiler.exports import get
        >>> get("cog").input_problem("nifti") is None, get("dicom-seg").input_problem("dicom") is None
        (True, True)
        """
        if not self.inputs or reader_format in self.inputs:
            return None
        return self.why_not_input or f"{self.name} is drawn for {', '.join(sorted(self.inputs))} inputs only"

    def paths(self, base: AnyPath) -> dict[str, AnyPath]:
        """The export's files beside the output whose stem is ``base`` (``/out/scene`` for ``/out/scene.zarr``).

        >>> from tiler.exports import get
        >>> {k: p.name for k, p in get("cog").paths(Path("/out/scene")).items()}
        {'cog': 'scene.cog.tif', 'cog_aux': 'scene.cog.tif.aux.xml'}
        """
        return {role: base.with_name(base.name + suffix) for role, suffix in self.files.items()}
