"""Hostile and careless model packages (issue 27): one line naming the file, the value and the fix; no raw errors.

Covers the model items: package sizes checked before anything is allocated, lists where names belong, YAML
alias bombs in bundles, the container's memory limit in the budget, files that are not models at all,
``engine.max_in_flight`` bounds, and a model's identity following the content of every file it reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from tests.model.sources_helpers import write_geotiff
from tiler.cli import main as cli_main
from tiler.config import parse_config, pixels_hash
from tiler.engine import budget
from tiler.errors import ConfigError, ModelError, ReadError
from tiler.model import memory
from tiler.model.checkpoint import load_model, save_checkpoint
from tiler.model.spec import ModelSpec, build_network

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
SPEC = ModelSpec("UNet", 2, 3, 4, {"channels": [4, 8], "strides": [2], "num_res_units": 0})


def _edit_json(path: Path, change: Callable[[Any], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.fixture
def machine_memory(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Set what psutil reports as this machine's available memory, with no container limit until one is set."""
    import psutil

    def set_available(n: int) -> None:
        monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=n, total=n))
        monkeypatch.setattr(memory, "CGROUP_FILES", ())

    return set_available


@pytest.fixture
def container_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[int], Path]:
    """Point the cgroup v2 limit file at a temporary ``memory.max`` holding the given bytes."""

    def set_limit(n: int) -> Path:
        path = tmp_path / "cgroup" / "memory.max"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"{n}\n")
        monkeypatch.setattr(memory, "CGROUP_FILES", (path,))
        return path

    return set_limit


# ------------------------------------------------------------------------------- 1. package sizes


def test_smp_config_asking_for_65536_channel_layers_is_refused_before_anything_allocates(tmp_path: Path) -> None:
    from tests.model.test_source_smp import save_unet

    folder = tmp_path / "smp"
    save_unet(folder)
    _edit_json(folder / "config.json", lambda d: d.__setitem__("decoder_channels", [65536, 16, 8]))
    with pytest.raises(ModelError, match=r"smp config .*smp/config\.json: decoder_channels=\[65536, 16, 8\] makes a "
                                         r"network of [\d,]+ parameters .*not built\. Fix: set decoder_channels"):
        load_model(folder)


def test_nnunet_plans_asking_for_65536_feature_stages_are_refused_before_anything_allocates(tmp_path: Path) -> None:
    from tests.model.nnunet_helpers import write_results

    folder = write_results(tmp_path, "3d_fullres", fit=False)

    def widen(plans: Any) -> None:
        plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [65536] * 3

    _edit_json(folder / "plans.json", widen)
    with pytest.raises(ModelError, match=r"plans\.json configuration '3d_fullres': architecture\.arch_kwargs\."
                                         r"features_per_stage=\[65536, 65536, 65536\] makes a network of"):
        load_model(folder)


def test_nnunet_plans_with_a_million_stages_are_refused_naming_the_key(tmp_path: Path) -> None:
    from tests.model.nnunet_helpers import write_results

    folder = write_results(tmp_path, "3d_fullres", fit=False)
    arch = ("configurations", "3d_fullres", "architecture", "arch_kwargs")
    _edit_json(folder / "plans.json", lambda d: d[arch[0]][arch[1]][arch[2]][arch[3]].__setitem__("n_stages", 10**6))
    with pytest.raises(ModelError, match=r"plans\.json .*arch_kwargs\.n_stages is 1000000; give a whole number"):
        load_model(folder)


def test_a_network_that_fits_the_machine_but_not_the_container_is_refused_naming_the_limit(
    machine_memory: Callable[[int], None], container_limit: Callable[[int], Path]
) -> None:
    machine_memory(64 * GIB)
    limit = container_limit(64 * 2**20)
    spec = ModelSpec("UNet", 2, 3, 2, {"channels": [1024, 2048], "strides": [2], "num_res_units": 0})  # 19 M
    with pytest.raises(ModelError, match=rf"channels=\[1024, 2048\] makes a network of 18,960,388 parameters .* "
                                         rf"container's memory limit in {limit} is 0\.1 GiB"):
        build_network(spec)


# ------------------------------------------------------------------------------- 2. lists where names belong


def _nnunet_layer_is_a_list(tmp_path: Path) -> Path:
    from tests.model.nnunet_helpers import write_results

    folder = write_results(tmp_path, "3d_fullres", fit=False)
    arch = ("configurations", "3d_fullres", "architecture", "arch_kwargs")
    _edit_json(folder / "plans.json",
               lambda d: d[arch[0]][arch[1]][arch[2]][arch[3]].__setitem__("conv_op", ["torch.nn.Conv3d"]))
    return folder


