"""Tests for deploy/: every manifest parses and carries what its tool needs, and names things that exist.

The entry points and configs the manifests name (pipelines/segment.py, pipelines/archive.py,
configs/satellite.yaml, configs/archive.yaml) are written by other parts of the project; the tests
that check them fail until those files exist.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RAY_VERSION_IN_IMAGE = re.compile(r"^ARG RAY_VERSION=(\S+)$", re.MULTILINE)

# Cron fields: minute, hour, day of month, month, day of week (0-7, 7 = Sunday).
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def docs(name: str) -> list[dict[str, Any]]:
    with open(DEPLOY / name, encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def one(name: str) -> dict[str, Any]:
    found = docs(name)
    assert len(found) == 1, f"{name} holds {len(found)} documents"
    return found[0]


def by_kind(name: str, kind: str) -> dict[str, Any]:
    found = [d for d in docs(name) if d.get("kind") == kind]
    assert len(found) == 1, f"{name} holds {len(found)} {kind}"
    return found[0]


def cron_field_ok(field: str, low: int, high: int) -> bool:
    for part in field.split(","):
        match = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
        if match is None:
            return False
        first, last, step = match.group(2), match.group(3), match.group(4)
        values = [int(v) for v in (first, last) if v is not None]
        if any(not low <= v <= high for v in values) or (len(values) == 2 and values[0] > values[1]):
            return False
        if step is not None and int(step) == 0:
            return False
    return True


def is_cron(expr: str) -> bool:
    fields = expr.split()
    return len(fields) == 5 and all(
        cron_field_ok(f, lo, hi) for f, (lo, hi) in zip(fields, CRON_RANGES, strict=True)
    )


def test_both_nightly_schedules_are_the_documented_valid_one() -> None:
    documented = re.findall(r'schedule: "([^"]+)"', (DEPLOY / "README.md").read_text(encoding="utf-8"))
    assert documented, "deploy/README.md names no schedule"
    schedules = {
        "raycronjob.yaml": one("raycronjob.yaml")["spec"]["schedule"],
        "cronjob.yaml": by_kind("cronjob.yaml", "CronJob")["spec"]["schedule"],
    }
    assert set(schedules.values()) == set(documented), (schedules, documented)
    assert all(is_cron(s) for s in schedules.values()), schedules


def entrypoint_targets(entrypoint: str) -> tuple[str, str]:
    """The module of ``python -m MODULE CONFIG`` and the config path."""
    words = shlex.split(entrypoint)
    assert words[:2] == ["python", "-m"], f"entrypoint {entrypoint!r} is not `python -m MODULE CONFIG`"
    return words[2], words[3]


def module_file(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


def config_file(image_path: str) -> Path:
    """The repository file behind a path the image holds: configs/ is copied to /configs."""
    assert image_path.startswith("/configs/"), (
        f"{image_path} is not under /configs (where the image has configs/)"
    )
    return ROOT / "configs" / image_path.removeprefix("/configs/")


def image_ray_version() -> str:
    match = RAY_VERSION_IN_IMAGE.search((DEPLOY / "Dockerfile").read_text(encoding="utf-8"))
    assert match is not None
    return match.group(1)


def check_ray_job_spec(spec: dict[str, Any], *, module: str) -> None:
    """The fields KubeRay needs in a RayJob spec, and tiler's conventions for it."""
    assert entrypoint_targets(spec["entrypoint"])[0] == module
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == image_ray_version()
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), (
        "rayStartParams values are strings"
    )
    containers = [head["template"]["spec"]["containers"][0]]
    gpu_groups = [
        g
        for g in cluster["workerGroupSpecs"]
        if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0) >= 1
    ]
    assert gpu_groups, "no worker group asks for nvidia.com/gpu"
    for group in gpu_groups:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        containers.append(group["template"]["spec"]["containers"][0])
    images = {c["image"] for c in containers}
    assert len(images) == 1, f"head and workers run different images: {images}"
    for container in containers:
        env = {e["name"]: e["value"] for e in container["env"]}
        assert all(isinstance(v, str) for v in env.values()), f"env values must be strings: {env}"
        assert env["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
        assert ".tif" in env["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"].split(",")
        assert env["GDAL_CACHEMAX"].isdigit()


# ---------------------------------------------------------------------------------------------------
# cluster.yaml


def ray_schema() -> dict[str, Any]:
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_cluster_yaml_matches_ray_launcher_schema() -> None:
    jsonschema.validate(one("cluster.yaml"), ray_schema())


def test_cluster_yaml_has_head_and_gpu_worker() -> None:
    cfg = one("cluster.yaml")
    assert cfg["cluster_name"] and cfg["provider"]["type"]
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != cfg["head_node_type"]}
    gpu = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu, "no worker type with resources {GPU: >= 1}"
    assert all(0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"] for t in gpu)


def test_cluster_yaml_ships_and_installs_the_package_torch_first() -> None:
    cfg = one("cluster.yaml")
    assert cfg["file_mounts"].get("~/tiler") == "."
    setup = cfg["setup_commands"]
    torch = next(i for i, c in enumerate(setup) if re.search(r"pip install .*\btorch==", c))
    project = next(i for i, c in enumerate(setup) if re.search(r"pip install .*-e ~/tiler\b", c))
    assert torch < project
    ray = next(c for c in setup if "ray[default]==" in c)
    assert f"ray[default]=={image_ray_version()}" in ray


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_cluster_yaml_sets_gdal_env_for_ray(key: str) -> None:
    commands = " ".join(one("cluster.yaml")[key])
    assert "ray start" in commands
    for setting in (
        "GDAL_CACHEMAX=",
        "GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS=",
    ):
        assert setting in commands.split("ray start")[0], f"{setting} not exported before ray start"


# ---------------------------------------------------------------------------------------------------
# KubeRay


def test_rayjob() -> None:
    job = one("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1"
    assert job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    check_ray_job_spec(job["spec"], module="pipelines.segment")


def test_raycronjob() -> None:
    cron = one("raycronjob.yaml")
    assert cron["apiVersion"] == "ray.io/v1"
    assert cron["kind"] == "RayCronJob"
    spec = cron["spec"]
    assert is_cron(spec["schedule"]), spec["schedule"]
    # KubeRay 1.6: jobTemplate is the RayJob spec itself (entrypoint directly under it).
    assert "spec" not in spec["jobTemplate"]
    check_ray_job_spec(spec["jobTemplate"], module="pipelines.archive")


def test_raycronjob_feature_gate_is_documented() -> None:
    text = (DEPLOY / "raycronjob.yaml").read_text(encoding="utf-8")
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for where in (text, readme):
        assert "featureGates[0].name=RayCronJob" in where and "1.6" in where


def test_cronjob_launches_archive_rayjob() -> None:
    cron = by_kind("cronjob.yaml", "CronJob")
    assert cron["apiVersion"] == "batch/v1"
    spec = cron["spec"]
    assert is_cron(spec["schedule"])
    assert spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    script = " ".join(pod["containers"][0]["command"])
    assert "kubectl create -f /manifests/rayjob.yaml" in script
    assert pod["volumes"][0]["configMap"]["name"] == by_kind("cronjob.yaml", "ConfigMap")["metadata"]["name"]

    account = by_kind("cronjob.yaml", "ServiceAccount")["metadata"]["name"]
    assert pod["serviceAccountName"] == account
    role = by_kind("cronjob.yaml", "Role")
    rules = [r for r in role["rules"] if "ray.io" in r["apiGroups"] and "rayjobs" in r["resources"]]
    assert rules and "create" in rules[0]["verbs"] and "list" in rules[0]["verbs"]
    binding = by_kind("cronjob.yaml", "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert {"kind": "ServiceAccount", "name": account} in binding["subjects"]

    rayjob = yaml.safe_load(by_kind("cronjob.yaml", "ConfigMap")["data"]["rayjob.yaml"])
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    assert rayjob["metadata"]["generateName"], (
        "each run needs its own name: use generateName with kubectl create"
    )
    check_ray_job_spec(rayjob["spec"], module="pipelines.archive")


# ---------------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_lines() -> list[str]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_dockerfile_installs_torch_before_the_project() -> None:
    lines = dockerfile_lines()
    base = [line for line in lines if line.startswith("FROM")]
    assert base == ["FROM rayproject/ray:${RAY_VERSION}-py311-gpu"]
    torch = next(i for i, line in enumerate(lines) if re.match(r"RUN pip install .*torch==", line))
    source = next(
        i for i, line in enumerate(lines) if re.fullmatch(r"COPY (--chown=\S+ )?tiler \./tiler", line)
    )
    project = next(
        i for i, line in enumerate(lines) if re.match(r"RUN pip install --no-cache-dir \.( |$)", line)
    )
    assert torch < source < project


def test_dockerfile_sets_gdal_env_and_copies_configs() -> None:
    lines = dockerfile_lines()
    env = " ".join(line for line in lines if line.startswith("ENV"))
    for setting in (
        "GDAL_CACHEMAX=",
        "GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS=",
    ):
        assert setting in env
    assert any(re.fullmatch(r"COPY (--chown=\S+ )?configs /configs", line) for line in lines)


# ---------------------------------------------------------------------------------------------------
# what the manifests name must exist


def named_targets() -> list[tuple[str, str, str]]:
    """(manifest, module, config path in the image) for every entrypoint in deploy/."""
    cron_rayjob = yaml.safe_load(by_kind("cronjob.yaml", "ConfigMap")["data"]["rayjob.yaml"])
    entrypoints = [
        ("rayjob.yaml", one("rayjob.yaml")["spec"]["entrypoint"]),
        ("raycronjob.yaml", one("raycronjob.yaml")["spec"]["jobTemplate"]["entrypoint"]),
        ("cronjob.yaml", cron_rayjob["spec"]["entrypoint"]),
    ]
    return [(name, *entrypoint_targets(e)) for name, e in entrypoints]


@pytest.mark.parametrize(
    ("manifest", "module", "config"),
    [
        pytest.param("rayjob.yaml", "pipelines.segment", "/configs/satellite.yaml", id="rayjob"),
        pytest.param("raycronjob.yaml", "pipelines.archive", "/configs/archive.yaml", id="raycronjob"),
        pytest.param("cronjob.yaml", "pipelines.archive", "/configs/archive.yaml", id="cronjob"),
    ],
)
def test_entrypoints_name_existing_modules_and_configs(manifest: str, module: str, config: str) -> None:
    assert (manifest, module, config) in named_targets()
    assert module_file(module).is_file(), f"{manifest} runs {module} but {module_file(module)} does not exist"
    assert config_file(config).is_file(), (
        f"{manifest} reads {config} but {config_file(config)} does not exist"
    )


def test_cluster_submit_script_exists() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    scripts = re.findall(r"ray submit deploy/cluster\.yaml (\S+\.py)", readme)
    assert scripts
    for script in scripts:
        assert (ROOT / script).is_file(), f"README submits {script}, which does not exist"
