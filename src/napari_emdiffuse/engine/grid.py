"""Where the tiles of a plane lie: pure geometry, no torch (the variants cut planes into blocks by it).

The grid is defined on the whole plane, so the tiles that touch a rectangle of it are the same
whichever block asks: a block computes its rectangle from exactly those tiles (see
:meth:`..tiling.TiledSampler.run`) and reads the input they span (:meth:`TileGrid.span`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Rect = tuple[int, int, int, int]
"""``(y0, y1, x0, x1)``: the rectangle ``[y0, y1) x [x0, x1)`` of a plane."""


@dataclass(frozen=True)
class Tile:
    y0: int
    x0: int
    h: int  # valid height inside the image (<= tile size)
    w: int


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread tile starts covering ``[0, length)`` with at least ``overlap`` shared pixels."""
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def make_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """All tiles of a plane, row by row."""
    return TileGrid(tile, overlap).tiles(height, width)


@dataclass(frozen=True)
class TileGrid:
    """The tiles (of ``tile`` px, sharing ``overlap`` px) a tiled sampler lays over a plane."""

    tile: int
    overlap: int

    def tiles(self, height: int, width: int, region: Rect | None = None) -> list[Tile]:
        """The plane's tiles, in the order they run; with ``region``, only those touching it."""
        y0, y1, x0, x1 = region or (0, height, 0, width)
        ys = [y for y in tile_starts(height, self.tile, self.overlap) if y < y1 and y + min(self.tile, height - y) > y0]
        xs = [x for x in tile_starts(width, self.tile, self.overlap) if x < x1 and x + min(self.tile, width - x) > x0]
        return [Tile(y, x, min(self.tile, height - y), min(self.tile, width - x)) for y in ys for x in xs]

    def span(self, height: int, width: int, region: Rect) -> Rect:
        """The rectangle the tiles touching ``region`` cover: the input its computation reads."""
        tiles = self.tiles(height, width, region)
        return min(t.y0 for t in tiles), max(t.y0 + t.h for t in tiles), min(t.x0 for t in tiles), max(t.x0 + t.w for t in tiles)