def _smp_encoder_is_a_list(tmp_path: Path) -> Path:
    from tests.model.test_source_smp import save_unet

    save_unet(tmp_path / "smp")
    _edit_json(tmp_path / "smp" / "config.json", lambda d: d.__setitem__("encoder_name", ["resnet18"]))
    return tmp_path / "smp"


def _bundle_metadata(change: Callable[[Any], None]) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        from tests.model.test_source_bundle import inference_config, write_bundle

        bundle = write_bundle(tmp_path, inference_config())
        _edit_json(bundle / "configs" / "metadata.json", change)
        return bundle

    return make


def _onnx_class_names_not_a_list(tmp_path: Path) -> Path:
    import onnx

    path = _tiny_onnx(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"tiler": json.dumps({"class_names": 5})})
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("make", "match"),
    [
        pytest.param(_nnunet_layer_is_a_list, r"plans\.json .*arch_kwargs\.conv_op is \['torch\.nn\.Conv3d'\], refused",
                     id="nnunet conv_op list"),
        pytest.param(_smp_encoder_is_a_list, r"smp config .*config\.json: encoder_name is \['resnet18'\], a list where "
                                             r"smp expects a name", id="smp encoder_name list"),
        pytest.param(_bundle_metadata(lambda d: d.__setitem__("network_data_format", [1])),
                     r"bundle metadata .*metadata\.json: network_data_format is \[1\], not a mapping",
                     id="bundle metadata list"),
        pytest.param(_bundle_metadata(lambda d: d["network_data_format"]["outputs"]["pred"]["channel_def"]
                                      .__setitem__("1", ["liver"])),
                     r"metadata\.json: network_data_format\.outputs\.pred\.channel_def\['1'\] is \['liver'\], not a "
                     r"class name", id="bundle class name list"),
        pytest.param(_onnx_class_names_not_a_list, r"ONNX model .*m\.onnx: class_names=5 must be a list of strings",
                     id="onnx class_names int"),
    ],
)
def test_a_list_or_number_where_a_name_belongs_gives_a_model_error_naming_the_file(
    tmp_path: Path, make: Callable[[Path], Path], match: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(ModelError, match=match):
        load_model(path)


_LOAD_PROBE = textwrap.dedent(
    """
    import json, sys, time
    from tiler.model import load_model
    t0 = time.perf_counter()
    try:
        load_model(sys.argv[1])
        out = {"error": None}
    except Exception as exc:  # noqa: BLE001
        out = {"error": type(exc).__name__, "message": str(exc)}
    out["seconds"] = time.perf_counter() - t0
    print(json.dumps(out))
    """
)


def _yaml_bundle(root: Path, body: str) -> Path:
    bundle = root / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "inference.yaml").write_text(body, encoding="utf-8")
    torch.save(build_network(SPEC).state_dict(), bundle / "models" / "model.pt")
    return bundle


NETWORK_DEF_YAML = """\
network_def:
  _target_: UNet
  spatial_dims: 2
  in_channels: 3
  out_channels: 4
  channels: [4, 8]
  strides: [2]
  num_res_units: 0
"""


