"""Generated scenes written to files: tiled compressed GeoTIFFs with georeferencing, read back identical."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from tiler.errors import OutputError
from tiler.geometry import Window
from tiler.io import open_reader
from tiler.io.scenes_files import write_satellite
from tiler.scenes import satellite_scene


@pytest.mark.parametrize("block", [pytest.param(128, id="small-blocks"), pytest.param(1024, id="one-block")])
def test_satellite_files_round_trip(tmp_path, stand_in, block):
    scene = stand_in((300, 420), channels=4, dtype=np.uint16, image_nodata=0)
    write_satellite(
        scene,
        tmp_path / "img.tif",
        tmp_path / "truth.tif",
        block=block,
        crs="EPSG:32618",
        pixel_size=20.0,
        origin=(100000.0, 2000000.0),
    )
    with rasterio.open(tmp_path / "img.tif") as img, rasterio.open(tmp_path / "truth.tif") as tru:
        for ds in (img, tru):
            assert ds.profile["tiled"] and ds.profile["compress"] == "deflate"
            assert ds.crs.to_epsg() == 32618
            assert ds.transform == Affine(20.0, 0.0, 100000.0, 0.0, -20.0, 2000000.0)
        assert img.nodata == 0 and img.count == 4 and img.dtypes[0] == "uint16"
        assert tru.nodata == 255 and tru.dtypes[0] == "uint8"
    whole = Window.from_shape(scene.shape)
    image, labels = scene.read(whole)
    reader = open_reader(tmp_path / "img.tif")
    assert np.array_equal(reader.read(whole), image)
    assert np.array_equal(open_reader(tmp_path / "truth.tif").read(whole)[0], labels)
    assert np.array_equal(reader.valid_mask(whole), labels != 255)


def test_real_satellite_scene_window_independent(tmp_path):
    scene = satellite_scene((200, 260), seed=2, bands=4)
    write_satellite(scene, tmp_path / "a.tif", tmp_path / "at.tif", block=64)
    window = Window((37, 51), (190, 233))
    assert np.array_equal(open_reader(tmp_path / "a.tif").read(window), scene.read(window)[0])
    assert np.array_equal(open_reader(tmp_path / "at.tif").read(window)[0], scene.read(window)[1])


def test_writer_refuses_missing_folder(tmp_path, stand_in):
    with pytest.raises(OutputError, match=r"cannot write .*nowhere.*not writable"):
        write_satellite(stand_in((8, 8)), tmp_path / "nowhere" / "a.tif", tmp_path / "b.tif")
