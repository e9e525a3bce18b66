"""The benchmark's reference: the published EMDiffuse network layout, reimplemented plainly.

EMDiffuse (Lu et al. 2024) uses the guided-diffusion UNet of Dhariwal & Nichol (2021) through
Palette: FiLM ("scale-shift") residual blocks, residual blocks that resample (average pooling
down, nearest up), GroupNorm computed in float32, ``x * sigmoid(x)`` as SiLU, and attention
that forms the full ``T x T`` weight matrix with two einsums and a float32 softmax. Its
configuration (``attn_res: [16]`` with four levels, so ``ds`` never reaches 16) leaves one
attention block, at the bottleneck. This module rebuilds that layout for timing only, so that
``bench_throughput.py`` can time "the original network of the same size" in the same process;
it is written from the paper's description and the layout, not copied, and is never used to
enhance images. ``engine/network_original.py`` supersedes it when present.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from napari_emdiffuse.config import NetworkConfig


def _silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class _Norm(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, groups: int, resample: str = "") -> None:
        super().__init__()
        self.n1, self.c1 = _Norm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb, 2 * cout)
        self.n2, self.c2 = _Norm(groups, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)
        self.resample = resample

    def _rs(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return nn.functional.avg_pool2d(x, 2)
        if self.resample == "up":
            return nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.c1(self._rs(_silu(self.n1(x))))
        x = self._rs(x)
        scale, shift = self.film(_silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.n2(h) * (1 + scale) + shift
        return self.skip(x) + self.c2(_silu(h))


class _Attn(nn.Module):
    def __init__(self, ch: int, groups: int, head_channels: int = 32) -> None:
        super().__init__()
        self.heads = max(1, ch // head_channels)
        self.norm = _Norm(groups, ch)
        self.qkv, self.proj = nn.Conv1d(ch, 3 * ch, 1), nn.Conv1d(ch, ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, hh, ww = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        t = qkv.shape[-1]
        ch = c // self.heads
        q, k, v = qkv.reshape(b * self.heads, 3 * ch, t).split(ch, dim=1)  # heads before q/k/v
        s = 1 / math.sqrt(math.sqrt(ch))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * s, k * s).float(), dim=-1).type(q.dtype)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, t)
        return (flat + self.proj(a)).reshape(b, c, hh, ww)


class ReferenceUNet(nn.Module):
    """``forward(x_noisy, cond, c_noise)`` like :class:`~napari_emdiffuse.engine.network.UNet`,
    with the published layout at the widths, levels and block counts of ``cfg``."""

    def __init__(self, cfg: NetworkConfig, out_channels: int = 1, cond_channels: int = 1) -> None:
        super().__init__()
        base = cfg.base_channels
        groups = 16 if base == 16 else min(32, base)
        emb = 4 * base
        self.base = base
        self.embed = nn.Sequential(nn.Linear(base, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.stem = nn.Conv2d(out_channels + cond_channels, base, 3, padding=1)
        widths = [base * m for m in cfg.channel_mults]
        self.down, chans, ch = nn.ModuleList(), [base], base
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                self.down.append(nn.ModuleList([_Res(ch, width, emb, groups)]))
                ch = width
                chans.append(ch)
            if level < len(widths) - 1:
                self.down.append(nn.ModuleList([_Res(ch, ch, emb, groups, "down")]))
                chans.append(ch)
        self.mid = nn.ModuleList([_Res(ch, ch, emb, groups), _Attn(ch, groups), _Res(ch, ch, emb, groups)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(widths))):
            for i in range(cfg.num_res_blocks + 1):
                blocks = [_Res(ch + chans.pop(), widths[level], emb, groups)]
                ch = widths[level]
                if level and i == cfg.num_res_blocks:
                    blocks.append(_Res(ch, ch, emb, groups, "up"))
                self.up.append(nn.ModuleList(blocks))
        self.head = nn.Sequential(_Norm(groups, ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        half = self.base // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=x.device) / half)
        args = c_noise.float()[:, None] * freqs[None]
        emb = self.embed(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))
        h = self.stem(torch.cat([x, cond], dim=1))
        hs = [h]
        for blocks in self.down:
            for blk in blocks:
                h = blk(h, emb)
            hs.append(h)
        for blk in self.mid:
            h = blk(h, emb)
        for blocks in self.up:
            h = torch.cat([h, hs.pop()], dim=1)
            for blk in blocks:
                h = blk(h, emb)
        return self.head(h)
