"""Exports appear whole or not at all: a killed GDAL copy, a full disk or a corrupt chunk leave nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import rasterio
import rasterio.shutil

from tests.io.array_reader import ArrayReader
from tests.io.small_disk import small_disk
from tiler.errors import OutputError
from tiler.geometry import BlockPartition
from tiler.io import export, ome_zarr
from tiler.io.atomic import TMP_PREFIX, host_tag
from tiler.io.export import export_cog, export_nifti, export_ome_zarr, write_quicklook
from tiler.io.store import OutputStore

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


class Killed(Exception):
    """Stands in for a process killed half way through a write."""


def _store(path, shape, chunks, *, num_classes=3, seed=0):
    store = OutputStore.create(path, shape=shape, num_classes=num_classes, chunks=chunks, pixels_hash="c")
    rng = np.random.default_rng(seed)
    for block in BlockPartition(shape, chunks):
        store.write_block(block, rng.integers(0, num_classes, block.shape).astype(np.uint8))
    return store


@pytest.fixture
def store2d(tmp_path):
    return _store(tmp_path / "o.zarr", (300, 260), (128, 128))


def _out_folder(tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    return folder


def test_cog_killed_mid_copy_leaves_no_file_and_no_temporary(tmp_path, store2d, monkeypatch):
    out = _out_folder(tmp_path)

    def copy_then_die(src, dst, **kw):
        with open(dst, "wb") as f:
            f.write(b"II*\x00" + b"\x00" * 1000)  # the first bytes of a TIFF, then the process dies
        raise Killed

    monkeypatch.setattr(rasterio.shutil, "copy", copy_then_die)
    with pytest.raises(Killed):
        export_cog(store2d, out / "pred.tif")
    assert os.listdir(out) == []


def test_cog_failure_keeps_the_previous_export(tmp_path, store2d, monkeypatch):
    out = _out_folder(tmp_path)
    export_cog(store2d, out / "pred.tif")
    before = (out / "pred.tif").read_bytes()
    monkeypatch.setattr(rasterio.shutil, "copy", lambda *a, **k: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        export_cog(store2d, out / "pred.tif")
    assert sorted(os.listdir(out)) == ["pred.tif", "pred.tif.aux.xml"] and (out / "pred.tif").read_bytes() == before


def test_cog_on_a_full_disk_is_an_output_error_naming_the_path(tmp_path):
    store = _store(tmp_path / "o.zarr", (1024, 1024), (256, 256), num_classes=251)  # ~1 MiB of noise
    with small_disk(tmp_path, "1m") as folder:
        with pytest.raises(OutputError, match=rf"cannot write the COG {folder / 'pred.tif'}: .*free space"):
            export_cog(store, folder / "pred.tif")
        assert os.listdir(folder) == []


def test_nifti_on_a_full_disk_is_an_output_error_naming_the_path(tmp_path):
    store = _store(tmp_path / "v.zarr", (32, 256, 256), (8, 128, 128), num_classes=251)  # 2 MiB of noise
    with small_disk(tmp_path, "1m") as folder:
        with pytest.raises(OutputError, match=rf"cannot write the NIfTI {folder / 'pred.nii.gz'}: .*No space"):
            export_nifti(store, folder / "pred.nii.gz")
        assert os.listdir(folder) == []


def test_nifti_killed_mid_write_leaves_no_file(tmp_path, monkeypatch):
    store = _store(tmp_path / "v.zarr", (16, 64, 64), (8, 32, 32))
    out = _out_folder(tmp_path)
    export_nifti(store, out / "pred.nii.gz")
    assert np.array_equal(np.asarray(nib.load(out / "pred.nii.gz").dataobj).transpose(2, 1, 0), store.labels[...])

    def write_then_die(path, shape, **kw):
        with open(path, "wb") as f:
            f.write(b"\x5c\x01" + b"\x00" * 100)
        raise Killed

    monkeypatch.setattr(export, "write_nifti_slabs", write_then_die)
    with pytest.raises(Killed):
        export_nifti(store, out / "other.nii.gz")
    assert sorted(os.listdir(out)) == ["pred.ctbl", "pred.itksnap.txt", "pred.nii.gz"]


def _reader(store):
    return ArrayReader(np.zeros((1, *store.shape), np.uint8))


def test_ome_zarr_killed_mid_build_keeps_the_previous_export(tmp_path, store2d, monkeypatch):
    out = _out_folder(tmp_path)
    export_ome_zarr(store2d, out / "pred.ome.zarr", reader=_reader(store2d))
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    export_ome_zarr(store2d, out / "pred.ome.zarr", reader=_reader(store2d))  # a rerun replaces its own export
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before

    def die(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(ome_zarr, "_write_pyramid", die)
    with pytest.raises(Killed):
        export_ome_zarr(store2d, out / "pred.ome.zarr", reader=_reader(store2d))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_quicklook_killed_mid_save_leaves_no_file(tmp_path, store2d, monkeypatch):
    from PIL import Image

    out = _out_folder(tmp_path)

    def save_then_die(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG\r\n")
        raise Killed

    monkeypatch.setattr(Image.Image, "save", save_then_die)
    with pytest.raises(Killed):
        write_quicklook(store2d, out / "quicklook.png")
    assert os.listdir(out) == []


def test_ome_zarr_never_replaces_a_folder_that_is_not_an_export(tmp_path, store2d):
    out = _out_folder(tmp_path)
    (out / "pred.ome.zarr").mkdir()
    (out / "pred.ome.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"pred\.ome\.zarr: something that is not an OME-Zarr export.*untouched"):
        export_ome_zarr(store2d, out / "pred.ome.zarr", reader=_reader(store2d))
    assert os.listdir(out / "pred.ome.zarr") == ["notes.txt"]


def test_leftover_temporaries_of_a_killed_export_are_cleaned_by_the_next(tmp_path, store2d):
    out = _out_folder(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    cog_dir = out / f"{TMP_PREFIX}{host_tag()}-{int(dead.stdout)}-aaaaaaaa-cog-pred.tif"
    cog_dir.mkdir()
    (cog_dir / "labels.tif").write_bytes(b"x" * 100)
    (out / f"{TMP_PREFIX}{host_tag()}-{int(dead.stdout)}-bbbbbbbb-pred.tif").write_bytes(b"II*\x00")
    export_cog(store2d, out / "pred.tif")
    assert sorted(os.listdir(out)) == ["pred.tif", "pred.tif.aux.xml"]
    with rasterio.open(out / "pred.tif") as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_export_of_a_corrupt_store_fails_naming_the_chunk_and_writes_nothing(tmp_path, store2d):
    out = _out_folder(tmp_path)
    chunk = store2d.path / "labels" / "c" / "1" / "1"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    with pytest.raises(OutputError, match=r"chunk labels/c/1/1 of output store .*o\.zarr is corrupt.*tiler verify"):
        export_cog(store2d, out / "pred.tif")
    assert os.listdir(out) == []
