"""nnU-Net v2 results folders: ``tiler run`` against nnU-Net's own predictor, its rules, and the refusals.

The reference is nnunetv2 itself (a test dependency): its ``nnUNetPredictor`` on the same NIfTI, its
``compute_steps_for_sliding_window``, ``compute_gaussian`` and normalisation classes. Folders are written
as nnU-Net writes them (:mod:`tests.model.nnunet_helpers`). Labels agree on ≥ 99.9 % of voxels; the rest
are voxels whose two best classes nnU-Net's float16 sums cannot tell apart.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.model.nnunet_helpers import (
    CT_PROPERTIES,
    ct_volume,
    make_plans,
    nnunet_labels,
    write_checkpoint,
    write_job,
    write_nifti,
    write_results,
)
from tests.model.sources_helpers import run_tiler
from tiler.blend import BlendMode, window_weights
from tiler.errors import ConfigError, InputError, ModelError
from tiler.geometry import StepRule, TileGrid, Window, axis_starts
from tiler.model import load_model
from tiler.model.sources.detect import detect_source, resolve_source
from tiler.model.sources.nnunet import ResultsFolder, expected_tiling, measure
from tiler.model.sources.nnunet.ensemble import NnunetEnsemble, embed_logits, mirror_combinations
from tiler.model.sources.nnunet.intensity import normalization

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/model/conftest.py

MIN_AGREEMENT = 0.999
SPACING = (2.5, 0.8, 0.8)


# ---------------------------------------------------------------------------------------------- nnU-Net's rules


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "expected"),
    [
        pytest.param(110, 64, 32, (0, 23, 46), id="nnunet-docstring-example"),
        pytest.param(64, 64, 32, (0,), id="one-tile"),
        pytest.param(20, 64, 32, (0,), id="shorter-than-tile"),
        pytest.param(48, 32, 16, (0, 16), id="exact-step"),
        pytest.param(100, 32, 16, (0, 14, 27, 41, 54, 68), id="spread"),
    ],
)
def test_nnunet_step_rule_table(length: int, tile: int, overlap: int, expected: tuple[int, ...]) -> None:
    assert axis_starts(length, tile, overlap, StepRule.NNUNET) == expected


def test_nnunet_step_rule_is_nnunets_compute_steps() -> None:
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    for tile in range(2, 41, 2):
        for length in range(tile, 200):
            ours = axis_starts(length, tile, tile // 2, StepRule.NNUNET)
            assert list(ours) == compute_steps_for_sliding_window((length,), (tile,), 0.5)[0], (length, tile)
    for tile, fraction in ((40, 0.25), (40, 0.75), (64, 0.125), (30, 1.0)):  # other step fractions, whole steps
        for length in range(tile, 300, 7):
            ours = axis_starts(length, tile, tile - round(tile * fraction), StepRule.NNUNET)
            assert list(ours) == compute_steps_for_sliding_window((length,), (tile,), fraction)[0]


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 400), tile=st.integers(1, 64), data=st.data())
def test_nnunet_rule_starts_are_increasing_flush_and_at_most_one_step_apart(length: int, tile: int, data: Any) -> None:
    overlap = data.draw(st.integers(0, tile - 1))
    starts = axis_starts(length, tile, overlap, StepRule.NNUNET)
    assert starts[0] == 0 and starts[-1] == max(length, tile) - tile
    assert len(starts) == len(axis_starts(length, tile, overlap))
    assert all(0 < b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))


def test_both_rules_place_the_same_number_of_tiles() -> None:
    grids = [TileGrid((70, 100, 37), (16, 32, 32), (8, 16, 16), rule=rule) for rule in StepRule]
    assert grids[0].counts == grids[1].counts and grids[0].starts != grids[1].starts


@pytest.mark.parametrize(
    "tile", [(16, 32, 32), (80, 192, 160), (56, 224, 192), (7, 9, 12), (1, 32, 48), (32, 48), (3, 5)], ids=str
)
def test_nnunet_blend_is_nnunets_gaussian_bit_for_bit(tile: tuple[int, ...]) -> None:
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    patch = tile[1:] if tile[0] == 1 else tile  # a 2D patch on a volume: one slice thick
    theirs = compute_gaussian(patch, 1.0 / 8, 10, device=torch.device("cpu")).float().numpy().reshape(tile)
    np.testing.assert_array_equal(window_weights(BlendMode.NNUNET, tile, 0.125), theirs)


def test_mirror_combinations_are_nnunets() -> None:
    assert mirror_combinations((0, 1, 2)) == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert mirror_combinations(()) == [()]


# ---------------------------------------------------------------------------------------------- folders


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Results folders of both configurations with two folds each, and the CT they are run on."""
    base = tmp_path_factory.mktemp("nnunet")
    for configuration in ("3d_fullres", "2d"):
        write_results(base, configuration, folds=(0, 1))
    write_nifti(base / "case_0000.nii.gz", ct_volume(), SPACING)
    return base


