"""Archive runs: one job template over many inputs, streamed through one model pool, with a SQLite ledger.

An archive file is a job file (the sections of :class:`tiler.config.JobConfig`) plus an ``archive``
section (see ``configs/archive.yaml``)::

    archive:
      root: ../out/nightly          # output root: ledger.sqlite, reports, one folder per input
      manifest: null                # or a file listing one input path per line
    input:
      path: ../scenes/*.tif         # a glob (recursive ** allowed) unless archive.manifest is given
    model: {weights: ../models/satellite-demo.pt}
    scoring:
      truth: "{stem}_truth.tif"     # optional per-input truth pattern, relative to the input's folder

Rules decided here, stated once:

* **Inputs.** ``input.path`` is a glob, resolved against the config file's directory; or
  ``archive.manifest`` names a text file with one input per line (blank lines and ``#`` comments
  skipped; relative lines resolved against the manifest's directory), read line by line and de-duplicated in
  one pass (the first mention wins). Exactly one of the two. Matches inside ``archive.root`` and truth files
  of other matched inputs are left out. An empty match is a :class:`~tiler.errors.ConfigError` (a mistyped
  glob must not look like a quiet night).
* **Outputs.** Each input gets the store ``<root>/<stem>/<stem>.zarr`` (its exports land beside it);
  the stem is the file name without its suffix (``.nii.gz``, ``.ome.tif`` and ``.ome.zarr`` count as
  one suffix). Inputs that share a stem fail, each with one line naming the others; the rest run.
  ``output.path`` must not be written. A root keeps one config's outputs per input: two archive configs
  sharing a root replace each other's stores (each run says so and names the fix, a root per config).
* **Truth.** ``scoring.truth`` may use ``{stem}`` and ``{name}`` (the input's file name); a relative
  result is resolved against the input's directory. ``archive.missing_truth`` says whether an input
  whose truth file is missing fails (``fail``, the default) or runs unscored (``unscored``).
* **Identity.** A ledger row is keyed by (input fingerprint, config hash). The fingerprint is the
  sha256 of the file's size, modification time (ns) and its first and last MiB — cheap for huge
  rasters, and it changes whenever the file is rewritten or touched (a directory input such as a
  zarr store hashes the names, sizes and times of its files). The config hash is
  :func:`tiler.config.config_hash` of the per-input JobConfig, so it covers everything the input's
  job writes (pixels, class names, exports, and the scores with the truth path the pattern gives it),
  not scheduling: changing only the engine's actors, retries or addresses does not reprocess done
  inputs, while a new truth pattern or an added export does. Each row also keeps the pixels hash
  (:func:`tiler.config.pixels_hash`): a new config hash with the same pixels hash finishes the store
  again (exports, scores, report) without running a block.
* **Ledger.** ``<root>/ledger.sqlite``: an input already ``done`` with the same key is skipped; a
  ``failed`` one is retried (``attempts`` counts tries); a ``running`` one held by a live run (same
  host and pid alive, or started less than ``archive.stale_after_hours`` ago on another host) is
  left to it, so two overlapping runs never compute one input twice. Claims are made in
  ``BEGIN IMMEDIATE`` transactions with a busy timeout (rollback journal, not WAL, so the root may be
  on a network file system). A claim resumes the store from its block records when the store holds the
  job's pixels and the last attempt at it with those pixels had the same input fingerprint; otherwise an
  existing store is overwritten. A ledger that cannot serve (another tool's file, a damaged row, read-only)
  is refused before anything is written to it, with one line naming the file and the fix.
* **Streaming.** One pool of model workers serves the whole run (started once): inputs are claimed
  and planned a few at a time just ahead of it (:func:`tiler.segment.run_many`), their blocks keep
  every worker busy across file boundaries, and each input is finished (exports, scores, report,
  ``complete``, ledger row) on a finisher thread while the pool goes on. Outputs are bit-identical to
  a single-input ``tiler run`` whatever the interleaving.
* **Failures.** Every input is attempted: a :class:`~tiler.errors.TilerError` or any other exception
  is recorded with its message (naming the input) and the run moves on. The run's exit code is 0
  when nothing failed, 1 when some input failed, 2 when the archive itself cannot start (bad config),
  130/143 when it was stopped (Ctrl-C/SIGTERM). ``--quiet`` still prints one line per failed input.
* **Reports.** ``report-<UTC time>.json``/``.md`` and ``latest.json``/``.md`` in the root list every
  input of the run as done, skipped, failed (its job raised) or interrupted (the run was stopped while it
  ran or before it started: the next run does it), with scores and errors. The progress bar counts inputs;
  its total is every input of the run from the start.
"""

from tiler.archive.cli import run_from_args
from tiler.archive.config import ArchiveConfig, ArchiveSection, load_archive
from tiler.archive.fingerprint import fingerprint
from tiler.archive.ledger import LEDGER_NAME, Claim, Ledger, LedgerRow
from tiler.archive.listing import input_stem
from tiler.archive.report import ArchiveItem, ArchiveReport
from tiler.archive.run import run_archive

__all__ = [
    "LEDGER_NAME",
    "ArchiveConfig",
    "ArchiveItem",
    "ArchiveReport",
    "ArchiveSection",
    "Claim",
    "Ledger",
    "LedgerRow",
    "fingerprint",
    "input_stem",
    "load_archive",
    "run_archive",
    "run_from_args",
]
