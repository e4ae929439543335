"""nnU-Net models on the inputs nnU-Net users have: a job of three keys runs as ``nnUNetv2_predict`` would.

The reference is nnunetv2's own ``nnUNetPredictor`` (a test dependency) on the same NIfTI. A job that names only
``input.path``, ``model.weights`` and ``output.path`` takes its dimensionality from the input, its tiling from the
plans, crops to nnU-Net's non-zero box, and must agree with nnU-Net on at least 99.8 % of voxels (nnU-Net's
float16 sums on some paths and the order of its additions explain the rest).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import yaml

from tests.model.nnunet_helpers import ct_volume, nnunet_labels, write_nifti, write_results
from tests.model.sources_helpers import run_tiler
from tiler.config import load_config
from tiler.errors import ConfigError, InputError
from tiler.model.sources.nnunet import ResultsFolder, expected_tiling

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/model/conftest.py

MIN_AGREEMENT = 0.998
SPACING = (2.5, 0.8, 0.8)
OFFSET = (3, 5, 9)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3d_fullres results folder with two folds, and a CT whose non-zero box is smaller than the image."""
    base = tmp_path_factory.mktemp("nnunet-raw")
    write_results(base, "3d_fullres", folds=(0, 1))
    volume = np.zeros((40, 60, 62), np.int16)  # zeros around the scanner's field of view, as nnU-Net crops
    ct = ct_volume()
    volume[tuple(slice(o, o + n) for o, n in zip(OFFSET, ct.shape, strict=True))] = ct
    write_nifti(base / "case_0000.nii.gz", volume, SPACING)
    return base


def folder_of(root: Path) -> Path:
    return root / "nnUNetTrainer__nnUNetPlans__3d_fullres"


def minimal_job(root: Path, out: Path, image: Path | None = None, **extra: Any) -> Path:
    """A job of three keys (plus ``extra`` sections merged in), as a new user writes it."""
    data: dict[str, Any] = {
        "input": {"path": str(image or root / "case_0000.nii.gz")},
        "model": {"weights": str(folder_of(root))},
        "output": {"path": str(out / "out.zarr")},
    }
    for section, values in extra.items():
        data[section] = {**data.get(section, {}), **values}
    path = out / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_job_of_three_keys_is_3d_and_tiles_like_the_plans(root: Path, tmp_path: Path) -> None:
    cfg = load_config(minimal_job(root, tmp_path, output={"exports": ["nifti"]}))
    want = expected_tiling(ResultsFolder(folder_of(root)), 3)
    assert cfg.ndim == 3 and cfg.output.exports == ("nifti",)
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.tiling.model_dump().items() if k in want} == want
    assert len(cfg.output.chunks) == 3


def test_what_the_job_gives_is_kept_and_a_differing_tile_still_refused(root: Path, tmp_path: Path) -> None:
    from tiler.job.refs import model_ref

    cfg = load_config(minimal_job(root, tmp_path, tiling={"overlap": [4, 8, 8], "block": [32, 32, 32]}),
                      ["output.chunks=16"])  # fmt: skip
    assert cfg.tiling.overlap == (4, 8, 8) and cfg.tiling.tile == (16, 32, 32) and cfg.tiling.rule == "nnunet"
    assert cfg.tiling.block == (32, 32, 32) and cfg.output.chunks == (16, 16, 16)
    wrong = load_config(minimal_job(root, tmp_path, tiling={"tile": [32, 32, 32]}))
    with pytest.raises(ConfigError, match=r"--set tiling.tile=\[16,32,32\]"):
        model_ref(wrong)


def test_a_volume_without_a_model_tiling_is_a_3d_job(root: Path, tmp_path: Path) -> None:
    job = {"input": {"path": str(root / "case_0000.nii.gz")}, "model": {"weights": str(tmp_path / "m.pt")},
           "output": {"path": str(tmp_path / "o.zarr"), "exports": ["nifti"]}, "tiling": {"tile": 48}}  # fmt: skip
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(job))
    cfg = load_config(path)
    assert cfg.tiling.tile == (48, 48, 48) and cfg.tiling.overlap == (32, 32, 32) and len(cfg.output.chunks) == 3


def test_a_job_of_three_keys_gives_nnunets_labels_inside_and_outside_its_crop(root: Path, tmp_path: Path) -> None:
    image = root / "case_0000.nii.gz"
    expected = nnunet_labels(folder_of(root), [image], folds=(0, 1), mirroring=True)
    labels = run_tiler(minimal_job(root, tmp_path, output={"exports": ["nifti"]}))
    assert labels.shape == expected.shape
    assert np.bincount(expected.ravel(), minlength=3).min() > 0.03 * expected.size, "every class must show"
    assert float((labels == expected).mean()) >= MIN_AGREEMENT
    outside = np.ones(labels.shape, dtype=bool)
    outside[tuple(slice(o, o + n) for o, n in zip(OFFSET, ct_volume().shape, strict=True))] = False
    assert (labels[outside] == 0).all() and (expected[outside] == 0).all()
    exported = nib.load(str(tmp_path / "out.nii.gz"))
    np.testing.assert_allclose(exported.affine, nib.load(str(image)).affine)
    np.testing.assert_array_equal(np.asarray(exported.dataobj).transpose(), labels)


