import pytest
import torch

from napari_emdiffuse.config import NetworkConfig, load_preset
from napari_emdiffuse.engine.network import UNet, count_parameters


@pytest.mark.parametrize("size", [(16, 16), (32, 48), (64, 16)])
def test_output_matches_input_shape(size):
    net = UNet(load_preset("tiny").network, out_channels=3, cond_channels=2)
    x = torch.randn(2, 3, *size)
    out = net(x, torch.randn(2, 2, *size), torch.tensor([0.1, -0.5]))
    assert out.shape == x.shape


def test_paper_network_size():
    """The published configuration: base 32, multipliers 1-2-4-8, 2 residual blocks, about 16 M parameters."""
    preset = load_preset("emdiffuse-n")
    assert preset.network.base_channels == 32 and preset.network.channel_mults == (1, 2, 4, 8)
    net = UNet(preset.network)
    assert 14e6 < count_parameters(net) < 18e6
    assert net.size_multiple == 8


def test_attention_and_dropout_are_configurable():
    cfg = NetworkConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(0, 1), dropout=0.1)
    net = UNet(cfg)
    names = [type(m).__name__ for m in net.modules()]
    assert names.count("Attention") >= 4 and "Dropout" in names
    assert count_parameters(net) > count_parameters(UNet(cfg.model_copy(update={"attention_levels": ()})))


def test_noise_level_changes_output():
    torch.manual_seed(0)
    net = UNet(load_preset("tiny").network)
    for p in net.parameters():  # zero-initialised heads would hide the embedding
        torch.nn.init.normal_(p, std=0.1)
    x, c = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)
    a = net(x, c, torch.tensor([0.0]))
    b = net(x, c, torch.tensor([1.0]))
    assert not torch.allclose(a, b)
