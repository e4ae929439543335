"""Render the README's performance table from ``bench/results/*.json`` (``python -m bench.table``).

Every figure in the table is read from a result file that one command in ``bench/`` wrote; the
``--write`` flag replaces the table between the README's markers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _f(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _suite_rows() -> list[str]:
    rows = []
    for case, label in (("2d", "2D 4-band 8192², 2D U-Net"), ("2d-16k", "2D 4-band 16384²"),
                        ("3d", "3D 256³ CT in air, 3D U-Net, `mask: body`"),
                        ("landsat", "Landsat RGB.byte.tif (⅓ nodata)"),
                        ("slide", "slide 8192², ≤ 40% tissue"), ("huge", "2D 32768²")):
        r = _load(f"suite-{case}")
        if r is None:
            continue
        res, ratios = r["results"], r["ratios"]
        p, peer = res.get("project", {}), res.get("peer", {})
        peer_cell = _f(peer.get("mpix_per_s")) if "mpix_per_s" in peer else "could not run"
        skip_ratio = ratios.get("steady_time_skip_vs_noskip")
        inside = ratios.get("label_agreement_with_peer_inside_body")  # a body mask labels the air 0: compare the body
        agreement = inside if inside is not None else ratios.get("label_agreement_with_peer")
        limit_s = res.get("limit", {}).get("seconds")
        steady = limit_s / p["steady_state_s"] if limit_s and p.get("steady_state_s") else None
        agree = "–" if agreement is None else f"{100 * agreement:.5f}%"
        agree += " (in the body)" if inside is not None else ""
        rows.append(
            f"| {label} | {_f(res.get('limit', {}).get('mpix_per_s'))} | {_f(p.get('mpix_per_s'))} | {peer_cell} | "
            f"{_f(ratios.get('project_vs_limit_throughput'))} ({_f(steady)}) | "
            f"{_f(ratios.get('project_vs_peer_throughput'))} | "
            f"{_f(p.get('peak_memory_mb'), 0)} / {_f(peer.get('peak_memory_mb') if 'seconds' in peer else None, 0)} | "
            f"{_f(skip_ratio)} | "
            f"{agree} |"
        )
    return rows


def _archive_rows() -> list[str]:
    rows = []
    for path in sorted(RESULTS.glob("archive-*.json")):
        r = json.loads(path.read_text())
        res, fig = r["results"], r.get("figures", {})
        if not fig:
            continue
        loop = res["monai-loop"]
        whole = _f(loop["seconds"], 1)
        if "process_s" in loop:
            whole = f"{_f(loop['process_s'], 1)} ({whole})"
        local = res.get("tiler-local", {}).get("seconds")
        local_cell = f"{_f(local, 1)} ({_f(local / loop['process_s'])})" if local and "process_s" in loop else "–"
        rows.append(
            f"| {r['scenes']} × {r['size']}²{' (joined Ray)' if r.get('ray') == 'joined' else ''} "
            f"| {_f(res['tiler']['seconds'], 1)} "
            f"| {local_cell} "
            f"| {whole} "
            f"| {_f(res['limit']['seconds'], 1)} | {_f(fig['tiler_vs_monai_loop_time'])} (target ≤ 0.67) "
            f"| {_f(fig['steady_state_vs_limit_throughput'])} (target ≥ 0.8) | {_f(fig['startup_s'], 1)} "
            f"| {_f(fig['per_input_s'], 2)} ({_f(fig['limit_per_input_s'], 2)}) |"
        )
    return rows


def _pipeline_rows() -> list[str]:
    rows = []
    for path in sorted(RESULTS.glob("pipeline-*.json")):
        r = json.loads(path.read_text())
        for case, c in r["cases"].items():
            res = c["results"]
            floor = res.get("floor", {}).get("process_s")
            if not floor:
                continue
            shape = "×".join(map(str, c["shape"]))

            def cell(name: str, res: dict[str, Any] = res, floor: float = floor) -> str:
                run = res.get(name, {})
                if "process_s" not in run:
                    return "–"
                whole = f"{_f(run['process_s'], 1)} ({_f(floor / run['process_s'])})"
                if run.get("blocks_seconds"):
                    ratio = res["floor"]["seconds"] / run["blocks_seconds"]
                    whole += f"; blocks {_f(run['blocks_seconds'], 1)} ({_f(ratio)})"
                return whole

            stages = res.get("tiler-ray", {}).get("stages") or {}
            idle = res.get("tiler-ray", {}).get("model_idle_share")
            rows.append(
                f"| {case.upper()} {shape} | {_f(floor, 1)} | {cell('tiler-local')} | {cell('tiler-ray')} "
                f"| {cell('monai')} | {', '.join(f'{k} {v:.1f}' for k, v in stages.items()) or '–'} | {_f(idle, 3)} |"
            )
    return rows


def _cluster_rows() -> list[str]:
    r = _load("cluster")
    if r is None:
        return []
    rows = []
    for run in r["runs"]:
        places = ", ".join(f"{node} {n}" for node, n in sorted(run["finishing_steps_per_node"].items()))
        rows.append(f"| {run['nodes']} | {run['pool']} | {_f(run['seconds'], 1)} | {_f(run['finish_seconds_sum'], 1)} "
                    f"| {places} | {'yes' if run['head_ran_none'] else 'NO'} |")
    return rows


def render() -> str:
    """The markdown of the performance section's tables."""
    lines = []
    any_result = next(iter(sorted(RESULTS.glob("*.json"))), None)
    if any_result is not None:
        m = json.loads(any_result.read_text())["machine"]
        lines.append(f"Machine: {m['cores']} CPU cores, {m['memory_gb']} GB, GPU: {m['gpu'] or 'none'}, "
                     f"torch {m['torch']}. Mpx/s = megapixels (megavoxels) of input per second, wall clock.")
        lines.append("")
    suite = _suite_rows()
    if suite:
        lines += [
            "Side by side (`python -m bench.bench_suite --case CASE`; limit = bare forward over the same tiles, "
            "pre-read; peer = MONAI `sliding_window_inference`, input in memory):",
            "",
            "| case | limit Mpx/s | tiler Mpx/s | MONAI Mpx/s | tiler ÷ limit (steady state) | tiler ÷ MONAI "
            "| peak MB tiler / MONAI "
            "| steady time with skipping ÷ without | labels = MONAI |",
            "|---|---|---|---|---|---|---|---|---|",
            *suite,
            "",
        ]
    archive = _archive_rows()
    if archive:
        lines += [
            "Archives (`python -m bench.bench_archive --scenes N --size S`: the whole `tiler archive` command, "
            "COG per scene, against a plain loop of rasterio read → MONAI `sliding_window_inference` → argmax → "
            "GeoTIFF in one process, timed as a whole command (the loop alone in brackets), and the bare forward "
            "over the same tiles):",
            "",
            "| archive | tiler s | tiler `--engine local` s (÷ loop) | MONAI loop command s (loop) | bare forward s "
            "| tiler ÷ loop time | steady state ÷ limit | start-up s | per input s (limit) |",
            "|---|---|---|---|---|---|---|---|---|",
            *archive,
            "",
        ]
    pipeline = _pipeline_rows()
    if pipeline:
        lines += [
            "Free-model ceiling (`python -m bench.bench_pipeline --size 8192 --volume 256`: a 1×1 convolution in ONNX, "
            "no exports; whole commands in seconds, with their throughput ÷ the I/O floor's in brackets, and the "
            "block phase alone ÷ the floor's own read-compute-write time; the floor is two processes reading the same "
            "windows with rasterio and writing uint8 labels to zarr; stage seconds of tiler on Ray are summed over "
            "threads):",
            "",
            "| case | I/O floor s | tiler `--engine local` | tiler on embedded Ray | MONAI + onnxruntime "
            "| tiler Ray stages s | model idle share |",
            "|---|---|---|---|---|---|---|",
            *pipeline,
            "",
        ]
    cluster = _cluster_rows()
    if cluster:
        lines += [
            "Simulated cluster (`python -m bench.bench_cluster`: `ray.cluster_utils`, head node with no CPUs, worker "
            "nodes of 2 logical CPUs all on this 2-core machine; 6 × 1024² archive with COG and GeoJSON; finishing "
            "steps counted per node from their workers' pids):",
            "",
            "| worker nodes | pool | archive s | finishing s (summed) | finishing steps per node "
            "| head node ran none |",
            "|---|---|---|---|---|---|",
            *cluster,
            "",
        ]
    other = []
    for name in sorted(p.stem for p in RESULTS.glob("stitch-*.json")):
        r = _load(name)
        if r:
            other.append(f"| stitching ÷ forward, U-Net {r['unet_channels']} (`{r['command']}`) | "
                         f"{_f(r['stitch_fraction_of_forward'], 3)} | ≤ 0.10 |")
    for name in ("runner", "runner-res1"):
        runner = _load(name)
        if runner:
            cpu = runner["results"]["cpu"]
            other.append(f"| runner ÷ bare `model(x)` tiles/s, tiles {runner['tile_shape']} (`{runner['command']}`) | "
                         f"{_f(cpu['ratio_per_batch'])} | ≥ 0.95 |")
    score = _load("score")
    if score:
        for key in ("zarr", "geotiff"):
            c = score[key]
            other.append(f"| scoring {score['size']}² {key}: confusion Mpx/s, peak MB (`{score['command']}`) | "
                         f"{_f(c['mpixel_per_s_confusion'], 0)}, {_f(c['peak_rss_mb'], 0)} | ≥ 100, < 1024 |")
    demo = _load("demo")
    if demo:
        for dom, t in demo["domains"].items():
            target = {"satellite": 0.85, "ct": 0.80}.get(dom)
            other.append(f"| `tiler demo --domain {dom}`: FWIoU (full pipeline, held-out scene), train s, total s | "
                         f"{_f(t['fwiou'], 3)}, {_f(t['train_seconds'], 0)}, {_f(t['total_seconds'], 0)} | "
                         f"{'≥ ' + str(target) + ', ' if target else ''}train ≤ 300, total ≤ 300 |")
    if other:
        lines += ["| other figure | measured | target |", "|---|---|---|", *other, ""]
    return "\n".join(lines)


def main() -> int:
    table = render()
    if "--write" in sys.argv:
        text = README.read_text()
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        README.write_text(text[:start] + "\n" + table + "\n" + text[end:])
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
