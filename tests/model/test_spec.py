from __future__ import annotations

import numpy as np
import pytest
import torch

from tiler.errors import ModelError
from tiler.model.normalize import Normalization
from tiler.model.spec import ModelSpec, build_network


@pytest.mark.parametrize(
    ("arch", "dims", "shape"),
    [
        pytest.param("UNet", 2, (32, 32), id="unet-2d"),
        pytest.param("UNet", 3, (16, 16, 16), id="unet-3d"),
        pytest.param("BasicUNet", 2, (32, 32), id="basicunet-2d"),
        pytest.param("DynUNet", 2, (32, 32), id="dynunet-2d"),
    ],
)
def test_build_network_gives_one_channel_per_class(arch, dims, shape):
    spec = ModelSpec(arch, dims, 3, 4)
    net = build_network(spec).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 3, *shape))
    assert tuple(out.shape) == (2, 4, *shape)


def test_spec_round_trips_through_plain_types():
    spec = ModelSpec("UNet", 2, 4, 6, {"channels": (8, 16), "strides": (2,), "num_res_units": 0})
    plain = spec.to_dict()
    assert plain["args"]["channels"] == [8, 16]
    assert ModelSpec.from_dict(plain) == spec
    assert spec.size_multiple == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param(
            {"architecture": "ResNet"},
            r"architecture='ResNet' is unknown; choose one of \['AHNet', 'AttentionUnet', 'BasicUNet'",
            id="arch",
        ),
        pytest.param({"spatial_dims": 4}, r"spatial_dims=4 is not supported; choose 2", id="dims"),
        pytest.param({"out_channels": 1}, r"out_channels=1 must be >= 2", id="one-class"),
        pytest.param({"in_channels": 0}, r"in_channels=0 must be a positive integer", id="no-bands"),
    ],
)
def test_bad_spec_is_refused_naming_key_and_choices(kwargs, match):
    base = {"architecture": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 3}
    base.update(kwargs)
    with pytest.raises(ModelError, match=match):
        ModelSpec(**base)


def test_monai_refusing_args_names_them():
    with pytest.raises(ModelError, match=r"MONAI UNet refused args=\{'bogus': 1\}"):
        build_network(ModelSpec("UNet", 2, 1, 2, {"bogus": 1}))


def test_spec_from_dict_names_unknown_and_missing_keys():
    with pytest.raises(ModelError, match=r"unknown key\(s\) \['layers'\]"):
        ModelSpec.from_dict(
            {"architecture": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2, "layers": 3}
        )
    with pytest.raises(ModelError, match=r"misses key\(s\) \['out_channels'\]"):
        ModelSpec.from_dict({"architecture": "UNet", "spatial_dims": 2, "in_channels": 1})


# ------------------------------------------------------------------ normalisation


def test_meanstd_is_per_channel_for_single_tile_and_batch():
    norm = Normalization("meanstd", mean=(10.0, 20.0), std=(2.0, 4.0))
    x = np.stack([np.full((3, 3), 12.0), np.full((3, 3), 28.0)])
    np.testing.assert_allclose(norm.apply(x), np.stack([np.ones((3, 3)), np.full((3, 3), 2.0)]))
    batch = np.stack([x, x])
    out = norm.apply(batch.astype(np.uint16), spatial_dims=2)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[1, 1], 2.0)


def test_fixed_percentiles_do_not_depend_on_tiling():
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 300.0, size=(3, 64, 64))
    norm = Normalization.fit([image], "percentile", percentiles=(2.0, 98.0))
    whole = norm.apply(image)
    tile = norm.apply(image[:, 10:30, 5:40])
    np.testing.assert_array_equal(tile, whole[:, 10:30, 5:40])
    assert whole.min() == 0.0 and whole.max() == 1.0


def test_window_clips_hounsfield_units_then_scales():
    norm = Normalization("window", window=(-100, 300))
    x = np.array([[[-1000, -100, 100, 300, 2000]]], dtype=np.int16)[None]  # (1, 1, 1, 5) a 3D tile
    np.testing.assert_allclose(norm.apply(x, spatial_dims=3)[0, 0, 0], [0, 0, 0.5, 1, 1])


def test_normalization_round_trips_and_refuses_bad_values():
    norm = Normalization.fit([np.arange(2 * 16, dtype=float).reshape(2, 4, 4)], "meanstd")
    assert Normalization.from_dict(norm.to_dict()) == norm
    with pytest.raises(ModelError, match=r"kind='zscore' is unknown"):
        Normalization("zscore")
    with pytest.raises(ModelError, match=r"kind='percentile' needs fixed low"):
        Normalization("percentile")
    with pytest.raises(ModelError, match=r"needs window=\(lo, hi\) with lo < hi"):
        Normalization("window", window=(5, 1))
    with pytest.raises(ModelError, match=r"has 2 values but the tiles have 3 channels"):
        Normalization("meanstd", mean=(0, 0), std=(1, 1)).apply(np.zeros((3, 4, 4)))
    with pytest.raises(ModelError, match=r"ambiguous .* pass spatial_dims"):
        Normalization("meanstd", mean=(0, 0), std=(1, 1)).apply(np.zeros((2, 2, 4, 4)))
