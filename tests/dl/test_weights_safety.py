"""weights.pt and the U-Net architecture from a model file: refused before anything runs or is allocated."""

import io
import os
import pickle
import pickletools
import time
import zipfile

import numpy as np
import pytest
import torch

from napari_dlvision.core import modelfile
from napari_dlvision.core.errors import ModelFileError, UserInputError
from napari_dlvision.dl.unet import (
    MAX_PARAMETERS, UNet, check_architecture, count_parameters,
)
from napari_dlvision.dl.weights import state_dict_from_bytes, state_dict_to_bytes


class Payload:
    """Unpickling this creates a folder: proof that it ran."""

    marker = None

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def refused(data, match=None) -> str:
    with pytest.raises(ModelFileError, match=match) as info:
        state_dict_from_bytes(data, "m.dlv")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("m.dlv: weights.pt is not a plain tensor state dict ("), msg
    # torch's advice to load with weights_only=False must never reach the user.
    assert "weights_only" not in msg and "trusted" not in msg and len(msg) < 200, msg
    return msg


@pytest.fixture
def net():
    torch.manual_seed(0)
    return UNet(2, 1, 2, depth=2, base_channels=4)


def test_round_trip(net):
    state = state_dict_from_bytes(state_dict_to_bytes(net), "m.dlv")
    assert state.keys() == net.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert state_dict_to_bytes(net.state_dict())[:2] == b"PK"  # a dict works too


def test_pickled_objects_are_refused_without_running(tmp_path, net):
    marker = tmp_path / "payload-ran"
    Payload.marker = marker
    data = torch_bytes({**net.state_dict(), "extra": Payload()})
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        pkl = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    # The payload is live: its pickle calls mkdir on load.
    assert any("mkdir" in str(arg) for _, arg, _ in pickletools.genops(pkl))
    assert "mkdir" in refused(data, match="posix.mkdir|mkdir")
    refused(pickle.dumps(Payload()))  # the legacy (non-zip) format
    refused(pickle.dumps({"w": Payload()}, protocol=2))
    assert not marker.exists()


