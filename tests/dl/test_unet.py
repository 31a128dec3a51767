import numpy as np
import pytest
import torch

from napari_dlvision.dl.unet import PRESETS, UNet, halo, receptive_radius


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
@pytest.mark.parametrize("shape", [(37, 50), (8, 8), (3, 130)])
def test_2d_output_has_input_size(norm, shape):
    net = UNet(2, 2, 3, depth=3, base_channels=4, norm=norm).eval()
    with torch.no_grad():
        assert net(torch.randn((1, 2) + shape)).shape == (1, 3) + shape


def test_3d_output_has_input_size():
    net = UNet(3, 1, 2, depth=2, base_channels=4).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, 5, 19, 12)).shape == (2, 2, 5, 19, 12)


def test_architecture_round_trip_and_presets():
    net = UNet(3, 2, 4, depth=2, base_channels=8, norm="group")
    again = UNet.from_architecture(net.architecture())
    assert again.architecture() == net.architecture()
    assert {"small", "medium"} <= set(PRESETS)
    assert PRESETS["small"]["depth"] <= PRESETS["medium"]["depth"]


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_halo_covers_the_measured_receptive_field(depth):
    """No input pixel further than receptive_radius from an output pixel changes it."""
    torch.manual_seed(0)
    net = UNet(2, 1, 2, depth=depth, base_channels=4).eval()
    x = torch.randn(1, 1, 16, 320)
    with torch.no_grad():
        y = net(x)
        reach = 0
        for col in range(150, 150 + 2**depth):
            x2 = x.clone()
            x2[..., col] += 50.0
            changed = np.flatnonzero((net(x2) - y).abs().amax(dim=(0, 1, 2)).numpy() > 0)
            reach = max(reach, col - changed.min(), changed.max() - col)
    assert 0 < reach <= receptive_radius(depth)
    assert halo(depth) >= receptive_radius(depth) and halo(depth) % 2**depth == 0


def test_bad_arguments():
    with pytest.raises(ValueError):
        UNet(ndim=4)
    with pytest.raises(ValueError):
        UNet(norm="layer")
