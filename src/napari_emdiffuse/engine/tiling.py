"""Tiled sampling of a whole 2D plane, of any size, with K samples per tile.

- Tiles overlap and are blended with a smooth window (raised cosine over the overlap), the sum of
  weights normalised away, so there is no seam and no dropped edge.
- A plane smaller than a tile, or not a multiple of the network's size, is padded by reflection
  inside the tile and cropped back.
- The starting noise (and the fresh noise of ancestral samplers) is keyed to *image position*,
  sample index and step: neighbouring tiles see the same noise where they overlap, so a tiled
  result agrees with an untiled one and sample ``k`` is one coherent image across tiles.
- Rows are read in strips and written out as soon as no pending tile covers them, so memory is
  bounded by about two tile rows, whatever the plane's height; outputs may be zarr arrays.
- Tiles and samples are evaluated together in batches; a GPU out-of-memory halves the batch.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

import numpy as np
import torch

from .device import is_out_of_memory
from .grid import Rect, Tile, TileGrid
from .rng import splitmix
from .samplers import Sampler, Step

log = logging.getLogger(__name__)

NOISE_BLOCK = 64


class ArrayLike(Protocol):
    shape: tuple[int, ...]

    def __setitem__(self, key, value) -> None: ...


ReadFn = Callable[[int, int], np.ndarray]
"""``read(y0, y1) -> (C, y1 - y0, W)`` float32 rows of the (already normalised) condition."""


def ramp(n: int, overlap: int, start: bool = True, end: bool = True) -> np.ndarray:
    """1D blending weights: 1, with raised-cosine ramps from 0 over ``overlap`` pixels at the ends
    that face a neighbouring tile (``start``/``end``). A tile's outermost pixels, where the
    network sees the least context, then count for nothing next to a neighbour; at an image
    edge there is no neighbour and no ramp."""
    w = np.ones(n, np.float32)
    k = min(overlap, n // 2)
    if k > 0:
        r = (0.5 - 0.5 * np.cos(np.pi * np.arange(k) / k)).astype(np.float32)
        if start:
            w[:k] = r
        if end:
            w[n - k :] = np.minimum(w[n - k :], r[::-1])
    return w


def tile_grid(tile_size: int, overlap: int, size_multiple: int) -> TileGrid:
    """The tiles a :class:`TiledSampler` lays over a plane, without building one (what cuts a
    prediction into blocks): ``tile_size`` rounded down to the network's ``size_multiple`` (at
    least one multiple), ``overlap`` under half a tile and at least 2 px (a 1 px ramp would weigh
    its pixel 0 in both tiles), or none."""
    tile = max(size_multiple, tile_size // size_multiple * size_multiple)
    return TileGrid(tile, max(2, min(overlap, tile // 2 - 1)) if overlap else 0)


def keyed_noise(seed: int, sample: int, step: int, channels: int, y0: int, x0: int, h: int, w: int) -> torch.Tensor:
    """Gaussian noise for the image region ``[y0:y0+h, x0:x0+w]``, the same whichever tile asks."""
    b = NOISE_BLOCK
    by0, bx0 = y0 // b, x0 // b
    by1, bx1 = -(-(y0 + h) // b), -(-(x0 + w) // b)
    out = torch.empty(channels, (by1 - by0) * b, (bx1 - bx0) * b)
    g = torch.Generator()
    for by in range(by0, by1):
        for bx in range(bx0, bx1):
            g.manual_seed(splitmix(seed, sample, step, by, bx))
            yy, xx = (by - by0) * b, (bx - bx0) * b
            out[:, yy : yy + b, xx : xx + b] = torch.randn(channels, b, b, generator=g)
    oy, ox = y0 - by0 * b, x0 - bx0 * b
    return out[:, oy : oy + h, ox : ox + w]


def _pad_to(a: np.ndarray, h: int, w: int) -> np.ndarray:
    ph, pw = h - a.shape[-2], w - a.shape[-1]
    if ph == 0 and pw == 0:
        return a
    mode = "reflect" if ph < a.shape[-2] and pw < a.shape[-1] else "symmetric"
    if ph >= a.shape[-2] * 2 or pw >= a.shape[-1] * 2:
        mode = "edge"
    return np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)], mode=mode)


class TiledSampler:
    """Runs a sampler over a plane tile by tile; see the module docstring.

    ``denoise(x, sigma, cond)`` is the model on ``device``; ``step_callback(done, total)`` is
    called after every sampler step (raise from it to cancel).
    """

    def __init__(
        self,
        denoise: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        sampler: Sampler,
        sigmas: torch.Tensor,
        out_channels: int,
        size_multiple: int,
        tile_size: int,
        overlap: int,
        samples: int,
        tile_batch: int,
        device: torch.device,
        seed: int = 0,
        step_callback: Callable[[int, int], None] | None = None,
        pack: bool = False,
    ) -> None:
        self.denoise = denoise
        self.sampler = sampler
        self.sigmas = sigmas.to(device)
        self.out_channels = out_channels
        self.m = size_multiple
        grid = tile_grid(tile_size, overlap, size_multiple)
        self.tile, self.overlap = grid.tile, grid.overlap
        self.samples = samples
        self.batch = max(1, tile_batch)
        self.device = device
        self.seed = seed
        self.step_callback = step_callback
        self.pack = pack

    @property
    def grid(self) -> TileGrid:
        return TileGrid(self.tile, self.overlap)

    def count_steps(self, height: int, width: int, region: Rect | None = None) -> int:
        """Progress units :meth:`run` will report for a plane (or its ``region``): sampler steps
        times tile samples, so the total holds however the tiles are batched (an out-of-memory
        retry halves the batch)."""
        n_items = len(self.grid.tiles(height, width, region)) * self.samples
        return n_items * (len(self.sigmas) - 1)

    def _tile_shape(self, height: int, width: int) -> tuple[int, int]:
        th = min(self.tile, -(-height // self.m) * self.m)
        tw = min(self.tile, -(-width // self.m) * self.m)
        return th, tw

    def run(
        self,
        read: ReadFn,
        height: int,
        width: int,
        out_mean: ArrayLike,
        out_std: ArrayLike | None = None,
        out_samples: ArrayLike | None = None,
        plane_key: int = 0,
        progress_offset: int = 0,
        progress_total: int | None = None,
        region: Rect | None = None,
    ) -> None:
        """Sample the plane; write mean ``(C, H, W)``, std and samples ``(K, C, H, W)``.

        ``plane_key`` separates the noise of different planes of a stack. ``region``
        ``(y0, y1, x0, x1)``: only that rectangle of the plane (the outputs are its size), from
        only the tiles touching it, bit for bit as in the whole plane's run (the grid, windows
        and noise are the whole plane's, and each pixel sums its tiles in the same order);
        ``read`` then gives the columns of :meth:`TileGrid.span` only. Tiles run in the whole
        plane's batches, those not needed as blanks: a batch's size can change a network's sums.
        A ``pack`` sampler batches only the tiles the region needs instead (no blanks): the same
        result for the same region, which may differ from the whole plane's in the last digits.
        """
        th, tw = self._tile_shape(height, width)
        ry0, ry1, rx0, rx1 = region = region or (0, height, 0, width)
        tiles = self.grid.tiles(height, width)
        needed = set(self.grid.tiles(height, width, region))
        sy0, sy1, sx0, sx1 = self.grid.span(height, width, region)

        def window(t: Tile) -> np.ndarray:
            wy = ramp(t.h, self.overlap, t.y0 > 0, t.y0 + t.h < height)
            wx = ramp(t.w, self.overlap, t.x0 > 0, t.x0 + t.w < width)
            return wy[:, None] * wx[None, :]
        k_, c_ = self.samples, self.out_channels
        band_h = min(height, 2 * th)
        n_acc = 2 + (k_ if out_samples is not None else 0)  # mean, variance, samples...
        span_w = sx1 - sx0  # acc[..., 0] is column sx0 of the plane
        acc = np.zeros((n_acc, c_, band_h, span_w), np.float32)
        wsum = np.zeros((band_h, span_w), np.float32)
        top = sy0  # plane row of acc[..., 0, :]
        strip_y, strip = -1, None
        items = [(ti, k) for ti in range(len(tiles)) if not self.pack or tiles[ti] in needed for k in range(k_)]
        pending: dict[int, list[torch.Tensor]] = {}
        total = progress_total if progress_total is not None else self.count_steps(height, width, region)
        done = progress_offset
        batch = self.batch
        pos = 0
        plane_seed = splitmix(self.seed, plane_key)

        def ensure_rows(rows: int) -> None:
            nonlocal acc, wsum
            if rows > wsum.shape[0]:
                extra = rows - wsum.shape[0]
                acc = np.concatenate([acc, np.zeros((n_acc, c_, extra, span_w), np.float32)], axis=2)
                wsum = np.concatenate([wsum, np.zeros((extra, span_w), np.float32)], axis=0)

        def flush(upto: int) -> None:
            nonlocal top
            if upto <= top:
                return
            n = upto - top
            a, b = max(top, ry0), min(upto, ry1)  # the rows of the region that are final
            if a < b:
                rows, cols, out = slice(a - top, b - top), slice(rx0 - sx0, rx1 - sx0), slice(a - ry0, b - ry0)
                wv = wsum[rows, cols]
                out_mean[:, out] = acc[0, :, rows, cols] / wv
                if out_std is not None:
                    out_std[:, out] = np.sqrt(np.maximum(acc[1, :, rows, cols] / wv, 0.0))
                if out_samples is not None:
                    out_samples[:, :, out] = acc[2:, :, rows, cols] / wv
            acc[:, :, :-n] = acc[:, :, n:].copy()
            acc[:, :, -n:] = 0
            wsum[:-n] = wsum[n:].copy()
            wsum[-n:] = 0
            top = upto

        while pos < len(items):
            chunk = items[pos : pos + batch]
            kept = [(ti, k) for ti, k in chunk if tiles[ti] in needed]
            if not kept:
                pos += len(chunk)
                continue
            conds, noises = [], []
            for ti, k in kept:
                t = tiles[ti]
                if t.y0 != strip_y:
                    strip_y, strip = t.y0, np.asarray(read(t.y0, t.y0 + t.h), dtype=np.float32)
                conds.append(_pad_to(strip[:, :, t.x0 - sx0 : t.x0 - sx0 + t.w], th, tw))
                noises.append((t, k))
            blank = len(chunk) - len(kept)  # the batch's other tiles, outside the region
            cond = torch.from_numpy(np.stack(conds + [np.zeros_like(conds[0])] * blank)).to(self.device)

            def noise_fn(step: int, like: torch.Tensor, _items=noises, _blank=blank) -> torch.Tensor:
                n = [keyed_noise(plane_seed, k, step, c_, t.y0, t.x0, th, tw) for t, k in _items]
                return torch.stack(n + [torch.zeros_like(n[0])] * _blank).to(like.device, like.dtype)

            def callback(step: Step, _items=kept) -> None:
                if self.step_callback is not None:
                    self.step_callback(done + len(_items) * (step.i + 1), total)

            x = noise_fn(-1, cond) * self.sigmas[0]
            try:
                out = self.sampler(
                    lambda xx, s: self.denoise(xx, s, cond), x, self.sigmas, noise=noise_fn, callback=callback
                )
            except RuntimeError as err:
                if not is_out_of_memory(err) or batch == 1:
                    raise
                batch = max(1, batch // 2)
                log.warning("out of memory with %d tiles at once; retrying with %d", len(chunk), batch)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            done += len(kept) * (len(self.sigmas) - 1)
            out_np = out.float().cpu()
            for (ti, k), o in zip(kept, out_np):
                pending.setdefault(ti, [None] * k_)[k] = o
            for ti in sorted(pending):
                if any(s is None for s in pending[ti]):
                    continue
                t = tiles[ti]
                stack = torch.stack(pending.pop(ti))[:, :, : t.h, : t.w].numpy()  # (K, C, h, w)
                w = window(t)
                r0, r1 = t.y0 - top, t.y0 - top + t.h
                ensure_rows(r1)
                cols = slice(t.x0 - sx0, t.x0 - sx0 + t.w)
                acc[0, :, r0:r1, cols] += stack.mean(0) * w
                acc[1, :, r0:r1, cols] += (stack.var(0, ddof=1) if k_ > 1 else 0 * stack[0]) * w
                if out_samples is not None:
                    acc[2:, :, r0:r1, cols] += stack * w
                wsum[r0:r1, cols] += w
            pos += len(chunk)
            next_y = tiles[items[pos][0]].y0 if pos < len(items) else sy1
            first_pending = min((tiles[ti].y0 for ti in pending), default=next_y)
            flush(min(next_y, first_pending, sy1))
        flush(sy1)
