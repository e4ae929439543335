"""A simulated multi-node cluster (issue 23): ``tiler archive`` on 1, 2 and 3 worker nodes, and where finishing ran.

``ray.cluster_utils.Cluster`` starts a head node with ``num_cpus=0`` (the driver's node: nothing may be
scheduled there), then N worker nodes of ``--node-cpus`` logical CPUs each (default 2) on this machine. The
``tiler archive`` command (``python -m pipelines.archive``) joins it through ``RAY_ADDRESS`` and runs
``--scenes`` generated 4-band satellite scenes (``bench_archive``'s, ``--size``² each) through N model actors
(``engine.actors = N``, one CPU each: the other CPU of each node is left to finishing; then one more run on one
node with ``engine.actors`` left to tiler, so the pool holds every CPU and finishing asks for none), with ``cog`` and
``geojson`` exports. The model is a free ONNX graph (a depthwise 31×31 box filter over the bands: the argmax of
the smoothed bands gives land-cover-like regions, so the polygons are few).

Every node's processes are the descendants of its raylet (``node.all_processes["raylet"][0].process.pid``);
a sampler maps each process id it sees to its node while the command runs. Each export record
(``<store>/.tiler/exports/*.json``: ``pid``, ``host``), each finishing step's ``worker`` in the reports and each
block record's ``pid`` is then placed on its node, and the output asserts that the head node ran none of them.

On this 2-core machine the nodes share the same 2 physical cores: more nodes add Ray processes, not compute,
so the seconds say what placement and the extra nodes cost, not how tiler scales.

Run ``python -m bench.bench_cluster`` (``--scenes 2 --size 512 --nodes 1 2`` for a quick run).
Results: ``bench/results/cluster.json`` (``cluster-<scenes>x<size>.json`` for other scenes or sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import psutil

from bench.bench_archive import CACHE
from bench.bench_archive import prepare as prepare_scenes
from bench.bench_pipeline import run_command
from bench.common import cpu_model, save

TILE, OVERLAP, BOX = 256, 32, 31
BATCH = 8


def write_model(path: Path) -> None:
    """A free ONNX model: a depthwise BOX×BOX mean filter over the 4 bands (logits = smoothed bands)."""
    import onnx
    import torch

    from tiler.model.normalize import Normalization
    from tiler.model.sources.onnx import META_KEY, metadata_entry

    conv = torch.nn.Conv2d(4, 4, BOX, padding=BOX // 2, groups=4, bias=False, padding_mode="zeros")
    with torch.no_grad():
        conv.weight.fill_(1.0 / BOX**2)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(conv.eval(), (torch.zeros(1, 4, TILE, TILE),), str(tmp), dynamo=False,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}})
    graph = onnx.load(str(tmp))
    norm = Normalization(kind="meanstd", mean=(3000.0,) * 4, std=(300.0,) * 4)
    onnx.helper.set_model_props(graph, {META_KEY: metadata_entry(
        normalization=norm, class_names=["background", "water", "forest", "built"])})
    onnx.save(graph, str(path))
    tmp.unlink()


def prepare(scenes: int, size: int) -> dict[str, Any]:
    """The scenes (bench_archive's, cached) and the free model."""
    info = prepare_scenes(scenes, size)
    model = CACHE / f"cluster-box{BOX}.onnx"
    if not model.exists():
        write_model(model)
    info["model"] = str(model)
    return info


def write_config(info: dict[str, Any], actors: int | None, root: Path) -> Path:
    """The archive file: every scene, ``actors`` one-CPU actors (None: one per CPU), cog and geojson exports."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / "manifest.txt").write_text("\n".join(info["images"]) + "\n")
    block = min(info["size"], 1024)
    config = {
        "archive": {"root": str(root / "out"), "manifest": str(root / "manifest.txt")},
        "input": {"mask": "none"},
        "model": {"weights": info["model"], "device": "cpu", "batch_size": BATCH},
        "tiling": {"tile": TILE, "overlap": OVERLAP, "blend": "gaussian", "block": block},
        "engine": {"actors": actors, "cpus_per_actor": 1},
        "output": {"chunks": min(512, block), "exports": ["cog", "geojson"]},
    }
    path = root / "archive.yaml"
    path.write_text(json.dumps(config))
    return path


class NodeMap:
    """Which node each process belongs to: the raylet among its ancestors, sampled while the ``with`` body runs."""

    def __init__(self, raylets: dict[int, str], interval: float = 0.25) -> None:
        self.raylets, self.interval = raylets, interval
        self.node: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        """One pass: place every process not yet placed whose ancestors include a raylet."""
        parent = {}
        for proc in psutil.process_iter(["pid", "ppid"]):
            parent[proc.info["pid"]] = proc.info["ppid"]
        for pid in parent:
            if pid in self.node:
                continue
            seen, cur = 0, pid
            while cur in parent and cur not in self.raylets and seen < 64:
                cur, seen = parent[cur], seen + 1
            if cur in self.raylets:
                self.node[pid] = self.raylets[cur]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> NodeMap:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def where(self, pid: int | None) -> str:
        """The node of ``pid``, else ``driver`` for the command itself, else ``unknown``."""
        return self.node.get(pid, "unknown") if pid is not None else "unknown"


def _pid_of(worker: str | None) -> int | None:
    """The pid of a report's ``worker`` field (``pid@host``)."""
    try:
        return int(str(worker).split("@", 1)[0])
    except ValueError:
        return None


def run_nodes(
    info: dict[str, Any], nodes: int, node_cpus: int, timeout: float, *, full: bool = False
) -> dict[str, Any]:
    """Start a head (no CPUs) and ``nodes`` worker nodes, run the archive command on them, place its work.

    ``full``: ``engine.actors`` left to tiler (one per CPU), so the pool holds every CPU and finishing steps ask
    for none: they must still keep off the head node.
    """
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=node_cpus)
        cluster.wait_for_nodes()
        head: Any = cluster.head_node
        raylets = {head.all_processes["raylet"][0].process.pid: "head"}
        for n, node in enumerate(sorted(cluster.worker_nodes, key=lambda x: x.unique_id)):
            raylets[node.all_processes["raylet"][0].process.pid] = f"worker{n + 1}"
        root = CACHE / f"cluster-run-{nodes}{'-full' if full else ''}"
        config = write_config(info, None if full else nodes, root)
        env = {**os.environ, "RAY_ADDRESS": cluster.address}
        pool = f"{nodes * node_cpus} actors (every CPU)" if full else f"{nodes} actors (a CPU per node spare)"
        with NodeMap(raylets) as where:
            wall, code, tail = run_command([sys.executable, "-m", "pipelines.archive", str(config), "--quiet"],
                                           timeout, env)
        if code != 0:
            return {"nodes": nodes, "pool": pool, "error": f"exit {code} after {wall:.0f} s: {tail}"}
        return {"nodes": nodes, "pool": pool, "seconds": wall, **placement(root / "out", where)}
    finally:
        cluster.shutdown()


