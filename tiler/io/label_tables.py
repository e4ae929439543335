"""Class names and colours in the sidecar files viewers read beside a label raster.

A GDAL PAM file (``<cog>.aux.xml``: category names and a thematic raster attribute table, read by ``gdalinfo``
and QGIS) beside a COG; a 3D Slicer colour table (``.ctbl``) and an ITK-SNAP label description file
(``.itksnap.txt``) beside a NIfTI. Every file is written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence

from tiler.io.atomic import BeforeMove, write_bytes_atomic
from tiler.io.objects import AnyPath, PathArg, as_path


def aux_path(cog_path: PathArg) -> AnyPath:
    """The GDAL PAM sidecar of a raster: ``<name>.aux.xml`` beside it."""
    cog_path = as_path(cog_path)
    return cog_path.with_name(cog_path.name + ".aux.xml")


# GDAL field types and usages (gdal.h: GDALRATFieldType, GDALRATFieldUsage)
_GFT_INTEGER, _GFT_STRING = 0, 2
_GFU_NAME, _GFU_MINMAX, _GFU_RED, _GFU_GREEN, _GFU_BLUE, _GFU_ALPHA = 2, 5, 6, 7, 8, 9


def write_class_table_aux(
    path: PathArg,
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    *,
    before_move: BeforeMove | None = None,
) -> AnyPath:
    """Write a GDAL PAM file (``.aux.xml``) giving band 1 category names and a thematic raster attribute table.

    GDAL reads it with the raster beside it (``gdalinfo`` lists the categories and the table; QGIS labels the
    classes from it). Columns: ``Value`` (min/max), ``Class`` (name), ``Red``/``Green``/``Blue``/``Alpha``.
    """
    import xml.etree.ElementTree as ET

    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    ET.SubElement(band, "Description").text = "class"
    categories = ET.SubElement(band, "CategoryNames")
    for name in names:
        ET.SubElement(categories, "Category").text = str(name)
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    columns = [("Value", _GFT_INTEGER, _GFU_MINMAX), ("Class", _GFT_STRING, _GFU_NAME),
               ("Red", _GFT_INTEGER, _GFU_RED), ("Green", _GFT_INTEGER, _GFU_GREEN),
               ("Blue", _GFT_INTEGER, _GFU_BLUE), ("Alpha", _GFT_INTEGER, _GFU_ALPHA)]  # fmt: skip
    for i, (col, kind, usage) in enumerate(columns):
        field = ET.SubElement(rat, "FieldDefn", index=str(i))
        ET.SubElement(field, "Name").text = col
        ET.SubElement(field, "Type").text = str(kind)
        ET.SubElement(field, "Usage").text = str(usage)
    for k, (name, color) in enumerate(zip(names, colors, strict=True)):
        row = ET.SubElement(rat, "Row", index=str(k))
        for value in (k, name, *(int(v) for v in color[:3]), 255):
            ET.SubElement(row, "F").text = str(value)
    ET.indent(root)
    write_bytes_atomic(path, ET.tostring(root, encoding="utf-8") + b"\n", before_move=before_move)
    return as_path(path)


def _stem(path: AnyPath) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".tif", ".tiff"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def label_table_paths(nifti_path: PathArg) -> dict[str, AnyPath]:
    """The label tables beside a NIfTI ``<name>.nii.gz``: ``ctbl`` (3D Slicer) and ``itksnap`` (ITK-SNAP).

    >>> {k: p.name for k, p in label_table_paths("/out/ct.nii.gz").items()}
    {'ctbl': 'ct.ctbl', 'itksnap': 'ct.itksnap.txt'}
    """
    path = as_path(nifti_path)
    stem = _stem(path)
    return {"ctbl": path.with_name(stem + ".ctbl"), "itksnap": path.with_name(stem + ".itksnap.txt")}


def _table_rows(
    names: Sequence[str], colors: Sequence[Sequence[int]], nodata_label: int
) -> list[tuple[int, str, tuple[int, int, int], int]]:
    """``(label, name, rgb, alpha)`` per class, then the nodata label (transparent)."""
    rows = [
        (k, str(n), (int(c[0]), int(c[1]), int(c[2])), 255) for k, (n, c) in enumerate(zip(names, colors, strict=True))
    ]
    if nodata_label >= len(names):
        rows.append((nodata_label, "nodata", (0, 0, 0), 0))
    return rows


def write_slicer_ctbl(
    path: PathArg,
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    *,
    nodata_label: int,
    before_move: BeforeMove | None = None,
) -> AnyPath:
    """Write a 3D Slicer colour table: ``# Color table file`` then ``index name R G B A`` per label.

    Spaces in names become underscores (the format separates fields by spaces).
    """
    rows = _table_rows(names, colors, nodata_label)
    lines = [f"# Color table file {as_path(path).name}", f"# {len(rows)} values"]
    lines += [f"{k} {'_'.join(n.split()) or f'class_{k}'} {r} {g} {b} {a}" for k, n, (r, g, b), a in rows]
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode(), before_move=before_move)
    return as_path(path)


def write_itksnap_labels(
    path: PathArg,
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    *,
    nodata_label: int,
    before_move: BeforeMove | None = None,
) -> AnyPath:
    """Write an ITK-SNAP label description file: ``IDX R G B A VIS MSH "LABEL"`` per label (A in 0..1)."""
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File",
        "# File format:",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "################################################",
    ]
    for k, name, (r, g, b), a in _table_rows(names, colors, nodata_label):
        visible = int(a > 0)
        label = name.replace('"', "'")
        lines.append(f'{k:5d} {r:5d} {g:4d} {b:4d} {a / 255:8.2f} {visible:2d} {visible:2d}    "{label}"')
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode(), before_move=before_move)
    return as_path(path)
