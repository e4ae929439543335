"""The output store: one zarr v3 group holding labels, optional probabilities, georeferencing and job state.

One concept per module, each importing only those above it in this list:

* :mod:`.layout` — where the store's files lie, the grid of chunk files, metadata a job can have written;
* :mod:`.chunks` — chunk encoding, checked reads, aligned writes, the labels and chunk-file digests;
* :mod:`.records` — block records read back typed (:class:`StoredBlock`) and when one is sound;
* :mod:`.audit` — the block ledger: writing records, auditing them against the chunk files, completeness;
* :mod:`.exports` — export records and intents, and the digests that vouch for export files;
* :mod:`.coords` — what xarray and rioxarray read (dimension names, coordinates, grid mapping, ``_FillValue``);
* :mod:`.group` — the group ``zarr.json``: identity (legacy stores too), opening, attribute rewrites;
* :mod:`.build` — building a new store whole, under a temporary name;
* :mod:`.store` — :class:`OutputStore`, which creates, resumes and finishes a store and delegates to the rest.

The store proves itself: every chunk carries a crc32c checksum (a flipped bit is an error on read, never a wrong
pixel), every chunk a block covers is written even when it holds only the fill value (so a missing chunk file always
means a lost chunk), and :meth:`OutputStore.check_blocks` finds recorded blocks whose chunks are gone, and
:meth:`OutputStore.audit_blocks` also those whose chunk files are not the ones they wrote (a valid chunk of another
block swapped in) or whose record does not match its block. ``complete`` is believed only while every block of the
partition has a sound record (:attr:`OutputStore.complete`), and metadata declaring shapes no job writes is refused
on open (:func:`check_store_metadata`). The whole group is built under a temporary name and renamed into place, so a
store either exists with all its metadata or not at all. The labels' fill value is the nodata label (also declared as
``_FillValue`` for xarray); it is never how a lost chunk reads in a complete store: a missing chunk file is an error.
(zarr 3.1's LocalStore itself writes each chunk file to a temporary name and renames it, so a killed block
write leaves whole chunks, old or new; the block has no record yet and is recomputed.)
"""

from tiler.io.atomic import pid_alive
from tiler.io.lock import acquire_store_lock, check_not_locked, lock_path_for, release_store_lock, store_lock
from tiler.io.store.audit import BlockLedger
from tiler.io.store.build import PROBABILITY_DTYPES
from tiler.io.store.chunks import chunk_file_digest, labels_digest
from tiler.io.store.coords import GRID_MAPPING, TRANSFORM_ORDER
from tiler.io.store.exports import ExportLedger, IntentRecorder, StoredExport
from tiler.io.store.group import finished_job_hash
from tiler.io.store.layout import (
    BLOCK_SHAPE,
    MAX_STORED_FILES,
    MAX_UNIT_BYTES,
    STATE_DIR,
    STORE_FORMAT,
    STORE_MARKER,
    check_store_metadata,
)
from tiler.io.store.records import RECORD_FIELDS, RecordError, StoredBlock, StoreWarning, check_block
from tiler.io.store.store import OutputStore

__all__ = [
    "BLOCK_SHAPE", "GRID_MAPPING", "MAX_STORED_FILES", "MAX_UNIT_BYTES", "PROBABILITY_DTYPES", "RECORD_FIELDS",
    "STATE_DIR", "STORE_FORMAT", "STORE_MARKER", "TRANSFORM_ORDER", "BlockLedger", "ExportLedger", "IntentRecorder",
    "OutputStore", "RecordError", "StoreWarning", "StoredBlock", "StoredExport", "acquire_store_lock",
    "check_block", "check_not_locked", "check_store_metadata", "chunk_file_digest", "finished_job_hash",
    "labels_digest", "lock_path_for", "pid_alive", "release_store_lock", "store_lock",
]  # fmt: skip
