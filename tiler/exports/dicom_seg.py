"""The DICOM-SEG export: the labels as a DICOM Segmentation over the source series, sent on to a PACS if asked.

Drawn for DICOM series inputs only (a SEG references the images it segments). The segment encoding is
``output.dicom.segmentation_type``; ``output.dicom.send`` names a PACS (DICOMweb STOW-RS URL or a DICOM node
``host:port``) the SEG is sent to once written and recorded. The store records each acknowledged send with the
SEG's digest and the target, so a rerun sends a SEG again only when that send was not acknowledged (or the SEG
was drawn again).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tiler.exports.base import DeliverContext, ExportFormat, WriteContext
from tiler.io.objects import local_copy

SENT = "dicom_seg_sent"
"""The store's record of the last acknowledged send of the SEG (its target, digest and the server's answer)."""


def _model_name(store: Any) -> str:
    weights = ((store.attrs.get("config") or {}).get("model") or {}).get("weights") or "model"
    return Path(str(weights).rstrip("/")).name or "model"


def _write(ctx: WriteContext) -> None:
    from tiler.io.dicom_seg import export_dicom_seg

    export_dicom_seg(
        ctx.store, ctx.path, sources=ctx.reader.source_datasets(),
        segmentation_type=ctx.settings["dicom"]["segmentation_type"], algorithm=_model_name(ctx.store),
        # the store's pixels hash names the model's weights and everything else that decides the labels
        algorithm_version=f"tiler {ctx.store.pixels_hash}", before_move=ctx.before_move,
    )


def _send(ctx: DeliverContext) -> Mapping[str, Any] | None:
    from tiler.io.atomic import content_digest
    from tiler.io.pacs import send_file
    from tiler.redact import redact

    dicom = ctx.output["dicom"]
    target = dicom.get("send")
    if not target:
        return None
    path = ctx.paths["dicom_seg"]
    wanted = {"target": redact(str(target)), "digest": content_digest(path)}
    sent = ctx.store.export_records().get(SENT, {}).get("settings") or {}
    if all(sent.get(k) == v for k, v in wanted.items()):
        return {"target": wanted["target"], "answer": sent.get("answer"), "reused": True}
    with local_copy(path) as local:
        answer = send_file(local, str(target), calling_ae=dicom["calling_ae"], called_ae=dicom["called_ae"],
                           timeout=dicom["timeout_s"])
    ctx.store.record_export(SENT, path, job_hash=ctx.job_hash, settings={**wanted, "answer": answer})
    return {"target": wanted["target"], "answer": answer, "reused": False}


FORMAT = ExportFormat(
    name="dicom-seg", dims=frozenset({3}), files={"dicom_seg": ".seg.dcm"}, write=_write,
    settings=("dicom.segmentation_type",),
    why_not="a DICOM SEG segments a 3D series: use cog or ome-zarr for a 2D image",
    inputs=frozenset({"dicom"}),
    why_not_input="a DICOM SEG references the series it segments, and this input is not a DICOM series; fix: give "
    "the series folder as input.path, or export nifti for a NIfTI or zarr volume",
    deliver=_send,
)
