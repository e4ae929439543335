"""Atomic files and folders: whole or absent at the final path, temporaries removed, leftovers of the dead cleaned."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from tests.io.small_disk import small_disk
from tiler.errors import OutputError
from tiler.io.atomic import (
    TMP_PREFIX,
    atomic_dir,
    atomic_file,
    atomic_path,
    clean_temporaries,
    host_tag,
    output_error,
    parse_temp_name,
    temp_path,
    write_json_atomic,
)


class Crash(Exception):
    """Stands in for a writer that dies half way."""


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_file_appears_whole_and_no_temporary_stays(tmp_path):
    with atomic_file(tmp_path / "a.json", "w") as f:
        f.write('{"x": 1}')
        assert _names(tmp_path)[0].startswith(TMP_PREFIX) and not (tmp_path / "a.json").exists()
    assert (tmp_path / "a.json").read_text() == '{"x": 1}' and _names(tmp_path) == ["a.json"]


def test_a_crash_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    (tmp_path / "a.txt").write_text("old")
    with pytest.raises(Crash), atomic_file(tmp_path / "a.txt", "w") as f:
        f.write("half of the n")
        raise Crash
    assert (tmp_path / "a.txt").read_text() == "old" and _names(tmp_path) == ["a.txt"]


def test_a_writer_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(OutputError, match=r"b\.tif produced no file"), atomic_path(tmp_path / "b.tif"):
        pass
    assert _names(tmp_path) == []


def test_temp_name_keeps_the_suffix_and_encodes_the_owner(tmp_path):
    tmp = temp_path(tmp_path / "pred.nii.gz")
    assert tmp.parent == tmp_path and tmp.name.endswith("-pred.nii.gz")
    assert parse_temp_name(tmp.name) == (host_tag(), os.getpid())


def test_directory_is_renamed_into_place(tmp_path):
    with atomic_dir(tmp_path / "d.zarr") as tmp:
        (tmp / "zarr.json").write_text("{}")
        assert not (tmp_path / "d.zarr").exists()
    assert _names(tmp_path) == ["d.zarr"] and _names(tmp_path / "d.zarr") == ["zarr.json"]


def test_directory_that_exists_is_refused_untouched(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "mine.txt").write_text("user data")
    with pytest.raises(OutputError, match=r"cannot write .*d: it already exists and was left untouched"):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "new.txt").write_text("x")
    assert _names(tmp_path) == ["d"] and (tmp_path / "d" / "mine.txt").read_text() == "user data"


def test_directory_appearing_meanwhile_is_not_clobbered(tmp_path):
    with pytest.raises(OutputError, match=r"appeared while it was being created"):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "new.txt").write_text("x")
            (tmp_path / "d").mkdir()  # another writer wins the race
            (tmp_path / "d" / "theirs.txt").write_text("theirs")
    assert _names(tmp_path) == ["d"] and _names(tmp_path / "d") == ["theirs.txt"]


def test_directory_replace_swaps_old_for_new(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old.txt").write_text("old")
    with atomic_dir(tmp_path / "d", replace=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _names(tmp_path) == ["d"] and _names(tmp_path / "d") == ["new.txt"]


def test_failed_directory_build_leaves_nothing(tmp_path):
    with pytest.raises(Crash), atomic_dir(tmp_path / "d") as tmp:
        (tmp / "part").write_text("x")
        raise Crash
    assert _names(tmp_path) == []


def test_leftovers_of_dead_writers_are_cleaned_live_and_foreign_kept(tmp_path):
    dead = _dead_pid()
    leftover_file = tmp_path / f"{TMP_PREFIX}{host_tag()}-{dead}-0badf00d-pred.tif"
    leftover_dir = tmp_path / f"{TMP_PREFIX}{host_tag()}-{dead}-0badf00d-cog-pred.tif"
    live = tmp_path / f"{TMP_PREFIX}{host_tag()}-{os.getpid()}-0badf00d-pred.tif"
    other_host = tmp_path / f"{TMP_PREFIX}ffffffff-{dead}-0badf00d-pred.tif"
    user = tmp_path / ".tiler-tmp-notes.txt"  # our prefix, but not one of our names
    for p in (leftover_file, live, other_host, user):
        p.write_text("x")
    leftover_dir.mkdir()
    (leftover_dir / "labels.tif").write_text("x")
    removed = clean_temporaries(tmp_path)
    assert sorted(removed) == sorted([leftover_file, leftover_dir])
    assert _names(tmp_path) == sorted(p.name for p in (live, other_host, user))


def test_disk_full_is_an_output_error_naming_the_path(tmp_path):
    with small_disk(tmp_path) as folder:
        target = folder / "records.json"
        with pytest.raises(OutputError, match=rf"cannot write {target}: .*No space left.*free space"):
            write_json_atomic(target, {"blob": "x" * 3_000_000})
        assert _names(folder) == []


@pytest.mark.parametrize(
    "code,fix",
    [
        pytest.param(errno.ENOSPC, r"disk is full or nearly full \(.* MiB free\): free space", id="no-space"),
        pytest.param(errno.EACCES, r"writable output folder or fix its permissions", id="permission"),
        pytest.param(errno.EIO, r"exists, is writable and has free space", id="other"),
    ],
)
def test_os_errors_name_the_path_the_error_and_the_fix(tmp_path, code, fix):
    err = output_error(tmp_path / "pred.tif", OSError(code, os.strerror(code)))
    assert isinstance(err, OutputError)
    assert str(err).startswith(f"cannot write {tmp_path / 'pred.tif'}: [Errno {code}]")
    assert len(str(err).splitlines()) == 1
    with pytest.raises(OutputError, match=fix):
        raise err


def test_an_output_under_proc_is_not_called_a_full_disk():
    err = output_error("/proc/tiler-out/x.zarr", OSError(errno.ENOENT, os.strerror(errno.ENOENT)))
    assert "virtual file system" in str(err) and "disk is full" not in str(err)