def test_damaged_and_foreign_weights(net):
    good = state_dict_to_bytes(net)
    refused(good[: len(good) // 2])
    refused(good[:100])
    refused(b"", match="ends early")
    refused(b"definitely not a torch file")
    refused(torch_bytes({"a": 1, "b": "text"}), match="a is a int, not a tensor")
    refused(torch_bytes([torch.zeros(3)]), match="holds a list")
    refused(torch_bytes({1: torch.zeros(3)}), match="key 1")
    refused(torch_bytes({}), match="empty")
    refused(torch_bytes({"w": {"nested": torch.zeros(3)}}), match="w is a dict")
    refused(torch_bytes({"w": torch.tensor([1.0, float("nan")])}), match="NaN or infinite")
    refused(torch_bytes({"w": torch.tensor([float("inf")])}), match="NaN or infinite")
    refused(torch_bytes({"w": torch.zeros(3, dtype=torch.complex64)}), match="complex64")
    refused(torch_bytes({"w": torch.eye(3).to_sparse()}), match="sparse")


# -- architecture bounds ------------------------------------------------------------------
@pytest.mark.parametrize("arch, match", [
    ({"base_channels": 1200}, "base_channels must be a whole number from 1 to 128, got 1200"),
    ({"in_channels": 1200}, "in_channels must be a whole number from 1 to 64, got 1200"),
    ({"n_classes": 1200}, "n_classes must be"),
    ({"n_classes": 0}, "n_classes must be"),
    ({"depth": 7}, "depth must be a whole number from 1 to 6"),
    ({"depth": 0}, "depth must be"),
    ({"depth": 3.0}, "depth must be"),
    ({"depth": True}, "depth must be"),
    ({"base_channels": "16"}, "base_channels must be"),
    ({"ndim": 4}, "ndim must be 2 or 3"),
    ({"ndim": 2.0}, "ndim must be 2 or 3"),
    ({"norm": "layer"}, "norm must be one of batch, group, none"),
    ({"norm": None}, "norm must be one of"),
    ({"ndim": 3, "depth": 6, "base_channels": 128}, "weights, more than the 268,435,456 allowed"),
])
def test_architecture_is_bounded_before_allocation(arch, match):
    full = {"name": "unet", "ndim": 2, "in_channels": 1, "n_classes": 2, "depth": 3, "base_channels": 16,
            "norm": "batch", **arch}
    t0 = time.perf_counter()
    with pytest.raises(UserInputError, match=match) as info:
        UNet.from_architecture(full)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    with pytest.raises(UserInputError, match=match):
        UNet(**{k: v for k, v in full.items() if k != "name"})
    assert time.perf_counter() - t0 < 0.5  # refused by arithmetic, nothing allocated


def test_architecture_shape_errors():
    with pytest.raises(UserInputError, match="must be a JSON object"):
        UNet.from_architecture([2, 1, 2])
    with pytest.raises(UserInputError, match="lacks depth, norm"):
        UNet.from_architecture({"ndim": 2, "in_channels": 1, "n_classes": 2, "base_channels": 4})
    with pytest.raises(UserInputError, match="unknown network 'resnet'"):
        UNet.from_architecture({"name": "resnet"})


def test_parameter_count_is_exact_and_presets_fit():
    for ndim, depth, base, norm in [(2, 1, 4, "none"), (2, 3, 8, "batch"), (3, 2, 4, "group"), (3, 4, 32, "batch")]:
        net = UNet(ndim, 2, 3, depth, base, norm)
        assert count_parameters(ndim, 2, 3, depth, base, norm) == sum(p.numel() for p in net.parameters())
    assert check_architecture(3, 64, 64, 4, 64)["depth"] == 4  # the largest 3D nets of depth 4 still fit
    assert count_parameters(3, 64, 64, 4, 128, "batch") > MAX_PARAMETERS
    assert UNet(np.int64(2), 1, 2, 2, 4).ndim == 2  # numpy integers are whole numbers too


# -- through a real model file ----------------------------------------------------------------
def unet_file(path, net, weights: bytes | None = None, **update):
    meta = {"kind": "pixel-unet", "mode": "sparse", "preset": "small", "classes": [1, 2],
            "class_names": ["background", "nucleus"], "n_channels": 1, "ndim": 2, "spacing": None,
            "architecture": net.architecture(), "halo": net.halo,
            "normalisation": {"low": 1.0, "high": 99.8, "mode": "percentile", "max_samples": 1 << 22},
            "training": {}, "metrics": {}}
    meta.update(update)
    return modelfile.save(path, meta, {}, extra={"weights.pt": state_dict_to_bytes(net) if weights is None
                                                else weights})


def test_hostile_unet_files_through_the_loader(tmp_path, net):
    from napari_dlvision.dl.segmenter import UNetSegmenter

    marker = tmp_path / "payload-ran"
    Payload.marker = marker
    good = unet_file(tmp_path / "good.dlv", net)
    assert UNetSegmenter.load(good, device="cpu").net.architecture() == net.architecture()
    huge = {**net.architecture(), "base_channels": 1200}
    cases = {
        "base_channels must be": unet_file(tmp_path / "a.dlv", net, architecture=huge),
        "normalisation": unet_file(tmp_path / "n.dlv", net, normalisation="x"),
        "spacing": unet_file(tmp_path / "s.dlv", net, spacing=[0, 0]),
        "format_version": unet_file(tmp_path / "v.dlv", net, format_version="1"),
        "not a plain tensor state dict": unet_file(tmp_path / "p.dlv", net,
                                                   weights=torch_bytes({"w": Payload()})),
    }
    for match, path in cases.items():
        t0 = time.perf_counter()
        with pytest.raises(ModelFileError, match=match) as info:
            UNetSegmenter.load(path, device="cpu")
        assert "\n" not in str(info.value) and str(path) in str(info.value)
        assert time.perf_counter() - t0 < 2
    assert not marker.exists()