def placement(out: Path, where: NodeMap) -> dict[str, Any]:
    """Finishing seconds and the node of every export record, finishing step and block from the run's outputs."""
    report = json.loads((out / "latest.json").read_text())
    steps: list[dict[str, Any]] = []
    for item in report["items"]:
        for name, step in ((item.get("timings") or {}).get("finishing") or {}).items():
            steps.append({"input": item["stem"], "step": name, "seconds": step.get("seconds"),
                          "reused": step.get("reused"), "node": where.where(_pid_of(step.get("worker")))})
    exports = []
    for rec_path in sorted(out.glob("*/*.zarr/.tiler/exports/*.json")):
        rec = json.loads(rec_path.read_text())
        exports.append({"input": rec_path.parents[2].name.removesuffix(".zarr"), "export": rec.get("key"),
                        "pid": rec.get("pid"),
                        "node": where.where(rec.get("pid"))})
    blocks: dict[str, int] = {}
    for rec_path in out.glob("*/*.zarr/.tiler/blocks/*.json"):
        node = where.where(json.loads(rec_path.read_text()).get("pid"))
        blocks[node] = blocks.get(node, 0) + 1
    records_per_node: dict[str, int] = {}
    for entry in exports:
        records_per_node[entry["node"]] = records_per_node.get(entry["node"], 0) + 1
    steps_per_node: dict[str, int] = {}
    for entry in steps:
        steps_per_node[entry["node"]] = steps_per_node.get(entry["node"], 0) + 1
    head_ran = records_per_node.get("head", 0) + steps_per_node.get("head", 0) + blocks.get("head", 0)
    return {
        "inputs_done": report["counts"]["done"],
        "finish_seconds_sum": report["timings"]["finish_seconds"],
        "finish_step_seconds_sum": round(sum(s["seconds"] or 0 for s in steps), 3),
        "blocks_per_node": blocks,
        "export_records_per_node": records_per_node,
        "finishing_steps_per_node": steps_per_node,
        "head_ran_none": head_ran == 0,
        "unplaced": sum(d.get("unknown", 0) for d in (records_per_node, steps_per_node, blocks)),
        "exports": exports,
        "finishing_steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3], help="worker node counts to run")
    parser.add_argument("--node-cpus", type=int, default=2,
                        help="logical CPUs per worker node: one for its model actor, the rest for finishing")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before an archive command is killed")
    parser.add_argument("--no-full-pool", action="store_true",
                        help="leave out the extra run on one node whose pool holds every CPU (engine.actors: null)")
    args = parser.parse_args()
    os.environ.pop("RAY_ADDRESS", None)
    info = prepare(args.scenes, args.size)
    runs = []
    for nodes in args.nodes:
        runs.append(run_nodes(info, nodes, args.node_cpus, args.timeout))
        print(json.dumps({k: v for k, v in runs[-1].items() if k not in ("exports", "finishing_steps")}), flush=True)
    if not args.no_full_pool:
        runs.append(run_nodes(info, 1, args.node_cpus, args.timeout, full=True))
        print(json.dumps({k: v for k, v in runs[-1].items() if k not in ("exports", "finishing_steps")}), flush=True)
    placed = [r for r in runs if "error" not in r]
    head_none = all(r["head_ran_none"] for r in placed) and bool(placed)
    by_run = {f"{r['nodes']} node(s), {r['pool']}": r["head_ran_none"] for r in placed}
    for label, ok in by_run.items():
        print(f"{label}: head node ran no finishing and no blocks: {ok}" + ("" if ok else "  <-- NOT SO"))
    default = (args.scenes, args.size) == (parser.get_default("scenes"), parser.get_default("size"))
    save("cluster" if default else f"cluster-{args.scenes}x{args.size}", {
        "device": cpu_model(),
        "scenes": args.scenes, "size": args.size, "megapixels": args.scenes * args.size**2 / 1e6,
        "tile": TILE, "overlap": OVERLAP, "exports": ["cog", "geojson"],
        "sizes": (f"head node num_cpus=0; worker nodes of {args.node_cpus} logical CPUs each, one 1-CPU model "
                  f"actor per worker node (engine.actors = nodes), the rest of each node free for finishing tasks "
                  "(the last run: one node whose pool holds every CPU, engine.actors null); "
                  f"all nodes share this machine's {os.cpu_count()} physical cores, so more nodes add processes, "
                  "not compute"),
        "node_cpus": args.node_cpus,
        "head_ran_none": head_none,
        "head_ran_none_by_run": by_run,
        "runs": runs,
    }, command="python -m bench.bench_cluster " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
