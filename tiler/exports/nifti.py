"""The NIfTI export: 3D labels with the input's affine, and label tables for 3D Slicer and ITK-SNAP."""

from __future__ import annotations

from tiler.exports.base import ExportFormat, WriteContext


def _write(ctx: WriteContext) -> None:
    from tiler.io import export

    export.export_nifti(ctx.store, ctx.path, reference=ctx.reader, before_move=ctx.before_move)


FORMAT = ExportFormat(
    name="nifti", dims=frozenset({3}),
    files={"nifti": ".nii.gz", "nifti_ctbl": ".ctbl", "nifti_itksnap": ".itksnap.txt"}, write=_write,
    why_not="a NIfTI export is for volumes: use cog or ome-zarr for a 2D image",
)
