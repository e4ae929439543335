from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tiler.errors import ModelError, ReadError
from tiler.model.checkpoint import load_model, save_checkpoint, save_torchscript
from tiler.model.normalize import Normalization
from tiler.model.spec import ModelSpec, build_network

SPEC = ModelSpec("UNet", 2, 3, 4, {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1})
NORM = Normalization("meanstd", mean=(1.0, 2.0, 3.0), std=(2.0, 2.0, 2.0))
NAMES = ("a", "b", "c", "d")


@pytest.fixture
def trained() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_network(SPEC)
    with torch.no_grad():  # move weights off their init so a wrong load would show
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def _outputs(net: torch.nn.Module) -> torch.Tensor:
    x = torch.linspace(-1, 1, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)
    with torch.no_grad():
        return net(x)


def _save(kind: str, net: torch.nn.Module, path: Path) -> dict:
    if kind == "checkpoint":
        save_checkpoint(path, net, spec=SPEC, normalization=NORM, class_names=NAMES)
        return {}
    if kind == "state_dict":
        torch.save(net.state_dict(), path)
        return {"spec": SPEC}
    if kind == "wrapped_state_dict":
        torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, path)
        return {"spec": SPEC.to_dict()}
    save_torchscript(path, net, spec=SPEC, normalization=NORM, class_names=NAMES, example=torch.zeros(1, 3, 16, 16))
    return {}


@pytest.mark.parametrize("kind", ["checkpoint", "state_dict", "wrapped_state_dict", "torchscript"])
def test_round_trip_gives_identical_outputs(kind, trained, tmp_path):
    path = tmp_path / f"m-{kind}.pt"
    kwargs = _save(kind, trained, path)
    loaded = load_model(path, **kwargs)
    assert torch.equal(_outputs(loaded.network), _outputs(trained))
    assert loaded.spec == SPEC
    assert loaded.format == kind.replace("wrapped_", "")
    if kind in ("checkpoint", "torchscript"):
        assert loaded.normalization == NORM and loaded.class_names == NAMES
    else:
        assert loaded.normalization.kind == "none" and loaded.class_names == (
            "class_0",
            "class_1",
            "class_2",
            "class_3",
        )


def test_project_checkpoint_holds_only_plain_types(trained, tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", trained, spec=SPEC, normalization=NORM, class_names=NAMES)
    data = torch.load(path, map_location="cpu", weights_only=True)
    assert data["format"] == "tiler-checkpoint" and data["version"] == 1
    assert data["spec"] == SPEC.to_dict() and data["class_names"] == list(NAMES)


class _Payload:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "hook": _Payload(str(target))}, path)
    with pytest.raises(ModelError, match=r"evil.pt was refused because it is not weights-only"):
        load_model(path, spec=SPEC)
    assert not target.exists()


def test_mismatched_shape_names_first_bad_tensor_and_both_shapes(trained, tmp_path):
    state = trained.state_dict()
    keys = list(state)
    bad_key = keys[1]
    state[bad_key] = torch.zeros(*state[bad_key].shape, 2)
    state[keys[4]] = torch.zeros(7)  # a later mismatch must not be the one reported
    torch.save(state, tmp_path / "bad.pt")
    expected = tuple(trained.state_dict()[bad_key].shape)
    got = (*expected, 2)
    with pytest.raises(ModelError, match=rf"tensor '{bad_key}' has shape \({got[0]}.*in the file but \({expected[0]}"):
        load_model(tmp_path / "bad.pt", spec=SPEC)


def test_weights_of_another_spec_are_refused(trained, tmp_path):
    torch.save(trained.state_dict(), tmp_path / "m.pt")
    other = ModelSpec("UNet", 2, 3, 4, {"channels": [8, 8, 16], "strides": [2, 2], "num_res_units": 1})
    with pytest.raises(ModelError, match=r"in the file but .* in the model built from the spec"):
        load_model(tmp_path / "m.pt", spec=other)


def test_missing_file_is_a_read_error(tmp_path):
    with pytest.raises(ReadError, match=r"nope.pt does not exist"):
        load_model(tmp_path / "nope.pt", spec=SPEC)


def test_corrupt_file_is_a_read_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ReadError, match=r"junk.pt could not be read"):
        load_model(path, spec=SPEC)


def test_plain_state_dict_without_spec_asks_for_one(trained, tmp_path):
    torch.save(trained.state_dict(), tmp_path / "m.pt")
    with pytest.raises(ModelError, match=r"plain state dict with no spec; pass spec="):
        load_model(tmp_path / "m.pt")


def test_wrong_number_of_class_names_is_refused(trained, tmp_path):
    with pytest.raises(ModelError, match=r"has 2 names but the model predicts 4 classes"):
        save_checkpoint(tmp_path / "m.pt", trained, spec=SPEC, class_names=["x", "y"])


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ModelError, match=r"format='keras' is unknown"):
        load_model(tmp_path / "m.h5", format="keras")


def test_each_override_replaces_only_its_own_stored_field(trained, tmp_path):
    colors = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
    path = save_checkpoint(tmp_path / "m.pt", trained, spec=SPEC, normalization=NORM, class_names=NAMES,
                           class_colors=colors)  # fmt: skip
    renamed = load_model(path, class_names=["w", "x", "y", "z"])
    assert renamed.class_names == ("w", "x", "y", "z") and renamed.class_colors == tuple(map(tuple, colors))
    assert renamed.normalization == NORM
    recoloured = load_model(path, class_colors=[[0, 0, 0]] * 4, normalization={"kind": "none"})
    assert recoloured.class_names == NAMES and recoloured.class_colors == ((0, 0, 0),) * 4
    assert recoloured.normalization.kind == "none"
    with pytest.raises(ModelError, match=r"m\.pt: class_names=\[.a.\] has 1 names but the model predicts 4"):
        load_model(path, class_names=["a"])
