from __future__ import annotations

import numpy as np
import pytest

from tiler.errors import ConfigError, GeometryError
from tiler.geometry import Window
from tiler.scenes import SceneSpec, ct_scene, make_scene, satellite_scene, slide_scene

SCENES = [
    pytest.param(lambda seed: satellite_scene((300, 340), seed=seed), id="satellite"),
    pytest.param(lambda seed: ct_scene((20, 72, 80), seed=seed), id="ct"),
    pytest.param(lambda seed: slide_scene((300, 280), seed=seed), id="slide"),
]


@pytest.mark.parametrize("factory", SCENES)
def test_same_seed_gives_same_scene_and_other_seed_differs(factory):
    a_img, a_lab = factory(3).read()
    b_img, b_lab = factory(3).read()
    c_img, _ = factory(4).read()
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)


@pytest.mark.parametrize("factory", SCENES)
def test_pixel_is_identical_through_any_window(factory):
    scene = factory(1)
    full_img, full_lab = scene.read()
    nd = len(scene.shape)
    # Two overlapping windows with unaligned starts, crossing noise-cell borders (256 px in 2D, 64 in 3D).
    for start in [(1,) * nd, tuple(s // 3 for s in scene.shape)]:
        stop = tuple(min(n, a + n // 2 + 7) for a, n in zip(start, scene.shape, strict=True))
        win = Window(start, stop)
        img, lab = scene.read(win)
        np.testing.assert_array_equal(img, full_img[(slice(None), *win.slices)])
        np.testing.assert_array_equal(lab, full_lab[win.slices])


@pytest.mark.parametrize("factory", SCENES)
def test_read_gives_declared_dtype_shape_and_classes(factory):
    scene = factory(0)
    img, lab = scene.read()
    assert img.dtype == scene.dtype
    assert img.shape == (scene.channels, *scene.shape)
    assert lab.dtype == np.uint8 and lab.shape == scene.shape
    assert scene.num_classes == len(scene.class_names) == len(scene.class_colors)
    valid = lab[lab != scene.nodata_label]
    assert valid.max() < scene.num_classes


def test_larger_scenes_hold_every_class():
    sat = satellite_scene((1024, 1024), seed=0)
    _, lab = sat.read()
    assert sat.num_classes >= 5 and sat.channels >= 4
    assert set(np.unique(lab[lab != 255]).tolist()) == set(range(sat.num_classes))
    ct = ct_scene((32, 96, 96), seed=0)
    img, lab = ct.read()
    assert set(np.unique(lab).tolist()) == set(range(ct.num_classes))
    assert img.min() <= -990 and ct.spacing == (2.5, 0.8, 0.8)
    _, lab = slide_scene((512, 512), seed=0).read()
    assert set(np.unique(lab).tolist()) == {0, 1, 2}


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_satellite_nodata_collar_is_zero_in_every_band_and_255_in_truth(seed):
    scene = satellite_scene((256, 256), seed=seed)
    img, lab = scene.read()
    nodata = lab == 255
    assert 0.02 < nodata.mean() < 0.4
    assert nodata[0, 0] or nodata[0, -1] or nodata[-1, 0] or nodata[-1, -1]
    np.testing.assert_array_equal(img[:, nodata], 0)
    assert (img[:, ~nodata] > 0).all()
    assert scene.image_nodata == 0


@pytest.mark.parametrize("seed", range(6))
def test_slide_tissue_covers_at_most_40_percent(seed):
    scene = slide_scene((400, 400), seed=seed, mpp=0.25)
    _, lab = scene.read()
    assert 0.05 < (lab > 0).mean() <= 0.40
    assert scene.mpp == 0.25 and scene.image_nodata is None


def test_window_outside_scene_is_refused():
    scene = satellite_scene((64, 64))
    with pytest.raises(GeometryError, match="does not lie inside the scene"):
        scene.read(Window((60, 0), (70, 10)))


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        pytest.param(SceneSpec("mars", (8, 8)), "kind='mars' is unknown", id="kind"),
        pytest.param(SceneSpec("ct", (8, 8)), "give 3 positive sizes", id="ct-2d"),
        pytest.param(SceneSpec("satellite", (8, 8), 0, {"bands": 2}), "bands=2", id="bands"),
    ],
)
def test_bad_scene_specs_are_refused(spec, match):
    with pytest.raises(ConfigError, match=match):
        make_scene(spec)