def folder_of(root: Path, configuration: str) -> Path:
    return root / f"nnUNetTrainer__nnUNetPlans__{configuration}"


def copy_folder(root: Path, tmp_path: Path, configuration: str = "3d_fullres") -> Path:
    out = tmp_path / folder_of(root, configuration).name
    shutil.copytree(folder_of(root, configuration), out)
    return out


def edit_json(path: Path, edit: Any) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def nnunet_tiling(folder: Path, ndim: int = 3) -> dict[str, Any]:
    want = expected_tiling(ResultsFolder(folder), ndim)
    return {k: want[k] for k in ("tile", "overlap", "rule", "blend")}


def test_results_folder_is_detected_and_read(root: Path) -> None:
    folder = folder_of(root, "3d_fullres")
    assert detect_source(folder) == "nnunet" and resolve_source(folder, "auto") == "nnunet"
    results = ResultsFolder(folder)
    assert results.name == "3d_fullres" and [p.parent.name for p in results.folds] == ["fold_0", "fold_1"]
    assert results.labels == ("background", "organ", "lesion") and results.channel_names == ("CT",)
    loaded = load_model(folder)
    assert loaded.format == "nnunet" and loaded.num_classes == 3 and loaded.class_names == results.labels
    assert expected_tiling(results, 3) == {
        "tile": [16, 32, 32], "overlap": [8, 16, 16], "rule": "nnunet", "blend": "nnunet", "sigma_scale": 0.125,
    }  # fmt: skip
    assert expected_tiling(ResultsFolder(folder_of(root, "2d")), 3)["tile"] == [1, 32, 32]


def test_checkpoint_holds_numpy_scalars_that_weights_only_refuses_by_default(root: Path) -> None:
    path = folder_of(root, "3d_fullres") / "fold_0" / "checkpoint_final.pth"
    with pytest.raises(Exception, match="numpy"):  # what nnU-Net#2681 is about; tiler allows exactly these
        torch.load(path, weights_only=True)
    from tiler.model.sources.nnunet.weights import read_checkpoint

    checkpoint = read_checkpoint(path)
    assert checkpoint.mirror_axes == (0, 1, 2) and checkpoint.configuration == "3d_fullres"


def test_checkpoint_written_under_numpy_1_reads_too(tmp_path: Path) -> None:
    import io
    import zipfile

    from tiler.model.sources.nnunet.weights import read_checkpoint

    buffer = io.BytesIO()
    torch.save({"network_weights": {"w": torch.ones(2)}, "_best_ema": np.float64(0.5)}, buffer)
    path = tmp_path / "old.pth"
    renamed = False
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():  # numpy 1 pickled its scalars as numpy.core.multiarray.scalar
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                old = data
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
                renamed = data != old
            zout.writestr(info, data)
    assert renamed
    assert read_checkpoint(path).weights["w"].tolist() == [1.0, 1.0]


# ---------------------------------------------------------------------------------------------- against nnU-Net


