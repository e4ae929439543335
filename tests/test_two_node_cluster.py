"""A real two-node cluster, started once for the module: the work and the finishing run on its worker nodes.

One driver process starts a ``ray.cluster_utils.Cluster`` whose head (the driver's node) has no CPUs and whose two
worker nodes have one each, so every actor and every finishing step must run on a node other than the driver's.
It runs an engine job and two whole jobs on that cluster while it notes, for every process the nodes' raylets
start, which node started it; the tests read what it printed.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from tests.engine.helpers import make_plan
from tests.jobs import write_config, write_scene
from tiler.engine.job import run_job

REPO = Path(__file__).resolve().parents[1]
CHUNKS = (32, 32)

CLUSTER_SCRIPT = textwrap.dedent(
    """
    import json, os, pickle, sys, threading, time
    import psutil, ray
    from ray.cluster_utils import Cluster
    from tiler.config import load_config
    from tiler.engine.job import run_job
    from tiler.engine.ray import RayExecutor, RayOptions
    from tiler.io.store import OutputStore
    from tiler.segment import run_segment

    plan_file, config, found_file = sys.argv[1:]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    nodes = {"head": cluster.head_node, "worker-1": workers[0], "worker-2": workers[1]}
    raylets = {name: [p.process.pid for p in node.all_processes["raylet"]] for name, node in nodes.items()}
    seen = {}  # pid -> node, sampled while the runs go (Ray ends idle workers within seconds)
    done = threading.Event()

    def sample():
        while not done.is_set():
            for name, pids in raylets.items():
                for pid in pids:
                    try:
                        for child in psutil.Process(pid).children(recursive=True):
                            seen.setdefault(child.pid, name)
                    except psutil.NoSuchProcess:
                        pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    found = {"alive_nodes": len([n for n in ray.nodes() if n["Alive"]])}

    # the engine: two actors, one per worker node, each computing blocks
    # run_job closes the pool at the end: its actors give both CPUs back to the jobs below
    result = run_job(pickle.load(open(plan_file, "rb")), executor=RayExecutor(RayOptions(actors=2)), chunks=(32, 32),
                     pixels_hash="h")
    found["blocks"] = {key: seen.get(record.pid, "unseen") for key, record in result.records.items()}

    # finishing: a pool leaving a CPU free (steps ask for one), and the default pool holding every CPU (steps ask
    # for none)
    for pool, sets in (("one-actor", ["engine.actors=1"]), ("every-cpu", ["engine.actors=null"])):
        out = os.path.join(os.path.dirname(config), pool + ".zarr")
        cfg = load_config(config, ["output.exports=[cog,geojson]", f"output.path={out}", *sets])
        records = OutputStore.open(run_segment(cfg, engine="ray", quiet=True).store, mode="r").export_records()
        found[pool] = {n: seen.get(int(r["pid"]), "unseen") for n, r in records.items()}
    done.set()
    with open(found_file, "w") as f:
        json.dump(found, f)
    ray.shutdown()
    cluster.shutdown()
    """
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the cluster driver found: alive nodes, the node of each block's actor and of each finishing step."""
    root = tmp_path_factory.mktemp("cluster")
    scene = write_scene(root)
    (root / "plan.pkl").write_bytes(pickle.dumps(make_plan(scene.image, scene.model, root / "engine.zarr")))
    config = write_config(root, inputs=scene)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    script = root / "cluster.py"
    script.write_text(CLUSTER_SCRIPT)
    out = subprocess.run([sys.executable, str(script), str(root / "plan.pkl"), str(config), str(root / "found.json")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=400)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return {"root": root, "scene": scene, **json.loads((root / "found.json").read_text())}


def _outputs(store: Path) -> tuple[np.ndarray, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")
    assert group.attrs["complete"] is True
    return group["labels"][...], group["probabilities"][...]


@pytest.mark.slow
def test_blocks_computed_on_two_nodes_equal_the_single_process_output(cluster: dict[str, Any], tmp_path: Path) -> None:
    assert cluster["alive_nodes"] == 3
    assert set(cluster["blocks"].values()) == {"worker-1", "worker-2"}  # each worker node computed blocks
    run_job(
        make_plan(cluster["scene"].image, cluster["scene"].model, tmp_path / "ref.zarr"), chunks=CHUNKS, pixels_hash="h"
    )
    labels, probs = _outputs(cluster["root"] / "engine.zarr")
    reference = _outputs(tmp_path / "ref.zarr")
    assert np.array_equal(labels, reference[0])
    np.testing.assert_allclose(probs, reference[1], rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["one-actor", "every-cpu"])
def test_finishing_runs_on_the_worker_nodes_never_the_drivers(cluster: dict[str, Any], pool: str) -> None:
    nodes = cluster[pool]
    assert set(nodes) >= {"cog", "geojson", "scores_json", "report_json"}
    assert set(nodes.values()) <= {"worker-1", "worker-2"}, nodes  # the driver's node (no CPUs) finished nothing
