"""Running an archive: claim each input in the ledger, stream the claimed ones through one pool, record outcomes."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator

from tiler.archive.collection import write_collection
from tiler.archive.config import ArchiveConfig
from tiler.archive.fingerprint import fingerprint, item_fingerprint, missing_fingerprint
from tiler.archive.ledger import Ledger, now
from tiler.archive.listing import input_stem, shared_stems
from tiler.archive.progress import ArchiveProgress
from tiler.archive.report import ArchiveItem, ArchiveReport, timings_of
from tiler.config.identity import config_hash, pixels_hash
from tiler.errors import ConfigError, TilerError
from tiler.io.store import OutputStore, finished_job_hash
from tiler.redact import redact
from tiler.segment import SegmentJob, run_many

SHARED_ROOT_FIX = (
    "an archive.root keeps one config's outputs per input, so archive configs sharing a root replace each other's "
    "outputs on every run; fix: give each config its own archive.root (e.g. --set archive.root=<folder>)"
)
"""What to do when two archive configs write one root (said when a run replaces another config's store)."""


def _error_text(exc: BaseException, input_path: str) -> str:
    text = str(exc) if isinstance(exc, TilerError) else f"{type(exc).__name__}: {exc}"
    if input_path not in text:
        text = f"{input_path}: {text}"
    return redact(text)


def _stopped(exc: BaseException) -> str:
    """How a run stopped, for the inputs it left: ``interrupted (Terminated)``, ``stopped (EngineError)``."""
    return f"{'interrupted' if isinstance(exc, KeyboardInterrupt) else 'stopped'} ({type(exc).__name__})"


def _holds_pixels(store: str, pixels: str, job_hash: str) -> bool | None:
    """Whether the tiler store at ``store`` holds the pixels of a job (None: no store there, or not a readable one)."""
    if not OutputStore.is_tiler_store(store):
        return None
    try:
        return OutputStore.open(store, mode="r").holds_pixels_of(pixels, job_hash)
    except (TilerError, OSError, ValueError):  # damaged: the job itself says so when it opens the store
        return None


def _describe(item: ArchiveItem) -> str:
    if item.status == "failed":
        return f"FAILED (attempt {item.attempts}): {item.error}"
    score = (item.scores or {}).get("fwiou")
    extra = f", fwiou {score:.4f}" if isinstance(score, int | float) else ""
    if item.status == "skipped":
        return f"skipped ({item.reason}{extra})"
    return f"done in {item.seconds or 0:.1f} s{extra}"


class _Run:
    """One archive run's bookkeeping: the ledger, the report, the claimed inputs still running, the log."""

    def __init__(
        self, archive: ArchiveConfig, ledger: Ledger, report: ArchiveReport, progress: ArchiveProgress
    ) -> None:
        self.archive = archive
        self.ledger = ledger
        self.report = report
        self.progress = progress
        self.total = 0
        self.shared: dict[str, list[str]] = {}  # input -> the other inputs with its stem (they fail alone)
        self.running: dict[int, ArchiveItem] = {}

    def ended(self, item: ArchiveItem) -> None:
        self.report.items.append(item)
        self.progress.item_ended(item.status)
        self.progress.write(f"[{len(self.report.items)}/{self.total}] {item.input}: {_describe(item)}")

    def fail(self, item: ArchiveItem, error: str) -> None:
        """An input that failed before it could be claimed (unreadable, bad per-input config)."""
        item.error = error
        row = self.ledger.record_failure(str(item.fingerprint), "-", input_path=item.input, error=error)
        item.attempts = row.attempts
        self.ended(item)

    def jobs(self, inputs: list[str]) -> Iterator[SegmentJob]:
        """Claim each input in turn (lazily: only as the pool asks for more) and yield the claimed ones."""
        for input_path in inputs:
            item = ArchiveItem(input=redact(input_path), stem=input_stem(input_path), status="failed")
            try:
                item.fingerprint = self.fingerprint(input_path)
            except (OSError, TilerError) as exc:
                item.fingerprint, item.config_hash = missing_fingerprint(input_path), "-"
                reason = (
                    _error_text(exc, input_path) if isinstance(exc, TilerError)
                    else f"{input_path}: the input cannot be read ({exc}); fix: check that the file exists"
                )  # fmt: skip
                self.fail(item, redact(reason))
                continue
            try:
                if input_path in self.shared:
                    raise self.archive.stem_clash(input_path, self.shared[input_path])
                item.store = self.archive.store_path(input_path)
                cfg = self.archive.job_for(input_path)
                item.config_hash, pixels = config_hash(cfg), pixels_hash(cfg)
            except Exception as exc:  # noqa: BLE001 - one bad input must not stop the others
                item.config_hash = "-"
                self.fail(item, _error_text(exc, input_path))
                continue
            gone: list[str] = []
            claim = self.ledger.claim(
                item.fingerprint, item.config_hash, input_path=item.input, store_path=item.store, pixels_hash=pixels,
                store_holds_pixels=functools.partial(_holds_pixels, item.store, pixels, item.config_hash),
                still_done=functools.partial(self._still_done, item, gone),
            )
            item.attempts = claim.row.attempts
            if claim.state != "claimed":
                item.status, item.scores, item.outputs = "skipped", claim.row.scores, claim.row.outputs
                item.reason = (
                    f"done on {claim.row.finished_at}"
                    if claim.state == "done"
                    else f"being processed by pid {claim.row.pid} on {claim.row.host} since {claim.row.started_at}"
                )
                self.ended(item)
                continue
            self._claimed(item, resume=claim.resume, gone=gone)
            job = SegmentJob(cfg, overwrite=not claim.resume and os.path.exists(item.store))
            self.running[id(job)] = item
            yield job

    def fingerprint(self, input_path: str) -> str:
        """The input's identity in the ledger: a STAC item's id and assets (archive.stac), else its file's."""
        section = self.archive.archive
        if section.stac is not None:
            return item_fingerprint(input_path, section.assets)
        return fingerprint(input_path)

    def write_collection(self) -> None:
        """Rewrite ``<root>/collection.json`` linking the STAC Item of every input the ledger has done."""
        outputs = [row.outputs or {} for row in self.ledger.rows() if row.status == "done"]
        files = [out["stac"] for out in outputs if out.get("stac")]
        written = write_collection(self.archive.root, files, source=self.archive.source)
        if written is not None:
            self.progress.write(f"STAC Collection of the done inputs: {written}")

    def _claimed(self, item: ArchiveItem, *, resume: bool, gone: list[str]) -> None:
        """Say why a claimed input runs again when its store says why: done before, or another config's store.

        A store finished for another config is kept on the item (``reason``): a failure then names the fix.
        """
        other = finished_job_hash(str(item.store))
        if other is not None and other != item.config_hash:
            item.reason = f"its store {item.store} held the result of config {other}"
            how = "finishing it again" if resume else "computing it anew"
            lead = "done before, but " if gone else ""
            self.progress.write(f"{item.input}: {lead}{item.reason}; {how} for this config ({SHARED_ROOT_FIX})")
        elif gone:
            self.progress.write(f"{item.input}: done before, but {gone[0]}; doing it again")

    @staticmethod
    def _still_done(item: ArchiveItem, gone: list[str], _row: object) -> bool:
        """Whether the store of an input the ledger has done still holds that job's finished outputs."""
        finished = finished_job_hash(str(item.store))
        if finished == item.config_hash:
            return True
        gone.append(
            f"its store {item.store} is gone or unfinished" if finished is None
            else f"its store {item.store} was since finished for config {finished}"
        )
        return False

    def record(self, job: SegmentJob, *, seconds: float, error: BaseException | None, result: object) -> None:
        """Write a streamed input's outcome to the ledger and the report."""
        item = self.running.pop(id(job))
        item.seconds = seconds
        assert item.fingerprint is not None and item.config_hash is not None
        if error is not None:
            item.error = _error_text(error, item.input)
            if item.reason is not None:  # it failed while taking over another config's store
                item.error = f"{item.error} (note: {item.reason}: {SHARED_ROOT_FIX})"
            self.ledger.finish(item.fingerprint, item.config_hash, status="failed", error=item.error)
        else:
            item.status = "done"
            item.scores = result.scores  # type: ignore[attr-defined]
            item.outputs = dict(result.outputs)  # type: ignore[attr-defined]
            item.timings = timings_of(result.summary)  # type: ignore[attr-defined]
            self.ledger.finish(
                item.fingerprint, item.config_hash, status="done", scores=item.scores, outputs=item.outputs,
                summary=result.summary,  # type: ignore[attr-defined]
            )
        self.ended(item)

    def interrupted(self, exc: BaseException, inputs: list[str]) -> None:
        """Report every input the stopped run did not end as ``interrupted``, not failed: it is not at fault.

        Those it was running keep a ``failed`` ledger row saying they were interrupted (the next run claims them
        again and resumes their stores; the ledger has no other state for that); those it never started are
        not in the ledger at all.
        """
        how = _stopped(exc)
        for item in self.running.values():
            item.status, item.reason = "interrupted", f"{how} while running; rerun to resume"
            assert item.fingerprint is not None and item.config_hash is not None
            try:
                self.ledger.finish(
                    item.fingerprint, item.config_hash, status="failed", error=f"{item.input}: {item.reason}"
                )
            except TilerError:  # the ledger itself stopped the run: the error that did is the one to show
                pass
            self.report.items.append(item)
        self.running.clear()
        ended = {item.input for item in self.report.items}
        for input_path in inputs:
            name = redact(input_path)
            if name not in ended:
                self.report.items.append(ArchiveItem(
                    input=name, stem=input_stem(input_path), status="interrupted", reason=f"not started: the run {how}"
                ))


def run_archive(
    archive: ArchiveConfig, *, engine: str = "ray", quiet: bool = False, lookahead: int = 2, finishers: int = 2
) -> ArchiveReport:
    """Process every input of an archive not already done with the same fingerprint and config hash.

    Every claimed input streams through one pool of model workers (:func:`tiler.segment.run_many`),
    started once for the run; a failing input fails alone.

    Args:
        archive: The loaded archive (see :func:`tiler.archive.load_archive`).
        engine: ``ray`` or ``local`` (in-process).
        quiet: No progress bar or lines on stderr.
        lookahead: Inputs claimed and planned ahead of the pool.
        finishers: Inputs finished at once (their exports, scores and reports run in worker processes).

    Returns:
        The run report (also written to the root as JSON and Markdown); its ``exit_code`` is 1 when
        some input failed.

    Raises:
        ConfigError: The inputs cannot be listed (see :meth:`ArchiveConfig.inputs`).
        OutputError: The root or the ledger cannot be written, or the ledger is damaged (nothing is changed).
        KeyboardInterrupt: The run was stopped; the report, written first, lists the inputs it did not end as
            ``interrupted``.
    """
    if engine not in ("ray", "local"):
        raise ConfigError(f"engine: {engine!r} is not an engine; fix: use ray or local")
    t0 = time.perf_counter()
    report = ArchiveReport(config=archive.source, root=str(archive.root), engine=engine, started_at=now())
    inputs = archive.inputs()
    ledger = Ledger(
        archive.ledger_path,
        busy_timeout_s=archive.archive.busy_timeout_s,
        stale_after_hours=archive.archive.stale_after_hours,
    )
    progress = ArchiveProgress(len(inputs), quiet=quiet)
    run = _Run(archive, ledger, report, progress)
    run.total = len(inputs)
    run.shared = shared_stems(inputs)
    try:
        outcomes = run_many(
            run.jobs(inputs), engine=engine, progress=progress, lookahead=lookahead, finishers=finishers
        )
        for outcome in outcomes:
            run.record(outcome.job, seconds=outcome.seconds, error=outcome.error, result=outcome.result)  # type: ignore[arg-type]
        run.write_collection()
    except BaseException as exc:
        run.interrupted(exc, inputs)
        raise
    finally:
        progress.close()
        ledger.close()
        order = {redact(path): n for n, path in enumerate(inputs)}
        report.items.sort(key=lambda item: order.get(item.input, len(order)))  # input order, not completion order
        report.finished_at = now()
        report.seconds = time.perf_counter() - t0
        report.write(archive.root)
    return report