@pytest.mark.parametrize(
    ("configuration", "folds", "mirroring"),
    [
        pytest.param("3d_fullres", (0,), True, id="3d-one-fold-mirrored"),
        pytest.param("3d_fullres", (0, 1), False, id="3d-two-folds"),
        pytest.param("2d", (0,), False, id="2d-one-fold"),
        pytest.param("2d", (0, 1), True, id="2d-two-folds-mirrored"),
    ],
)
def test_tiler_run_gives_nnunets_labels(
    root: Path, tmp_path: Path, configuration: str, folds: tuple[int, ...], mirroring: bool
) -> None:
    folder, image = folder_of(root, configuration), root / "case_0000.nii.gz"
    expected = nnunet_labels(folder, [image], folds=folds, mirroring=mirroring)
    settings = {"folds": list(folds), "mirroring": mirroring}
    labels = run_tiler(write_job(tmp_path, folder, image, tiling=nnunet_tiling(folder), nnunet=settings))
    assert np.bincount(expected.ravel(), minlength=3).min() > 0.05 * expected.size, "every class must show"
    assert float((labels == expected).mean()) >= MIN_AGREEMENT
    if configuration == "3d_fullres" and len(folds) == 2:  # partition invariance under nnU-Net's rule
        other = write_job(tmp_path, folder, image, tiling=nnunet_tiling(folder), nnunet=settings, block=(16, 16, 16),
                          name="small-blocks")  # fmt: skip
        np.testing.assert_array_equal(run_tiler(other), labels)


@pytest.mark.parametrize(("configuration", "mirroring"), [("3d_fullres", False), ("2d", True)])
def test_transposed_plans_give_nnunets_labels(tmp_path: Path, configuration: str, mirroring: bool) -> None:
    spacing = (0.8, 0.8, 2.5)  # the coarse axis last: nnU-Net transposes it first (transpose_forward [2, 0, 1])
    plans = make_plans(spacing=spacing, transpose_forward=(2, 0, 1))
    folder = write_results(tmp_path, configuration, plans=plans)
    image = write_nifti(tmp_path / "case_0000.nii.gz", np.ascontiguousarray(ct_volume().transpose(1, 2, 0)), spacing)
    tiling = nnunet_tiling(folder)
    assert tiling["tile"] == ([32, 32, 16] if configuration == "3d_fullres" else [32, 32, 1])
    expected = nnunet_labels(folder, [image], folds=(0,), mirroring=mirroring)
    job = write_job(tmp_path, folder, image, tiling=tiling, nnunet={"mirroring": mirroring}, block=(48, 48, 32))
    labels = run_tiler(job)
    assert float((labels == expected).mean()) >= MIN_AGREEMENT


def test_zscore_channel_uses_the_images_own_statistics(tmp_path: Path) -> None:
    plans = make_plans(spacing=SPACING, schemes=("CTNormalization", "ZScoreNormalization"))
    folder = write_results(tmp_path, "3d_fullres", plans=plans, channels=("CT", "MR"))
    ct = ct_volume()
    mr = (ct.astype(np.float32) * 0.7 + 300).astype(np.float32)  # another contrast of the same anatomy
    files = [write_nifti(tmp_path / "case_0000.nii.gz", ct, SPACING), write_nifti(tmp_path / "case_0001.nii.gz", mr,
                                                                                  SPACING)]  # fmt: skip
    stacked = write_nifti(tmp_path / "case.nii.gz", np.stack([ct.astype(np.float32), mr]), SPACING)
    expected = nnunet_labels(folder, files, folds=(0,), mirroring=False)
    job = write_job(tmp_path, folder, stacked, tiling=nnunet_tiling(folder), nnunet={"mirroring": False},
                    channels_from_4d=True)  # fmt: skip
    assert float((run_tiler(job) == expected).mean()) >= MIN_AGREEMENT


