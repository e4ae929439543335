"""``tiler score`` end to end on real files written in tmp_path: GeoTIFF, NIfTI, zarr stores; mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import rasterio
import zarr
from rasterio.transform import from_origin
from scipy import ndimage

from tests.shared_data import SHARED_DATA
from tiler.errors import InputError, ScoreError
from tiler.io.labels import open_labels
from tiler.metrics import confusion_matrix, scores_from_confusion
from tiler.metrics._sources import check_compatible
from tiler.metrics.files import score_paths

TRANSFORM = from_origin(500000.0, 4200000.0, 30.0, 30.0)
JSON_KEYS = {
    "fwiou", "miou", "per_class_iou", "dice", "per_class_dice", "pixel_accuracy", "mean_class_accuracy",
    "boundary_iou", "boundary_f1", "confusion_matrix", "num_classes", "ignored_pixels", "class_names",
    "absent_classes",
}


def scene(shape: tuple[int, ...], k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fields = ndimage.gaussian_filter(rng.random((k, *shape)), sigma=(0, *([3.0] * len(shape))))
    return fields.argmax(axis=0).astype(np.uint8)


def write_tif(path: Path, labels: np.ndarray, *, crs: str = "EPSG:32618", transform=TRANSFORM,
              nodata: float | None = None) -> Path:
    with rasterio.open(
        path, "w", driver="GTiff", height=labels.shape[0], width=labels.shape[1], count=1, dtype="uint8",
        crs=crs, transform=transform, nodata=nodata, tiled=True, blockxsize=32, blockysize=32,
    ) as dst:
        dst.write(labels, 1)
    return path


def run_cli(argv: list[str]) -> int:
    from tiler.cli import main

    return main(argv)


@pytest.fixture
def tif_pair(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    truth = scene((90, 120), 4, seed=0)
    truth[:5, :] = 255  # ignored strip
    pred = np.where(np.random.default_rng(1).random(truth.shape) < 0.9, truth, 2).astype(np.uint8)
    pred[truth == 255] = 1
    return write_tif(tmp_path / "pred.tif", pred), write_tif(tmp_path / "truth.tif", truth), pred, truth


def test_tiler_score_uses_the_jobs_boundary_default_not_a_fraction_of_the_diagonal(tmp_path: Path) -> None:
    from tiler.config.schema import ScoringConfig

    truth = scene((300, 400), 3, seed=0)  # 2 % of this diagonal would be 10 px
    pred = np.where(np.random.default_rng(1).random(truth.shape) < 0.9, truth, 2).astype(np.uint8)
    out = tmp_path / "score.json"
    assert run_cli(["score", str(write_tif(tmp_path / "p.tif", pred)), str(write_tif(tmp_path / "t.tif", truth)),
                    "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["boundary_width"] == ScoringConfig().boundary_width == 3


def test_cli_on_geotiffs_writes_json_with_all_keys_and_two_pngs(tif_pair, tmp_path: Path, capsys) -> None:
    pred_path, truth_path, pred, truth = tif_pair
    out = tmp_path / "out" / "score.json"
    rc = run_cli(["score", str(pred_path), str(truth_path), "--num-classes", "4", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert JSON_KEYS <= set(report)
    expected = scores_from_confusion(confusion_matrix(truth, pred, num_classes=4))
    assert report["fwiou"] == pytest.approx(expected.fwiou, abs=1e-12)
    assert report["confusion_matrix"] == expected.confusion_matrix.tolist()
    assert report["ignored_pixels"] == 5 * 120
    assert report["boundary_width"] == 3  # the job's default, scoring.boundary_width
    assert len(report["boundary_iou"]) == 4 and len(report["boundary_f1"]) == 4
    for png in ("score.confusion.png", "score.per_class.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "FWIoU" in printed and "mean IoU" in printed


def test_cli_quiet_without_boundary_prints_nothing(tif_pair, capsys) -> None:
    pred_path, truth_path, _, _ = tif_pair
    assert run_cli(["score", str(pred_path), str(truth_path), "--boundary-width", "0", "--quiet"]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--quiet", "score"], id="tiler --quiet score"),
        pytest.param(["score", "--quiet"], id="score --quiet"),
    ],
)
def test_quiet_through_the_tiler_cli(tif_pair, argv: list[str], capsys) -> None:
    from tiler.cli import main

    pred_path, truth_path, _, _ = tif_pair
    assert main([*argv, str(pred_path), str(truth_path), "--boundary-width", "0"]) == 0
    assert capsys.readouterr().out == ""


def test_num_classes_is_inferred_and_pred_nodata_counts_as_no_prediction(tmp_path: Path) -> None:
    truth = scene((40, 40), 3, seed=2)
    pred = truth.copy()
    pred[:4, :] = 200
    p = write_tif(tmp_path / "p.tif", pred, nodata=200)
    t = write_tif(tmp_path / "t.tif", truth)
    scores, details = score_paths(str(p), str(t), boundary_width=None)
    assert scores.num_classes == 3
    assert scores.no_prediction_pixels == 160 and details["prediction_nodata"] == 200
    assert scores.confusion_matrix.shape == (3, 4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"crs": "EPSG:4326"}, r"has CRS .* but truth .* has CRS", id="crs"),
        pytest.param(
            {"transform": from_origin(500030.0, 4200000.0, 30.0, 30.0)},
            r"has transform .* but truth",
            id="transform",
        ),
    ],
)
def test_georeferencing_mismatch_is_a_score_error_naming_both_files(tmp_path: Path, change: dict,
                                                                    message: str, capsys) -> None:
    labels = scene((40, 50), 3, seed=3)
    p = write_tif(tmp_path / "p.tif", labels, **change)
    t = write_tif(tmp_path / "t.tif", labels)
    with pytest.raises(ScoreError, match=message) as info:
        check_compatible(open_labels(p), open_labels(t))
    assert str(p) in str(info.value) and str(t) in str(info.value)
    assert run_cli(["score", str(p), str(t)]) == 2
    assert "tiler score: error: ScoreError:" in capsys.readouterr().err


def test_shape_mismatch_is_a_score_error(tmp_path: Path) -> None:
    p = write_tif(tmp_path / "p.tif", scene((40, 50), 3, seed=3))
    t = write_tif(tmp_path / "t.tif", scene((40, 52), 3, seed=3))
    with pytest.raises(ScoreError, match=r"has shape \(40, 50\) but truth .* has shape \(40, 52\)"):
        score_paths(str(p), str(t))


def test_all_ignored_truth_is_a_score_error(tmp_path: Path) -> None:
    p = write_tif(tmp_path / "p.tif", np.zeros((20, 20), np.uint8))
    t = write_tif(tmp_path / "t.tif", np.full((20, 20), 255, np.uint8))
    with pytest.raises(ScoreError, match=r"all 400 pixels are ignored"):
        score_paths(str(p), str(t), num_classes=2)


def test_prediction_label_out_of_range_names_file_and_flag(tmp_path: Path) -> None:
    pred = np.zeros((20, 20), np.uint8)
    pred[3, 3] = 9
    p = write_tif(tmp_path / "p.tif", pred)
    t = write_tif(tmp_path / "t.tif", np.zeros((20, 20), np.uint8))
    with pytest.raises(ScoreError, match=r"p\.tif against .*t\.tif.*\[9\].*--num-classes 10"):
        score_paths(str(p), str(t), num_classes=3)


def test_engine_store_against_zarr_array_and_nifti_volumes(tmp_path: Path) -> None:
    truth = scene((12, 30, 34), 3, seed=5)
    pred = np.where(np.random.default_rng(6).random(truth.shape) < 0.8, truth, 0).astype(np.uint8)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    # NIfTI stores (i, j, k) = (x, y, z): the reversed (D, H, W) order.
    nib.save(nib.Nifti1Image(truth.transpose(2, 1, 0).copy(), affine), tmp_path / "truth.nii")
    nib.save(nib.Nifti1Image(pred.transpose(2, 1, 0).copy(), affine), tmp_path / "pred.nii")
    store = zarr.open_group(tmp_path / "out.zarr", mode="w")
    store.attrs.update({"num_classes": 3, "nodata_label": 255, "class_names": ["bg", "a", "b"],
                        "georef": {"kind": "volume", "affine": affine.tolist()}})
    labels = store.create_array("labels", shape=pred.shape, chunks=(4, 16, 16), dtype="uint8", fill_value=255)
    labels[...] = pred
    expected = scores_from_confusion(confusion_matrix(truth, pred, num_classes=3))
    from_nifti, _ = score_paths(str(tmp_path / "pred.nii"), str(tmp_path / "truth.nii"), num_classes=3)
    from_store, _ = score_paths(str(tmp_path / "out.zarr"), str(tmp_path / "truth.nii"))
    assert from_nifti.fwiou == pytest.approx(expected.fwiou, abs=1e-12)
    assert from_store.fwiou == pytest.approx(expected.fwiou, abs=1e-12)
    assert from_store.class_names == ("bg", "a", "b")
    assert from_store.boundary_iou == from_nifti.boundary_iou
    bad = np.diag([2.0, 2.0, 2.5, 1.0])
    nib.save(nib.Nifti1Image(truth.transpose(2, 1, 0).copy(), bad), tmp_path / "moved.nii")
    with pytest.raises(ScoreError, match=r"has affine .* but truth .*moved\.nii"):
        score_paths(str(tmp_path / "out.zarr"), str(tmp_path / "moved.nii"))


def test_engine_output_store_against_geotiff_truth(tmp_path: Path) -> None:
    from tiler.geometry import Window
    from tiler.io import open_reader
    from tiler.io.store import OutputStore

    truth = scene((64, 96), 3, seed=8)
    pred = truth.copy()
    pred[:, :10] = 255  # the store's nodata label: no prediction there
    t = write_tif(tmp_path / "truth.tif", truth)
    georef = open_reader(t).georef
    store = OutputStore.create(
        tmp_path / "out.zarr", shape=truth.shape, num_classes=3, chunks=(32, 32), nodata_label=255,
        attrs={"georef": georef, "class_names": ["water", "land", "roof"]}, pixels_hash="abc",
    )
    store.write_block(Window((0, 0), truth.shape), pred)
    scores, details = score_paths(str(tmp_path / "out.zarr"), str(t), boundary_width=None)
    assert scores.num_classes == 3 and scores.class_names == ("water", "land", "roof")
    assert scores.no_prediction_pixels == 64 * 10 and details["notes"] == []
    expected = scores_from_confusion(confusion_matrix(truth, pred, num_classes=3, pred_nodata=255))
    assert scores.fwiou == pytest.approx(expected.fwiou, abs=1e-12)
    moved = write_tif(tmp_path / "moved.tif", truth, transform=from_origin(500000.0, 4200030.0, 30.0, 30.0))
    with pytest.raises(ScoreError, match=r"out\.zarr has transform .* but truth .*moved\.tif"):
        score_paths(str(tmp_path / "out.zarr"), str(moved))


def test_real_multiband_landsat_is_not_a_label_map() -> None:
    rgb = str(SHARED_DATA / "RGB.byte.tif")  # 3 bands, uint8, EPSG:32618
    with pytest.raises(InputError, match=r"RGB\.byte\.tif has 3 bands/channels; a label map has exactly one"):
        score_paths(rgb, rgb)


def test_real_big_endian_mri_scored_against_itself(tmp_path: Path) -> None:
    # anatomical.nii: big-endian int16 MRI; thresholded into 3 classes it is a real label volume.
    image = nib.load(str(SHARED_DATA / "anatomical.nii"))
    labels = np.digitize(np.asarray(image.dataobj), [50, 150]).astype(np.int16)
    nib.save(nib.Nifti1Image(labels, image.affine), tmp_path / "labels.nii")
    scores, _ = score_paths(str(tmp_path / "labels.nii"), str(tmp_path / "labels.nii"), num_classes=3)
    assert scores.fwiou == 1.0 and scores.scored_pixels == 33 * 41 * 25
    assert scores.boundary_iou is not None and all(v in (None, 1.0) for v in scores.boundary_iou)


def test_score_json_and_ledger_share_one_sanitiser(tmp_path: Path) -> None:
    from tiler.archive import ledger
    from tiler.archive import report as archive_report
    from tiler.jsonsafe import json_safe
    from tiler.metrics.report import write_json

    payload = {"fwiou": np.float64(0.25), "per_class_iou": (np.float32(0.5), float("nan")), "cm": np.eye(2, dtype=int)}
    write_json(payload, tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text()) == {"fwiou": 0.25, "per_class_iou": [0.5, None],
                                                             "cm": [[1, 0], [0, 1]]}
    assert ledger.json_safe is archive_report.json_safe is json_safe


@pytest.mark.parametrize("declared", [False, True], ids=["nan-undeclared", "nan-is-nodata"])
def test_a_truth_with_nan_is_refused_unless_nan_is_its_nodata(tmp_path: Path, capsys, declared: bool) -> None:
    truth = scene((64, 64), 2, seed=0).astype(np.float32)
    truth[5:10, 5:10] = np.nan
    path = tmp_path / "t.tif"
    with rasterio.open(path, "w", driver="GTiff", height=64, width=64, count=1, dtype="float32", crs="EPSG:32618",
                       transform=TRANSFORM, nodata=float("nan") if declared else None) as dst:
        dst.write(truth, 1)
    pred = write_tif(tmp_path / "p.tif", np.nan_to_num(truth, nan=0).astype(np.uint8))
    out = tmp_path / "s.json"
    rc = run_cli(["score", str(pred), str(path), "--num-classes", "2", "--json", str(out)])
    if declared:  # the file says NaN means "no truth": those pixels are ignored, the rest scored
        assert rc == 0 and json.loads(out.read_text())["ignored_pixels"] == 25
    else:  # a NaN is no class: never counted as class 0
        assert rc == 2 and "[nan]" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("kind", ["cog", "nifti"])
def test_scoring_an_exported_file_keeps_its_class_names_and_leaves_background_out_of_the_foreground(
    tmp_path: Path, kind: str
) -> None:
    from tiler.io.export import aux_path, label_table_paths, write_class_table_aux, write_itksnap_labels

    names, colors = ["background", "forest", "water"], [[0, 0, 0], [30, 140, 40], [20, 80, 220]]
    truth = scene((48, 64), 3, seed=0)
    pred = np.where(np.random.default_rng(1).random(truth.shape) < 0.9, truth, 2).astype(np.uint8)
    if kind == "cog":
        pred_path, truth_path = write_tif(tmp_path / "x.cog.tif", pred), write_tif(tmp_path / "t.tif", truth)
        write_class_table_aux(aux_path(pred_path), names, colors)  # what export_cog writes beside the COG
    else:
        pred_path, truth_path = tmp_path / "x.nii.gz", tmp_path / "t.nii.gz"
        nib.save(nib.Nifti1Image(pred.T[..., None], np.eye(4)), str(pred_path))
        nib.save(nib.Nifti1Image(truth.T[..., None], np.eye(4)), str(truth_path))
        write_itksnap_labels(label_table_paths(pred_path)["itksnap"], names, colors, nodata_label=255)
    out = tmp_path / "s.json"
    assert run_cli(["score", str(pred_path), str(truth_path), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["class_names"] == names and report["num_classes"] == 3
    assert report["foreground_classes"] == [1, 2]  # "background" (class 0) is not foreground
