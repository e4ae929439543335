"""A whole run's outputs: every export beside the store, recorded with its sidecars, and areas in the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio.features
import yaml
from shapely.geometry import shape

from tests.engine.helpers import write_model, write_raster
from tiler.config import load_config
from tiler.io.store import OutputStore
from tiler.job.outputs import output_paths
from tiler.segment import run_segment


def _config(root: Path, exports: list[str], **output: object) -> Path:
    data = {
        "input": {"path": str(write_raster(root / "image.tif"))},
        "model": {"weights": str(write_model(root / "model.pt")), "batch_size": 4, "threads": 1},
        "tiling": {"tile": [32, 32], "overlap": [8, 8], "block": [64, 64]},
        "output": {"path": str(root / "out.zarr"), "chunks": [32, 32], "exports": exports, **output},
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_run_without_truth_reports_class_areas_and_writes_every_export(tmp_path):
    import geopandas as gpd

    exports = ["cog", "ome-zarr", "geojson", "geoparquet", "qupath", "quicklook"]
    cfg = load_config(_config(tmp_path, exports, min_polygon_pixels=2))
    result = run_segment(cfg, engine="local", quiet=True)
    paths = output_paths(cfg.output.path)
    for name in (*exports, "cog_aux"):
        assert Path(result.outputs[name]) == paths[name] and paths[name].exists(), name
    store = OutputStore.open(result.store, mode="r")
    assert set(store.exports_done()) >= {*exports, "cog_aux"}
    labels = store.read([slice(None), slice(None)])
    # block records carry the class counts the report sums
    records = store.block_records()
    summed = np.sum([r["class_counts"] for r in records.values()], axis=0)
    counts = [int((labels == k).sum()) for k in range(store.num_classes)]
    assert summed.tolist() == counts
    report = json.loads(Path(result.outputs["report_json"]).read_text())
    areas = report["areas"]
    assert areas["units"] == ["m2", "ha"] and areas["blocks_recounted"] == 0
    assert [c["pixels"] for c in areas["classes"]] == counts
    assert [c["ha"] for c in areas["classes"]] == pytest.approx([n * 100 / 1e4 for n in counts])
    md = Path(result.outputs["report_md"]).read_text()
    assert "## Areas" in md and "| class | pixels | share | m² | ha |" in md
    # polygons: every class's area, kept polygons at least 2 pixels
    gdf = gpd.read_file(result.outputs["geojson"])
    assert gdf.geometry.is_valid.all() and (gdf.pixels >= 2).all()
    for k in range(store.num_classes):  # against the whole map polygonized at once, regions >= 2 pixels
        regions = rasterio.features.shapes(labels, mask=labels == k, connectivity=4)
        expected = sum(a for a in (shape(g).area * 100 for g, _ in regions) if a >= 200)
        assert gdf[gdf.class_id == k].geometry.area.sum() == pytest.approx(expected, rel=0.005, abs=1e-6)
    assert len(gpd.read_parquet(result.outputs["geoparquet"])) == len(gdf)
    # a rerun redoes nothing and keeps the same files
    kept = [*(e for e in exports if e != "quicklook"), "cog_aux"]
    before = {k: Path(result.outputs[k]).stat().st_mtime_ns for k in kept}
    again = run_segment(cfg, engine="local", quiet=True)
    assert {k: Path(again.outputs[k]).stat().st_mtime_ns for k in before} == before