def test_2d_image_with_a_2d_configuration_gives_nnunets_labels(tmp_path: Path) -> None:
    import rasterio
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    plans = make_plans(spacing=(999.0, 1.0, 1.0))  # nnU-Net's spacing of a 2D image, read as (1, y, x)
    plans["image_reader_writer"] = "NaturalImage2DIO"
    folder = write_results(tmp_path, "2d", plans=plans)
    image = ct_volume(shape=(1, 64, 80))[0].astype(np.float32)
    path = tmp_path / "slice.tif"
    with rasterio.open(path, "w", driver="GTiff", width=80, height=64, count=1, dtype="float32",
                       transform=rasterio.transform.from_origin(0, 64, 1, 1)) as dst:  # fmt: skip
        dst.write(image[None])
    predictor = nnUNetPredictor(use_mirroring=True, perform_everything_on_device=False, device=torch.device("cpu"),
                                allow_tqdm=False)  # fmt: skip
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
    expected = predictor.predict_single_npy_array(image[None, None], {"spacing": [999.0, 1.0, 1.0]}, None, None, False)
    tiling = nnunet_tiling(folder, ndim=2)
    assert tiling["tile"] == [32, 32]
    job = write_job(tmp_path, folder, path, tiling=tiling, block=(32, 32))
    assert float((run_tiler(job) == np.asarray(expected)[0]).mean()) >= MIN_AGREEMENT


# ---------------------------------------------------------------------------------------------- pieces


def test_normalisation_is_nnunets_per_channel() -> None:
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import (
        CTNormalization,
        NoNormalization,
        RGBTo01Normalization,
        ZScoreNormalization,
    )

    rng = np.random.default_rng(0)
    image = rng.normal(50, 300, size=(4, 6, 20, 24)).astype(np.float32)
    image[3] = rng.integers(0, 256, size=image.shape[1:])
    classes = (CTNormalization, ZScoreNormalization, NoNormalization, RGBTo01Normalization)
    expected = np.stack([cls(False, CT_PROPERTIES).run(image[c].copy()) for c, cls in enumerate(classes)])

    class Reader:
        shape, channels, dtype, path = image.shape[1:], 4, image.dtype, "in-memory"

        def read(self, window: Window) -> np.ndarray:
            return image[(slice(None), *window.slices)]

    stats = measure(Reader()).stats
    results = type("R", (), {})()
    results.configuration = {"normalization_schemes": [c.__name__ for c in classes], "use_mask_for_norm": [False] * 4}
    results.plans = {"foreground_intensity_properties_per_channel": {str(c): CT_PROPERTIES for c in range(4)}}
    results.plans_path = results.source = "plans"
    norm = normalization(results, channels=4, image_stats=stats)  # type: ignore[arg-type]
    ours = norm.apply(image[None], spatial_dims=3)[0]
    np.testing.assert_array_equal(ours[[0, 2, 3]], expected[[0, 2, 3]])  # fixed statistics: bit for bit
    np.testing.assert_allclose(ours[1], expected[1], rtol=0, atol=2e-6)  # float64 vs float32 image statistics


def test_measure_reads_slab_by_slab_like_the_whole_array(monkeypatch: pytest.MonkeyPatch) -> None:
    from tiler.model.sources.nnunet import intensity

    rng = np.random.default_rng(1)
    image = np.zeros((2, 30, 20, 16), dtype=np.int16)
    image[:, 3:27, 2:20, 5:11] = rng.integers(-100, 100, size=(2, 24, 18, 6))

    class Reader:
        shape, channels, dtype, path = image.shape[1:], 2, image.dtype, "in-memory"

        def read(self, window: Window) -> np.ndarray:
            return image[(slice(None), *window.slices)]

    monkeypatch.setattr(intensity, "_SLAB_BYTES", 3 * 2 * 20 * 16 * 2)  # three slices per read
    facts = measure(Reader())
    assert facts.nonzero == Window((3, 2, 5), (27, 20, 11))
    flat = image.reshape(2, -1).astype(np.float64)
    np.testing.assert_allclose(facts.mean, flat.mean(1), rtol=1e-12)
    np.testing.assert_allclose(facts.std, flat.std(1), rtol=1e-12)


def test_logits_embedding_blends_like_logits() -> None:
    rng = np.random.default_rng(2)
    logits = torch.from_numpy(rng.normal(0, 5, size=(6, 4, 50)).astype(np.float32))  # 6 tiles, 4 classes
    weights = torch.from_numpy(rng.uniform(0.01, 10, size=(6, 1, 50)).astype(np.float32))
    q = embed_logits(logits).softmax(1)
    np.testing.assert_allclose(q.sum(1).numpy(), 1, rtol=1e-6)
    assert torch.equal((weights * q).sum(0).argmax(0), (weights * logits).sum(0).argmax(0))


