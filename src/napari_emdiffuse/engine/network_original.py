"""The network of the original EMDiffuse code, so that its published weights load as they are.

EMDiffuse (Lu et al. 2024) uses the guided-diffusion / Palette UNet: ``input_blocks``,
``middle_block`` and ``output_blocks`` of residual blocks (``in_layers``, ``emb_layers``,
``out_layers``, scale-shift norm), residual blocks that halve and double the resolution,
GroupNorm with 32 groups (16 at width 16), self-attention only where the original config's
``attn_res`` names a level's downsampling rate (in the published configs: only in the middle
block), and a noise embedding of gamma = alpha-bar (not t) through a sinusoidal embedding and an
MLP. The vEMDiffuse network adds the same embedding of the index of the slice to generate,
concatenated to the noise embedding. Module and parameter names follow the original's
state-dict keys, so its weights map 1:1.

:class:`OriginalNetwork` presents the interface of our :class:`~.network.UNet`
(``forward(x_noisy, cond, c_noise)``, ``size_multiple``): it turns our ``c_noise`` back into the
original's gamma, puts the condition first in the channel order as the original does, and for
the vEMDiffuse network treats each of the ``out_channels`` channels as one slice of the gap
(channel ``c`` is the slice ``c + 1`` after the earlier bounding slice), each generated with its
own slice index as the original's sampler does.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..config import NetworkConfig


def sinusoid(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """The original's embedding of gamma (or a slice index): cosines first, then sines."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    args = values.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def _mlp(dim: int, emb_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))


class Block(nn.Sequential):
    """A run of layers; residual blocks also get the embedding (the original's EmbedSequential)."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h


class ResBlock(nn.Module):
    """Residual block with scale-shift (FiLM) conditioning; ``resample`` "down" or "up" makes it
    halve (average pooling) or double (nearest) the resolution between its norm and first conv."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, groups: int, resample: str | None = None) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * cout))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(groups, cout), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(cout, cout, 3, padding=1)
        )
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        self.skip_connection = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.resample = resample

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm_act, conv = self.in_layers[:2], self.in_layers[2]
        h = conv(self._resample(norm_act(x)))
        x = self._resample(x)
        scale, shift = self.emb_layers(emb).to(h.dtype)[:, :, None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        return self.skip_connection(x) + self.out_layers[1:](h)


class AttentionBlock(nn.Module):
    """Self-attention over all pixels; heads of ``head_channels``, each head's q, k and v
    channels contiguous in ``qkv``'s output (the original's "legacy" order)."""

    def __init__(self, channels: int, head_channels: int, groups: int) -> None:
        super().__init__()
        if channels % head_channels:
            raise ValueError(f"attention width {channels} is not a multiple of head_channels {head_channels}")
        self.heads = channels // head_channels
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        qkv = self.qkv(self.norm(flat)).reshape(b, self.heads, 3 * c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).chunk(3, dim=-1)  # (b, heads, tokens, head_channels) each
        out = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h * w)
        return (flat + self.proj_out(out)).reshape(b, c, h, w)


class PaletteUNet(nn.Module):
    """The original's UNet, ``forward(x, gamma[, slice_index]) -> eps`` with ``x`` = condition
    channels then the noisy image."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int,
        mults: tuple[int, ...],
        res_blocks: int,
        attention_levels: tuple[int, ...],
        head_channels: int,
        dropout: float,
        slice_index: bool,
    ) -> None:
        super().__init__()
        self.width = width
        groups = 16 if width == 16 else 32
        emb_dim = 4 * width
        self.cond_embed = _mlp(width, emb_dim)
        if slice_index:
            self.channel_embed = _mlp(width, emb_dim)
        block_emb = emb_dim * (2 if slice_index else 1)

        def res(cin: int, cout: int, resample: str | None = None) -> ResBlock:
            return ResBlock(cin, cout, block_emb, dropout, groups, resample)

        ch = width * mults[0]
        self.input_blocks = nn.ModuleList([Block(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skips = [ch]
        for level, mult in enumerate(mults):
            for _ in range(res_blocks):
                layers: list[nn.Module] = [res(ch, width * mult)]
                ch = width * mult
                if level in attention_levels:
                    layers.append(AttentionBlock(ch, head_channels, groups))
                self.input_blocks.append(Block(*layers))
                skips.append(ch)
            if level < len(mults) - 1:
                self.input_blocks.append(Block(res(ch, ch, "down")))
                skips.append(ch)
        self.middle_block = Block(res(ch, ch), AttentionBlock(ch, head_channels, groups), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(mults))):
            for i in range(res_blocks + 1):
                layers = [res(ch + skips.pop(), width * mults[level])]
                ch = width * mults[level]
                if level in attention_levels:
                    layers.append(AttentionBlock(ch, head_channels, groups))
                if level and i == res_blocks:
                    layers.append(res(ch, ch, "up"))
                self.output_blocks.append(Block(*layers))
        self.out = nn.Sequential(nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    def forward(self, x: torch.Tensor, gamma: torch.Tensor, slice_index: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.cond_embed(sinusoid(gamma.reshape(-1), self.width))
        if hasattr(self, "channel_embed"):
            emb = torch.cat([emb, self.channel_embed(sinusoid(slice_index.reshape(-1), self.width))], dim=1)
        emb = emb.to(x.dtype)
        h, hs = x, []
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def gamma_from_c_noise(c_noise: torch.Tensor) -> torch.Tensor:
    """The original's noise input gamma = alpha-bar = 1 / (1 + sigma^2) from our
    ``c_noise = log(sigma) / 4`` (:func:`~.diffusion.c_noise`), computed in float64."""
    return torch.sigmoid(-8.0 * c_noise.double()).float()


class OriginalNetwork(nn.Module):
    """The original network behind our network interface ``forward(x_noisy, cond, c_noise)``.

    The parameters live under ``denoise_fn``, as in the original's saved state dicts.
    """

    def __init__(self, cfg: NetworkConfig, out_channels: int = 1, cond_channels: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_channels = out_channels
        self.cond_channels = cond_channels
        per_call = 1 if cfg.slice_index else out_channels
        self.denoise_fn = PaletteUNet(
            cond_channels + per_call,
            per_call,
            cfg.base_channels,
            tuple(cfg.channel_mults),
            cfg.num_res_blocks,
            tuple(cfg.attention_levels),
            cfg.head_channels,
            cfg.dropout,
            cfg.slice_index,
        )

    @property
    def size_multiple(self) -> int:
        return 2 ** (len(self.cfg.channel_mults) - 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        gamma = gamma_from_c_noise(c_noise.reshape(-1)).expand(x.shape[0])
        if not self.cfg.slice_index:
            return self.denoise_fn(torch.cat([cond, x], dim=1), gamma)
        b, k, h, w = x.shape  # one call per slice of the gap, all in one batch
        x1 = x.transpose(0, 1).reshape(k * b, 1, h, w)
        c1 = cond.repeat(k, 1, 1, 1)
        index = torch.arange(k, device=x.device, dtype=torch.float32).repeat_interleave(b)
        eps = self.denoise_fn(torch.cat([c1, x1], dim=1), gamma.repeat(k), index)
        return eps.reshape(k, b, h, w).transpose(0, 1)
