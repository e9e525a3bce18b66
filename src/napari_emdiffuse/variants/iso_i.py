"""vEMDiffuse-i: isotropic reconstruction learnt from an isotropic volume (e.g. FIB-SEM).

From slices ``k`` apart the network generates the ``k - 1`` slices between them *jointly*, as
``k - 1`` output channels of one sample, so the slices of one gap are one coherent piece of
volume rather than independent guesses that flicker. Its condition is four input slices: the
two that bound the gap and the next one on each side, so the gaps on either side of an input
slice see the same context and join without a jump (at the volume's ends the bounding slice
stands in for the missing neighbour, in training as in prediction).

Training pairs come from the isotropic volume itself: every ``k``-th slice is the condition,
the slices between are the target, which the network learns as its difference from linear
interpolation (:class:`~.base.ResidualPairs`). Prediction keeps the input slices unchanged,
interleaves the generated ones, and divides the z voxel size by ``k``. With
``emdiffuse_original`` (imported original weights) the gaps are filled as the original does
(:func:`~.volume.predict_original_gap`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data.normalise import Normaliser, fit_normaliser
from ..engine.grid import TileGrid
from ..errors import InputError
from .base import Block, BlockJob, Geometry, PairSource, PatchPairs, ResidualPairs, Split, Variant, augment
from .factor import WholeFactor
from .volume import ORIGINAL_HELP, OriginalGapPairs, anisotropy_warning, check_volume, decimated_pair, gap_blocks, predict_gap, predict_original_gap, volume_region, z_factor_phrase

MAX_FACTOR = 12
#: chance, in training, that an outer context slice is replaced by the bounding one, as happens
#: at the first and last gap of a volume
EDGE_CHANCE = 0.1


class IsoIOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    factor: WholeFactor(2, MAX_FACTOR, "z spacing of the input divided by the output's") = 4
    emdiffuse_original: bool = Field(False, description=ORIGINAL_HELP)


def context_slices(g: int, n: int) -> list[int]:
    """Input slices the network sees for the gap between slices ``g`` and ``g + 1`` of ``n``."""
    return [g - 1 if g >= 1 else g, g, g + 1, g + 2 if g + 2 < n else g + 1]


def linear_gap(cond: np.ndarray, k: int) -> np.ndarray:
    """The baseline the network improves on: linear interpolation between the bounding slices
    (channels 1 and 2 of ``(n, 4, h, w)``) at the ``k - 1`` positions inside the gap."""
    t = (np.arange(1, k, dtype=np.float32) / k)[None, :, None, None]
    return cond[:, 1:2] * (1 - t) + cond[:, 2:3] * t


class GapPairs(PatchPairs):
    """Random gaps of an isotropic volume: four slices ``k`` apart around the gap as the condition,
    the ``k - 1`` slices inside it as the target, the same patch of each."""

    def __init__(
        self,
        volume: np.ndarray,
        normaliser: Normaliser,
        factor: int,
        rows: tuple[int, int],
        cols: tuple[int, int],
        min_std: float,
    ) -> None:
        self.volume, self.normaliser, self.k = volume, normaliser, factor
        self.rows, self.cols, self.min_std = rows, cols, min_std
        self.summary = {"slices": int(volume.shape[0]), "rows": list(rows), "cols": list(cols), "factor": factor}

    def _one(self, rng: np.random.Generator, patch: int) -> tuple[np.ndarray, np.ndarray]:
        k, depth = self.k, self.volume.shape[0]
        best = None
        for _ in range(10):  # prefer patches with structure
            z0 = int(rng.integers(depth - k))
            y = int(rng.integers(self.rows[0], self.rows[1] - patch + 1))
            x = int(rng.integers(self.cols[0], self.cols[1] - patch + 1))
            before = z0 - k if z0 - k >= 0 and rng.random() >= EDGE_CHANCE else z0
            after = z0 + 2 * k if z0 + 2 * k < depth and rng.random() >= EDGE_CHANCE else z0 + k
            block = self.volume[:, y : y + patch, x : x + patch]
            target = block[z0 + 1 : z0 + k]
            std = float(self.normaliser.forward(target).std())
            if best is None or std > best[0]:
                best = (std, block[[before, z0, z0 + k, after]], target)
            if std >= self.min_std:
                break
        _, cond, target = best
        cond, target = self.normaliser.forward(cond), self.normaliser.forward(target)
        if rng.integers(2):  # structure has no preferred z direction
            cond, target = cond[::-1], target[::-1]
        return augment(cond, target, rng)


class IsoI(Variant):
    name = "iso_i"
    title = "vEMDiffuse-i (isotropic reconstruction, isotropic training data)"
    description = (
        "Generates the missing slices of an anisotropic volume, learnt from an isotropic volume; "
        "z voxel size divided by the factor, with an uncertainty map."
    )
    training_inputs = ("volume",)
    baseline_name = "linear interpolation"
    input_ndims = (3,)
    options_model = IsoIOptions

    def channels(self, options: BaseModel) -> tuple[int, int]:
        return options.factor - 1, 2 if options.emdiffuse_original else 4

    def output_geometry(self, shape: Sequence[int], voxel: Sequence[float], options: BaseModel) -> Geometry:
        k = options.factor
        return Geometry(((shape[0] - 1) * k + 1, *shape[1:]), (voxel[0] / k, *voxel[1:]))

    def option_phrases(self, options: BaseModel) -> list[str]:
        return [z_factor_phrase(options.factor)] + ([self.original_phrase()] if options.emdiffuse_original else [])

    def voxel_warning(self, voxel: Sequence[float], options: BaseModel) -> str | None:
        return anisotropy_warning(voxel, options.factor, self.title.split(" (")[0])

    def check_input(self, image: Any, options: BaseModel, name: str = "image") -> None:
        check_volume(image, self.title, name, 2, "(two slices bound each gap it fills)")

    def from_clean(self, clean: np.ndarray, options: BaseModel, **degradation: Any) -> dict[str, Any]:
        raise InputError(f"{self.title} learns from an isotropic volume as it is: give it as the volume (--volume)")

    def calibration_pair(self, clean: np.ndarray, options: BaseModel, **degradation: Any) -> tuple[np.ndarray, np.ndarray]:
        """Every ``factor``-th slice of an isotropic volume, and the volume as the truth."""
        return decimated_pair(clean, options.factor, self.title)

    def calibration_voxel(self, voxel: Sequence[float], options: BaseModel) -> tuple[float, ...]:
        """Every ``factor``-th slice kept: the slices lie ``factor`` times further apart."""
        return (voxel[0] * options.factor, *voxel[1:])

    def training_pairs(self, arrays: dict[str, Any], options: BaseModel, split: Split) -> PairSource:
        k = options.factor
        volume = arrays["volume"]
        check_volume(volume, self.title, "volume", k + 1, f"at factor {k} (two slices {k} apart)")
        vol, rows, cols = volume_region(volume, split)
        norm = fit_normaliser(vol, name="volume")
        pairs = (OriginalGapPairs if options.emdiffuse_original else GapPairs)(vol, norm, k, rows, cols, split.min_std)
        pairs.patch = split.fit_patch("volume", volume.shape, rows, cols)
        pairs.summary["normaliser"] = norm.to_dict()
        return pairs if options.emdiffuse_original else ResidualPairs(pairs, lambda c: linear_gap(c, k))

    def blocks(self, shape: Sequence[int], options: BaseModel, samples: int = 0, grid: TileGrid | None = None) -> list[Block]:
        if options.emdiffuse_original:
            return gap_blocks(shape, options.factor)
        return gap_blocks(shape, options.factor, context_slices)

    def predict_block(self, source: np.ndarray, block: Block, options: BaseModel, job: BlockJob) -> None:
        k, g, z0 = options.factor, block.index, block.source[0].start
        if options.emdiffuse_original:
            return predict_original_gap(source, block, k, job)
        idx = [i - z0 for i in context_slices(g, z0 + source.shape[0])]  # the source ends where the volume's context does
        forward = job.normaliser.forward

        def read(y0: int, y1: int) -> np.ndarray:
            return forward(np.stack([source[i, y0:y1] for i in idx]))

        def base(y0: int, y1: int) -> np.ndarray:
            lo, hi = (forward(source[i - z0, y0:y1]) for i in (g, g + 1))
            return linear_gap(np.stack([lo, lo, hi, hi])[None], k)[0]

        predict_gap(source, block, k, read, job, base)