def test_an_explicit_region_outside_the_image_is_one_line(root: Path, tmp_path: Path) -> None:
    from tiler.job.plan import plan_job

    cfg = load_config(minimal_job(root, tmp_path, input={"region": [[0, 10], [0, 10], [0, 99]]}))
    with pytest.raises(InputError, match=r"input.region .* does not lie inside .*case_0000.nii.gz of shape"):
        plan_job(cfg)


# ---------------------------------------------------------------------------------------------- resampling

PLANS_SPACING = (1.0, 1.0, 1.0)
RAW_SPACING = (2.5, 0.8, 0.8)  # anisotropic (2.5 / 0.8 > 3): nnU-Net resamples z on its own, nearest


@pytest.fixture(scope="module")
def resampled_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Plans at 1 x 1 x 1 mm, and a CT at 2.5 x 0.8 x 0.8 mm whose non-zero box is smaller than the image."""
    from tests.model.nnunet_helpers import make_plans

    base = tmp_path_factory.mktemp("nnunet-resampled")
    write_results(base, "3d_fullres", folds=(0, 1), plans=make_plans(spacing=PLANS_SPACING))
    volume = np.zeros((18, 52, 50), np.int16)
    volume[2:16, 3:47, 1:47] = ct_volume((14, 44, 46))
    write_nifti(base / "case_0000.nii.gz", volume, RAW_SPACING)
    return base


def test_an_input_at_another_spacing_gives_nnunets_labels_on_its_own_grid(
    resampled_root: Path, tmp_path: Path
) -> None:
    import zarr

    image = resampled_root / "case_0000.nii.gz"
    expected = nnunet_labels(folder_of(resampled_root), [image], folds=(0, 1), mirroring=True)
    labels = run_tiler(minimal_job(resampled_root, tmp_path, output={"exports": ["nifti"]}))
    assert labels.shape == expected.shape == (18, 52, 50)
    assert np.bincount(expected.ravel(), minlength=3).min() > 0.03 * expected.size, "every class must show"
    assert float((labels == expected).mean()) >= MIN_AGREEMENT
    exported = nib.load(str(tmp_path / "out.nii.gz"))
    np.testing.assert_allclose(exported.affine, nib.load(str(image)).affine)
    resampled = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["plan"]["resampled"]
    assert resampled["model_shape"] == [35, 35, 37] and resampled["separate_axis"] == 0  # what was resampled
    assert resampled["target_spacing"] == list(PLANS_SPACING)
    report = (tmp_path / "out.report.md").read_text()
    assert "resampled from 2.5 × 0.8 × 0.8 mm to the model's 1 × 1 × 1 mm (grid [35, 35, 37]" in report
    assert "region of interest: [2:16, 3:47, 1:47]" in report


def test_a_resampled_job_gives_the_same_labels_for_any_blocks_and_engines(
    resampled_root: Path, tmp_path: Path, ray_session: Any
) -> None:
    import zarr

    from tiler.segment import run_segment

    one_pass = {"folds": [0], "mirroring": False}
    whole = run_tiler(minimal_job(resampled_root, tmp_path, model={"nnunet": one_pass}))
    small = tmp_path / "small"
    small.mkdir()
    blocks = minimal_job(resampled_root, small, model={"nnunet": one_pass}, tiling={"block": [8, 16, 16]},
                         output={"chunks": [8, 16, 16]}, engine={"actors": 2})  # fmt: skip
    run_segment(load_config(blocks), engine="ray", quiet=True)  # the plan travels to Ray actors
    np.testing.assert_array_equal(np.asarray(zarr.open_group(str(small / "out.zarr"), mode="r")["labels"]), whole)


def test_inspect_plans_the_crop_and_the_model_grid(resampled_root: Path, tmp_path: Path) -> None:
    from tiler.describe import describe

    image = resampled_root / "case_0000.nii.gz"
    info = describe(str(image), config=str(minimal_job(resampled_root, tmp_path)))
    assert info["region of interest"] == "2:16 x 3:47 x 1:47"
    assert "model grid [35, 35, 37]" in info["resampled"]
    assert info["tiles"].startswith("16 (4 x 2 x 2)")  # the model grid's tiles, not the input's


def test_a_dicom_series_at_another_spacing_gives_the_labels_of_its_nifti(resampled_root: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk  # the reference DICOM series reader (nnU-Net's SimpleITKIO reads the same way)

    from tests.dicom_series import write_series

    volume = np.zeros((18, 52, 50), np.int16)
    volume[2:16, 3:47, 1:47] = ct_volume((14, 44, 46))
    write_series(tmp_path / "series", volume, spacing=RAW_SPACING)
    series = sitk.ImageSeriesReader()
    series.SetFileNames(series.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    sitk.WriteImage(series.Execute(), str(tmp_path / "ct.nii.gz"))
    one_pass = {"nnunet": {"folds": [0], "mirroring": False}}
    labels = {}
    for name, image in (("dicom", tmp_path / "series"), ("nifti", tmp_path / "ct.nii.gz")):
        out = tmp_path / name
        out.mkdir()
        labels[name] = run_tiler(minimal_job(resampled_root, out, image, model=one_pass))
    assert labels["dicom"].shape == (18, 52, 50)
    np.testing.assert_array_equal(labels["dicom"], labels["nifti"])