def test_bundle_yaml_alias_bomb_is_refused_quickly_naming_the_file(tmp_path: Path) -> None:
    lines = ['lol0: &lol0 [{_target_: Identity}, {_target_: Identity}, {_target_: Identity}, {_target_: Identity}]']
    lines += [f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]" for i in range(1, 9)]
    body = NETWORK_DEF_YAML + "\n".join(lines) + "\npreprocessing: {_target_: Compose, transforms: *lol8}\n"
    bundle = _yaml_bundle(tmp_path, body)
    try:
        done = subprocess.run([sys.executable, "-c", _LOAD_PROBE, str(bundle)], capture_output=True, text=True,
                              timeout=60, check=False, cwd=REPO)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("loading a bundle whose YAML is an alias bomb did not end within 60 s")
    assert done.stdout, done.stderr[-2000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["error"] == "ModelError", out
    assert "inference.yaml" in out["message"] and "aliases" in out["message"] and "fix:" in out["message"]
    assert out["seconds"] < 10


def test_bundle_yaml_self_referencing_anchor_is_refused_naming_the_file(tmp_path: Path) -> None:
    body = NETWORK_DEF_YAML + "preprocessing: &pre\n  _target_: Compose\n  transforms: [*pre]\n"
    bundle = _yaml_bundle(tmp_path, body)
    with pytest.raises(ModelError, match=r"bundle config .*inference\.yaml: refused: an alias \(\*name\) refers to "
                                         r"the anchor that contains it"):
        load_model(bundle)


def test_bundle_json_nested_past_the_limit_is_refused_naming_the_file(tmp_path: Path) -> None:
    bundle = _yaml_bundle(tmp_path, "")
    (bundle / "configs" / "inference.yaml").unlink()
    deep = "[" * 5000 + "]" * 5000
    (bundle / "configs" / "inference.json").write_text(f'{{"network_def": {deep}}}')
    with pytest.raises(ReadError, match=r"bundle config .*inference\.json nests lists or mappings more than 64"):
        load_model(bundle)


# ------------------------------------------------------------------------------- 3. the container's memory limit


def _six_gib() -> budget.MemoryEstimate:
    estimate = budget.estimate_actor_memory((2048, 2048), (2048, 2048), channels=3, itemsize=1, classes=4,
                                            parameters=10**6, batch_size=16)  # fmt: skip
    assert 4 * GIB < estimate.total < 16 * GIB
    return estimate


def test_a_job_over_the_containers_memory_limit_is_refused_naming_estimate_and_limit(
    machine_memory: Callable[[int], None], container_limit: Callable[[int], Path]
) -> None:
    machine_memory(64 * GIB)
    budget.check_memory(_six_gib())  # the machine alone has room
    limit = container_limit(4 * GIB)
    assert budget.available_memory() == 4 * GIB
    with pytest.raises(ConfigError, match=rf"the job needs about \d+\.\d GiB per actor .* but the container's memory "
                                          rf"limit in {limit} is 4\.0 GiB .*so 4\.0 GiB is available; fix: .*raise the "
                                          r"container's memory limit"):
        budget.check_memory(_six_gib())


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param({"memory.max": "4294967296\n", "memory.current": "1073741824\n"}, (4 * GIB, GIB), id="v2"),
        pytest.param({"memory.max": "max\n"}, None, id="v2 max"),
        pytest.param({"memory/memory.limit_in_bytes": "2147483648\n"}, (2 * GIB, 0), id="v1 fallback"),
        pytest.param({"memory/memory.limit_in_bytes": "9223372036854771712\n"}, None, id="v1 none"),
        pytest.param({}, None, id="no cgroup"),
    ],
)
def test_container_limit_reads_cgroup_v2_then_v1(tmp_path: Path, files: dict[str, str],
                                                  expected: tuple[int, int] | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = memory.container_limit([tmp_path / "memory.max", tmp_path / "memory" / "memory.limit_in_bytes"])
    assert (found[:2] if found is not None else None) == expected


# ------------------------------------------------------------------------------- 4. misleading errors


def test_a_geotiff_given_as_the_model_says_it_is_an_image_not_code(tmp_path: Path) -> None:
    image = write_geotiff(tmp_path / "scene.tif")
    with pytest.raises(ReadError, match=r"checkpoint .*scene\.tif could not be read: it is not a model file but a "
                                        r"TIFF image .*fix: give model\.weights the model itself") as info:
        load_model(image)
    assert "weights-only" not in str(info.value) and "run code" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "what"),
    [
        pytest.param(b"epochs: 10\nlr: 0.01\n", "a text file", id="text"),
        pytest.param(b'{"architecture": "UNet"}', r"a JSON text file \(a config, not the weights\)", id="json"),
        pytest.param(b"", "an empty file", id="empty"),
    ],
)
def test_a_text_file_given_as_the_model_says_what_it_is(tmp_path: Path, content: bytes, what: str) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ReadError, match=rf"model\.pt could not be read: it is not a model file but {what}; fix:"):
        load_model(path)