@pytest.mark.parametrize("average", ["logits", "probabilities"])
def test_ensemble_averages_folds_and_mirrors(average: str) -> None:
    torch.manual_seed(0)
    nets = [torch.nn.Conv3d(1, 3, 3, padding=1) for _ in range(2)]
    x = torch.randn(2, 1, 4, 6, 8)
    ensemble = NnunetEnsemble(nets, in_channels=1, transpose_forward=(0, 1, 2), planar=False, mirror_axes=(1, 2),
                              average=average)  # fmt: skip
    outs = [net(x.flip(d)).flip(d) if d else net(x) for net in nets for d in ((), (3,), (4,), (3, 4))]
    with torch.no_grad():
        got = ensemble(x).softmax(1)
        if average == "probabilities":
            want = torch.stack([o.softmax(1) for o in outs]).mean(0)
        else:
            want = embed_logits(torch.stack(outs).mean(0)).softmax(1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- refusals


class _Pickled:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.marker,))


def test_checkpoint_with_a_pickle_payload_is_refused_and_never_runs(root: Path, tmp_path: Path) -> None:
    folder = copy_folder(root, tmp_path)
    marker = tmp_path / "payload-ran"
    path = folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, weights_only=False)  # a trusted file of our own
    checkpoint["logging"] = {"train_losses": [_Pickled(str(marker))]}
    torch.save(checkpoint, path)
    with pytest.raises(ModelError, match=r"key 'logging' holds a pickled posix\.mkdir"):
        load_model(folder, nnunet={"folds": ["0"]})
    assert not marker.exists()
    torch.load(path, weights_only=False)  # control: nnU-Net's own loading (weights_only=False) runs it
    assert marker.exists()


def write_payload_module(tmp_path: Path, marker: Path) -> str:
    (tmp_path / "tiler_test_payload.py").write_text(
        f"import os\nos.mkdir({str(marker)!r})\n\nclass Net:\n    def __init__(self, **kwargs):\n        pass\n"
    )
    return "tiler_test_payload.Net"


@pytest.mark.parametrize("where", ["network_class_name", "nonlin"])
def test_plans_naming_an_unknown_class_are_refused_and_never_import_it(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    marker = tmp_path / "payload-ran"
    name = write_payload_module(tmp_path, marker)
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = copy_folder(root, tmp_path)

    def edit(plans: dict[str, Any]) -> None:
        arch = plans["configurations"]["3d_fullres"]["architecture"]
        if where == "network_class_name":
            arch["network_class_name"] = name
        else:
            arch["arch_kwargs"]["nonlin"] = name

    edit_json(folder / "plans.json", edit)
    key = "architecture.network_class_name" if where == "network_class_name" else "architecture.arch_kwargs.nonlin"
    with pytest.raises(ModelError, match=rf"{key} is 'tiler_test_payload.Net', refused"):
        load_model(folder)
    assert not marker.exists() and "tiler_test_payload" not in sys.modules
    # Control: nnU-Net's own network building locates the name (pydoc.locate), importing the module.
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]["architecture"]
    with contextlib.suppress(Exception):  # building may fail after the import; only the import matters
        get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 3)
    assert marker.exists()
    sys.modules.pop("tiler_test_payload", None)


def _plans(edit: Any) -> Any:
    return lambda folder: edit_json(folder / "plans.json", edit)


