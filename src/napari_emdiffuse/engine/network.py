"""Conditional UNet for grey-scale EM (the SR3/EMDiffuse network shape).

The noisy image and the condition (the noisy input, an upsampled low-resolution image, or
neighbouring slices) are concatenated as channels; the noise level enters every residual block
through a FiLM (scale and shift) embedding. Self-attention is used only at the levels listed in
``attention_levels``; the bottleneck always has one attention block when ``bottleneck_attention``.

Written for speed without changing the arithmetic: the FiLM projections of all blocks are one
matrix product per evaluation, activations and residual sums run in place on fresh tensors, the
FiLM is one fused multiply-add (folded into the GroupNorm's affine when the batch shares one noise
level, as in sampling), upsampling is a transposed convolution (:class:`UpsampleConv`), and
attention reads q, k, v as views of a channels-last feature map (the layout
:func:`~.device.prepare_network` gives the network on every device).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..config import NetworkConfig


def _groups(channels: int) -> int:
    """Largest of 32, 16, 8, 4, 2, 1 that divides ``channels`` (GroupNorm needs a divisor)."""
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0:
            return g
    return 1


def noise_embedding(c_noise: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of a continuous noise level (one value per batch item)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=c_noise.device) / half)
    args = c_noise.float()[:, None] * 1000.0 * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """``film`` is this block's ``self.emb(silu(embedding))``, computed by :class:`UNet` for all
        blocks at once; one row of it for the whole batch when all items share a noise level."""
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        scale, shift = film.chunk(2, dim=1)
        if film.shape[0] == 1:  # the FiLM folds into the normalisation's own scale and shift: one pass fewer
            norm, gain = self.norm2, 1 + scale[0]
            h = F.group_norm(h, norm.num_groups, norm.weight * gain, torch.addcmul(shift[0], norm.bias, gain), norm.eps)
        else:
            h = torch.addcmul(shift[:, :, None, None], self.norm2(h), 1 + scale[:, :, None, None])
        h = self.conv2(self.drop(F.silu(h, inplace=True)))
        return h.add_(self.skip(x))


class Attention(nn.Module):
    """Multi-head self-attention over all pixels of a feature map (uses fused SDPA kernels)."""

    def __init__(self, channels: int, head_dim: int = 32) -> None:
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # (b, h, w, 3c) is a free view of a channels-last map; channel = (q|k|v, head, dim)
        qkv = self.qkv(self.norm(x)).permute(0, 2, 3, 1).reshape(b, h * w, 3, self.heads, c // self.heads)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # (b, heads, h*w, dim)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return self.out(o).add_(x)


#: for each tap of the 4x4 transposed kernel, the rows (or columns) of the 3x3 kernel it sums
_PHASE_TAPS = ([2], [1, 2], [0, 1], [0])


class UpsampleConv(nn.Conv2d):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution (padding 1), computed as one
    stride-2 transposed convolution whose 4x4 kernel sums the 3x3 one's taps. Each output pixel
    sees only 2 x 2 input pixels, so this does 4 instead of 9 multiply-adds per output pixel and
    input channel and never forms the upsampled map (1.5-2x as fast, measured); same parameters, same
    result within float32 rounding."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.stack([self.weight[:, :, taps].sum(2) for taps in _PHASE_TAPS], 2)
        kernel = torch.stack([rows[..., taps].sum(3) for taps in _PHASE_TAPS], 3)
        return F.conv_transpose2d(x, kernel.transpose(0, 1), self.bias, stride=2, padding=1)


class UNet(nn.Module):
    """Noise-conditional UNet: ``forward(x_noisy, cond, c_noise) -> prediction``; ``c_noise`` holds
    one noise level per batch item, or one for the whole batch (as sampling gives it: faster).

    ``x_noisy`` has ``out_channels`` channels, ``cond`` has ``cond_channels``; spatial size must
    be a multiple of :attr:`size_multiple` (tiling pads to it).
    """

    def __init__(self, cfg: NetworkConfig, out_channels: int = 1, cond_channels: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_channels = out_channels
        self.cond_channels = cond_channels
        base = cfg.base_channels
        emb_dim = 4 * base
        self.emb_dim = emb_dim
        self.embed = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(out_channels + cond_channels, base, 3, padding=1)

        widths = [base * m for m in cfg.channel_mults]
        self.down = nn.ModuleList()
        skips = [base]
        ch = base
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                blocks = [ResBlock(ch, width, emb_dim, cfg.dropout)]
                ch = width
                if level in cfg.attention_levels:
                    blocks.append(Attention(ch))
                self.down.append(nn.ModuleList(blocks))
                skips.append(ch)
            if level < len(widths) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))
                skips.append(ch)

        mid = [ResBlock(ch, ch, emb_dim, cfg.dropout)]
        if cfg.bottleneck_attention:
            mid.append(Attention(ch))
        mid.append(ResBlock(ch, ch, emb_dim, cfg.dropout))
        self.mid = nn.ModuleList(mid)

        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width = widths[level]
            for i in range(cfg.num_res_blocks + 1):
                blocks = [ResBlock(ch + skips.pop(), width, emb_dim, cfg.dropout)]
                ch = width
                if level in cfg.attention_levels:
                    blocks.append(Attention(ch))
                if level > 0 and i == cfg.num_res_blocks:
                    blocks.append(UpsampleConv(ch))
                self.up.append(nn.ModuleList(blocks))

        self.head = nn.Sequential(nn.GroupNorm(_groups(ch), ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self._res_blocks = [m for m in self.modules() if isinstance(m, ResBlock)]  # in forward order
        self._register_state_dict_hook(_to_file_names)

    def file_names(self) -> dict[str, str]:
        """The names weight files give the upsampling convolutions, by their names in this module.
        Files keep the layout they always had, with the convolution one index later, after a
        parameter-free ``nn.Upsample`` (before :class:`UpsampleConv`): ``state_dict`` writes these
        names and loading accepts them, so files stay readable by every version."""
        names = {}
        for n, blocks in enumerate(self.up):
            for j, block in enumerate(blocks):
                if isinstance(block, UpsampleConv):
                    names.update({f"up.{n}.{j}.{p}": f"up.{n}.{j + 1}.{p}" for p in ("weight", "bias")})
        return names

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # runs before the children load, wherever this network is nested (a bioimage.io package)
        for own, stored in self.file_names().items():
            if prefix + stored in state_dict and prefix + own not in state_dict:
                state_dict[prefix + own] = state_dict.pop(prefix + stored)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.cfg.channel_mults) - 1)

    def _films(self, emb: torch.Tensor) -> dict[ResBlock, torch.Tensor]:
        """Every residual block's FiLM projection of the embedding, as one matrix product."""
        blocks = self._res_blocks
        weight = torch.cat([b.emb.weight for b in blocks])
        bias = torch.cat([b.emb.bias for b in blocks])
        out = F.linear(F.silu(emb), weight, bias).split([b.emb.out_features for b in blocks], dim=1)
        return dict(zip(blocks, out))

    @staticmethod
    def _run(blocks: nn.ModuleList, h: torch.Tensor, films: dict[ResBlock, torch.Tensor]) -> torch.Tensor:
        for block in blocks:
            h = block(h, films[block]) if isinstance(block, ResBlock) else block(h)
        return h

    def forward(self, x: torch.Tensor, cond: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        emb = self.embed(noise_embedding(c_noise, self.cfg.base_channels).to(x.dtype))
        films = self._films(emb)
        h = self.stem(torch.cat([x, cond], dim=1))
        hs = [h]
        for blocks in self.down:
            h = self._run(blocks, h, films)
            hs.append(h)
        h = self._run(self.mid, h, films)
        for blocks in self.up:
            h = self._run(blocks, torch.cat([h, hs.pop()], dim=1), films)
        return self.head(h)


def _to_file_names(net: UNet, state: dict[str, Any], prefix: str, _metadata: Any) -> None:
    """``state_dict`` hook: the upsampling convolutions under the names files give them."""
    for own, stored in net.file_names().items():
        if prefix + own in state:
            state[prefix + stored] = state.pop(prefix + own)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