def test_tiler_run_with_a_geotiff_as_the_model_exits_2_with_one_line(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from tests.model.sources_helpers import write_job

    image = write_geotiff(tmp_path / "scene.tif")
    job = write_job(tmp_path, image, image, tile=(32, 32), overlap=(8, 8), block=(64, 64))
    assert cli_main(["--quiet", "run", str(job), "--engine", "local"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scene.tif could not be read: it is not a model file but a TIFF image" in err[0], err
    assert "Traceback" not in err[0]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        pytest.param("class_names", 5, r"class_names=5 must be a list of strings", id="class names an int"),
        pytest.param("class_colors", "red", r"class_colors='red' must be a list of \[r, g, b\]", id="colours a str"),
    ],
)
def test_checkpoint_field_errors_name_the_file(tmp_path: Path, field: str, value: Any, match: str) -> None:
    path = save_checkpoint(tmp_path / "bad.pt", build_network(SPEC), spec=SPEC)
    data = torch.load(path, weights_only=True)
    data[field] = value
    torch.save(data, path)
    with pytest.raises(ModelError, match=rf"checkpoint .*bad\.pt: {match}"):
        load_model(path)


# ------------------------------------------------------------------------------- 5. engine.max_in_flight


def test_max_in_flight_of_a_billion_is_refused_with_the_bound_not_an_actor_death() -> None:
    budget.check_in_flight(2, depth=3)
    budget.check_in_flight(budget.MAX_IN_FLIGHT)
    with pytest.raises(ConfigError, match=r"engine\.max_in_flight=1000000000 asks each actor for 1,000,000,000 "
                                          r"threads .*fix: set engine\.max_in_flight to at most 256"):
        budget.check_in_flight(10**9, depth=3)


# ------------------------------------------------------------------------------- 6. identity follows the content


def _job(weights: Path, **model: Any) -> dict[str, Any]:
    return {"input": {"path": "/data/scene.tif"}, "model": {"weights": str(weights), **model},
            "output": {"path": "/out/scene.zarr"}}  # fmt: skip


def _rewrite(path: Path, content: bytes) -> None:
    """Rewrite ``path`` in place with a new mtime (as a retraining run does)."""
    stat = path.stat()
    path.write_bytes(content)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def test_a_single_model_files_identity_is_its_sha256_as_before(tmp_path: Path) -> None:
    from tiler.config.identity import weights_identity

    path = tmp_path / "unet.pt"
    path.write_bytes(b"weights-v1")
    cfg = parse_config(_job(path))
    assert weights_identity(cfg.model) == {"sha256": hashlib.sha256(b"weights-v1").hexdigest()}


@pytest.mark.parametrize(
    ("files", "changed", "ignored"),
    [
        pytest.param({"configs/inference.json": b"{}", "configs/metadata.json": b"{}", "models/model.pt": b"v1"},
                     "models/model.pt", "README.md", id="bundle weights"),
        pytest.param({"configs/inference.json": b"{}", "models/model.pt": b"v1"}, "configs/inference.json",
                     "models/optimizer.pt", id="bundle config"),
        pytest.param({"config.json": b"{}", "model.safetensors": b"v1"}, "model.safetensors", "notes.txt", id="smp"),
        pytest.param({"plans.json": b"{}", "dataset.json": b"{}", "fold_0/checkpoint_final.pth": b"v1"},
                     "fold_0/checkpoint_final.pth", "fold_0/checkpoint_best.pth", id="nnunet fold"),
    ],
)
def test_a_model_folder_retrained_in_place_changes_the_pixels_hash(
    tmp_path: Path, files: dict[str, bytes], changed: str, ignored: str
) -> None:
    folder = tmp_path / "model"
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    before = pixels_hash(parse_config(_job(folder)))
    (folder / ignored).parent.mkdir(parents=True, exist_ok=True)
    (folder / ignored).write_bytes(b"not read by the model")
    assert pixels_hash(parse_config(_job(folder))) == before  # a file the model does not read
    _rewrite(folder / changed, b"retrained")
    assert pixels_hash(parse_config(_job(folder))) != before


def _tiny_onnx(path: Path, *, external: str | None = None) -> Path:
    """A 1x1-convolution ONNX graph (3 → 2 channels); its weights in ``external`` beside it when given."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1), name="w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, "h", "w"])], [weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if external is None:
        onnx.save(model, str(path))
    else:
        onnx.save(model, str(path), save_as_external_data=True, location=external, size_threshold=0)
    return path


def test_an_onnx_graphs_external_data_rewritten_changes_the_pixels_hash(tmp_path: Path) -> None:
    import onnx

    graph = _tiny_onnx(tmp_path / "model.onnx", external="model.onnx.data")
    before = pixels_hash(parse_config(_job(graph)))
    content = graph.read_bytes()
    data = (tmp_path / "model.onnx.data").read_bytes()
    _rewrite(tmp_path / "model.onnx.data", data[::-1])
    assert graph.read_bytes() == content  # the graph itself unchanged
    assert pixels_hash(parse_config(_job(graph))) != before
    assert load_model(graph).num_classes == 2  # and tiler still reads the graph and its data

    from tiler.model.sources.manifest import external_data  # the byte scan finds what onnx itself names

    named = [t.external_data for t in onnx.load(str(graph), load_external_data=False).graph.initializer]
    assert [e.value for entries in named for e in entries if e.key == "location"] == ["model.onnx.data"]
    assert external_data(graph) == [tmp_path / "model.onnx.data"]