def _conf(key: str, value: Any) -> Any:
    return _plans(lambda p: p["configurations"]["3d_fullres"].__setitem__(key, value))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        pytest.param(_conf("normalization_schemes", ["RescaleTo01Normalization"]),
                     r"normalization_schemes\[0\] is 'RescaleTo01Normalization'", id="unknown-normalisation"),
        pytest.param(_plans(lambda p: p["configurations"]["3d_fullres"].update(
            normalization_schemes=["ZScoreNormalization"], use_mask_for_norm=[True])),
                     r"use_mask_for_norm=true.* Refused", id="zscore-with-mask"),
        pytest.param(_conf("previous_stage", "3d_lowres"), r"is a cascade stage", id="cascade"),
        pytest.param(lambda f: edit_json(f / "dataset.json", lambda d: d["labels"].update(organ=[1, 2], lesion=2)),
                     r"region-based nnU-Net models are refused", id="regions"),
        pytest.param(lambda f: edit_json(f / "dataset.json", lambda d: d["labels"].update(lesion=3)),
                     r"label values \[0, 1, 3\] are not 0..2", id="labels-with-a-gap"),
        pytest.param(_plans(lambda p: p.update(image_reader_writer="TiffIO")), r"image_reader_writer='TiffIO'",
                     id="other-reader"),
        pytest.param(_conf("architecture", {"network_class_name": "PlainConvUNet", "arch_kwargs": {"n_stages": 3},
                                            "_kw_requires_import": ["conv_op"]}),
                     r"_kw_requires_import names 'conv_op', which arch_kwargs lacks", id="missing-import-key"),
    ],  # fmt: skip
)
def test_folders_tiler_cannot_run_exactly_are_refused(root: Path, tmp_path: Path, change: Any, match: str) -> None:
    folder = copy_folder(root, tmp_path)
    change(folder)
    with pytest.raises(ModelError, match=match):
        load_model(folder)


@pytest.mark.parametrize(
    ("setup", "error", "match"),
    [
        pytest.param({"tiling": {"tile": [32, 32, 32], "overlap": [8, 8, 8], "rule": "overlap", "blend": "gaussian"}},
                     ConfigError, r"--set tiling.tile=\[16,32,32\] --set tiling.overlap=\[8,16,16\] --set "
                     r"tiling.rule=nnunet --set tiling.blend=nnunet", id="tiling"),
        pytest.param({"tta_flips": [[0]]}, ConfigError, r"tta_flips=\[\[0\]\] does not apply", id="tta-flips"),
        pytest.param({"probabilities": "float16"}, ConfigError, r"average: logits", id="probabilities-with-logits"),
        pytest.param({"channels": 2}, InputError, r"gives 2 channel\(s\) but nnU-Net model .* reads 1", id="channels"),
    ],  # fmt: skip
)
def test_inputs_nnunet_would_treat_differently_are_refused_before_anything_runs(
    root: Path, tmp_path: Path, setup: dict[str, Any], error: type[Exception], match: str
) -> None:
    from tiler.config import load_config
    from tiler.job.refs import model_ref

    folder = folder_of(root, "3d_fullres")
    volume = ct_volume()
    if setup.get("channels"):
        volume = np.stack([volume, volume])
    image = write_nifti(tmp_path / "case.nii.gz", volume, setup.get("spacing", SPACING))
    job = write_job(tmp_path, folder, image, tiling=setup.get("tiling") or nnunet_tiling(folder),
                    channels_from_4d="channels" in setup)  # fmt: skip
    overrides = []
    if "tta_flips" in setup:
        overrides.append(f"model.tta_flips={json.dumps(setup['tta_flips'])}")
    if "probabilities" in setup:
        overrides.append(f"output.probabilities={setup['probabilities']}")
    with pytest.raises(error, match=match):
        model_ref(load_config(job, overrides))
    assert not (tmp_path / "out.zarr").exists()


def test_checkpoint_of_another_configuration_is_refused(root: Path, tmp_path: Path) -> None:
    folder = copy_folder(root, tmp_path)
    plans = json.loads((folder / "plans.json").read_text())
    dataset = json.loads((folder / "dataset.json").read_text())
    write_checkpoint(folder / "fold_0" / "checkpoint_final.pth", copy.deepcopy(plans), dataset, "2d", 0, seed=0)
    with pytest.raises(ModelError, match=r"trained as configuration '2d', not '3d_fullres'"):
        load_model(folder, nnunet={"folds": ["0"]})


def test_store_records_the_nnunet_settings(root: Path, tmp_path: Path) -> None:
    folder, image = folder_of(root, "2d"), root / "case_0000.nii.gz"
    job = write_job(tmp_path, folder, image, tiling=nnunet_tiling(folder), nnunet={"folds": [1], "mirroring": False})
    run_tiler(job)
    config = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["config"]
    assert config["model"]["nnunet"]["folds"] == [1] and config["tiling"]["rule"] == "nnunet"
