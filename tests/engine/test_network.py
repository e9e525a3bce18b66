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


def _plain_forward(net: UNet, x, cond, c_noise):
    """The network's arithmetic written out plainly, one operation at a time (no fusion, no
    in-place, no batched FiLM): the fast forward must compute the same thing."""
    from torch.nn import functional as F

    from napari_emdiffuse.engine.network import Attention, ResBlock, UpsampleConv, noise_embedding

    emb = net.embed(noise_embedding(c_noise, net.cfg.base_channels))

    def res(b, h):
        out = b.conv1(F.silu(b.norm1(h)))
        scale, shift = b.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        out = b.conv2(b.drop(F.silu(b.norm2(out) * (1 + scale) + shift)))
        return b.skip(h) + out

    def attn(a, h):
        bsz, c, hh, ww = h.shape
        q, k, v = a.qkv(a.norm(h)).reshape(bsz, 3, a.heads, c // a.heads, hh * ww).unbind(1)
        w = torch.softmax(q.transpose(-1, -2) @ k / (c // a.heads) ** 0.5, dim=-1)
        return h + a.out((w @ v.transpose(-1, -2)).transpose(-1, -2).reshape(bsz, c, hh, ww))

    def up(b, h):
        return F.conv2d(F.interpolate(h, scale_factor=2, mode="nearest"), b.weight, b.bias, padding=1)

    def run(blocks, h):
        for b in blocks:
            h = res(b, h) if isinstance(b, ResBlock) else attn(b, h) if isinstance(b, Attention) else up(b, h) if isinstance(b, UpsampleConv) else b(h)
        return h

    h = net.stem(torch.cat([x, cond], dim=1))
    hs = [h]
    for blocks in net.down:
        h = run(blocks, h)
        hs.append(h)
    h = run(net.mid, h)
    for blocks in net.up:
        h = run(blocks, torch.cat([h, hs.pop()], dim=1))
    return net.head(h)


@pytest.mark.parametrize("levels", [(0.3, -1.2), (0.7,)], ids=["per-item noise", "one level for the batch (FiLM folded)"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_forward_computes_the_plain_arithmetic(channels_last, levels):
    """Fused FiLM (and folded into the GroupNorm when the batch has one noise level), in-place
    activations, batched FiLM projections, view-based attention and the upsampling as a
    transposed convolution give the plain computation's output and gradients within float32 rounding, in either layout."""
    cfg = NetworkConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,), dropout=0.0)
    torch.manual_seed(0)
    net = UNet(cfg, out_channels=2, cond_channels=1)
    for p in net.parameters():  # the zero-initialised convolutions would hide most of the network
        torch.nn.init.normal_(p, std=0.2)
    x, cond, c = torch.randn(2, 2, 16, 24), torch.randn(2, 1, 16, 24), torch.tensor(levels)
    want = _plain_forward(net, x, cond, c)
    grads_want = torch.autograd.grad(want.square().sum(), list(net.parameters()))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x, cond = x.contiguous(memory_format=torch.channels_last), cond.contiguous(memory_format=torch.channels_last)
    got = net(x, cond, c)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(got.square().sum(), list(net.parameters()))
    for g, w in zip(grads, grads_want):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-4)


def test_upsampling_as_transposed_convolution_matches_upsample_then_convolve():
    """Each of the four output phases sums the right 3x3 taps, at every border, in both layouts."""
    from torch.nn import functional as F

    from napari_emdiffuse.engine.network import UpsampleConv

    torch.manual_seed(1)
    conv = UpsampleConv(6)
    x = torch.randn(2, 6, 5, 7)
    want = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(conv(x), want, rtol=1e-5, atol=1e-6)
    conv = conv.to(memory_format=torch.channels_last)
    torch.testing.assert_close(conv(x.contiguous(memory_format=torch.channels_last)), want, rtol=1e-5, atol=1e-6)


def test_the_network_runs_under_bf16_autocast_close_to_float32():
    """bf16 inference (a GPU, or a CPU with native bf16): every layer, the transposed-convolution
    upsampling and the folded FiLM included, runs in bf16 (emulated here) and stays near float32."""
    cfg = NetworkConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,), dropout=0.0)
    torch.manual_seed(0)
    net = UNet(cfg, out_channels=1, cond_channels=1).to(memory_format=torch.channels_last).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x, cond, c = torch.randn(2, 1, 16, 24), torch.randn(2, 1, 16, 24), torch.tensor([0.3])
    with torch.inference_mode():
        want = net(x, cond, c)
        with torch.autocast("cpu", torch.bfloat16):
            got = net(x, cond, c)
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() <= 0.05 * want.abs().max()


def test_weight_files_keep_their_names_across_the_upsampling_change(tmp_path):
    """Files name the upsampling convolution as before :class:`UpsampleConv` (one index later,
    after a parameter-free ``nn.Upsample``), so older and newer versions read each other's files;
    loading takes either naming, also with the network nested (as in a bioimage.io package)."""
    from napari_emdiffuse import variants
    from napari_emdiffuse.model_file import Model, ModelInfo

    preset = variants.complete(load_preset("tiny"))
    torch.manual_seed(0)
    model = Model(preset, ModelInfo())
    for p in model.network.parameters():
        torch.nn.init.normal_(p, std=0.1)
    names = model.network.file_names()
    state = model.network.state_dict()
    assert names and set(names.values()) <= set(state) and not set(names) & set(state)
    model.save(tmp_path / "m")
    loaded = Model.load(tmp_path / "m")
    x, cond, c = torch.randn(1, 1, 32, 32), torch.randn(1, 1, 32, 32), torch.tensor([0.5])
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x, cond, c), model.network(x, cond, c))
    own = Model(preset, ModelInfo()).network
    own.load_state_dict({k: v.detach() for k, v in model.network.named_parameters()})
    torch.testing.assert_close(own.state_dict(), state)
    wrapper = torch.nn.ModuleDict({"network": Model(preset, ModelInfo()).network})
    assert set(wrapper.state_dict()) == {f"network.{k}" for k in state}
    wrapper.load_state_dict({f"network.{k}": v for k, v in state.items()})
    torch.testing.assert_close(wrapper["network"].state_dict(), state)


def test_denoiser_gives_a_sampler_step_one_noise_level():
    """A scalar sigma (a sampler step) reaches the network as one level for the batch, and the
    result equals that of one level per item."""
    from napari_emdiffuse.engine.diffusion import Denoiser

    cfg = NetworkConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(), dropout=0.0)
    torch.manual_seed(0)
    net = UNet(cfg)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    seen = []
    net.register_forward_pre_hook(lambda _m, args: seen.append(args[2].shape))
    denoiser = Denoiser(net, "edm", 0.3)
    x, cond = torch.randn(3, 1, 16, 16), torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        one = denoiser(x, torch.tensor(0.8), cond)
        each = denoiser(x, torch.full((3,), 0.8), cond)
    assert seen == [torch.Size([1]), torch.Size([3])]
    torch.testing.assert_close(one, each, rtol=1e-5, atol=1e-6)
