"""EMDiffuse-r: super-resolution of 2D images and stacks at 2, 3 or 4 times finer pixels.

Training pairs are registered low/high-resolution acquisitions, or high-resolution images alone
with the low-resolution ones simulated as a point-scanning microscope would record them (beam
PSF blur, then binning: :func:`~napari_emdiffuse.data.degrade.psf_bin`). The network's
condition is the low-resolution image upsampled (bicubic) onto the output grid, and it generates
the difference between that and the high-resolution image (:class:`~.base.ResidualPairs`):
only what interpolation cannot give. Stacks are done slice by slice; the output's pixel size
is the input's divided by the factor (z unchanged). With ``emdiffuse_original`` (imported original
weights) the condition is the bilinear upsampling and the target the image itself, as the
original trained them (docs/published-models.md).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data.degrade import poisson_gaussian, psf_bin, to_unit
from ..data.normalise import check_image, fit_normaliser, match_intensity
from ..engine.grid import Rect, TileGrid
from ..errors import InputError
from .base import Block, BlockJob, Geometry, PairSource, ResidualPairs, Split, Variant, plane_blocks, plane_of
from .denoise import AlignedPairs, as_stack, paired_region
from .factor import WholeFactor

#: low-resolution rows read beyond a band, so a band upsamples exactly as the whole image does
#: (the cubic kernel reaches two source pixels either side)
BAND_MARGIN = 3
#: a window's low-resolution columns are read from a multiple of this: OpenCV's resize then
#: computes a row's last pixels as for the whole row (otherwise they can differ by 1 ulp)
COLUMN_ALIGN = 64
#: input pixels per side averaged before fitting the target's gain and offset to the input
#: (a real coarse scan's PSF may differ from the simulated one)
MATCH_SMOOTH = 2


class SuperResOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    factor: WholeFactor(2, 4, "how many times finer the output pixels are: 2, 3 or 4") = 2
    emdiffuse_original: bool = Field(
        False,
        description="drive the network as the original EMDiffuse-r code does (imported weights): the "
        "low-resolution image upsampled bilinearly as the condition, the high-resolution image as the target",
    )


def upsample(image: np.ndarray, factor: int, interpolation: int = cv2.INTER_CUBIC) -> np.ndarray:
    """Bicubic (or, for imported original models, bilinear) upsampling of the last two axes by
    ``factor``, pixel centres aligned.

    This is the network's condition and the benchmark's baseline. Pixel ``i`` of the output
    samples the input at ``(i + 0.5) / factor - 0.5``, so a window read with
    :data:`BAND_MARGIN` extra pixels (:func:`coarse_window`) gives exactly the pixels of the
    whole image's upsampling.
    """
    a = np.asarray(image, np.float32)
    h, w = a.shape[-2:]
    flat = a.reshape(-1, h, w)
    out = np.empty((flat.shape[0], h * factor, w * factor), np.float32)
    for i, plane in enumerate(flat):
        out[i] = cv2.resize(plane, (w * factor, h * factor), interpolation=interpolation)
    return out.reshape(*a.shape[:-2], h * factor, w * factor)


def upsample_bilinear(image: np.ndarray, factor: int) -> np.ndarray:
    """The original EMDiffuse-r's condition: bilinear upsampling (its data set's ``Resize``)."""
    return upsample(image, factor, cv2.INTER_LINEAR)


def coarse_window(rect: Rect, factor: int, size: tuple[int, int]) -> Rect:
    """The low-resolution pixels (of a plane of ``size``) from which the output rectangle
    ``rect`` upsamples exactly as in the whole plane's upsampling."""
    y0, y1, x0, x1 = rect
    h, w = size
    left = max(0, x0 // factor - BAND_MARGIN) // COLUMN_ALIGN * COLUMN_ALIGN
    return max(0, y0 // factor - BAND_MARGIN), min(h, -(-y1 // factor) + BAND_MARGIN), left, min(w, -(-x1 // factor) + BAND_MARGIN)


def upsampled_window(
    part: Any,
    factor: int,
    rect: Rect,
    transform: Callable[[np.ndarray], np.ndarray],
    resize: Callable = upsample,
    origin: tuple[int, int] = (0, 0),
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """The output rectangle ``rect`` of ``resize(transform(plane))``, reading only the
    low-resolution pixels it needs from ``part``: the plane (of ``size``; by default ``part``
    is all of it) from pixel ``origin`` on."""
    a, b, c, d = coarse_window(rect, factor, size or part.shape)
    oy, ox = origin
    up = resize(transform(np.asarray(part[a - oy : b - oy, c - ox : d - ox])), factor)
    y0, y1, x0, x1 = rect
    return up[y0 - a * factor : y1 - a * factor, x0 - c * factor : x1 - c * factor]


def sr_patch(split: Split, plane: Sequence[int], rows: tuple[int, int], cols: tuple[int, int], factor: int) -> int:
    """The largest patch (output pixels) not above the split's that fits the region (of the
    input's ``plane``) and is a multiple of both 16 (the networks' size multiple) and the factor."""
    step = 16 * factor // math.gcd(16, factor)
    if split.patch < step:
        raise InputError(
            f"patch size {split.patch} px is too small at factor {factor}: super-resolution patches must be a "
            f"multiple of {step} px; set train.patch_size to {step} or more"
        )
    return split.fit_patch("input", plane, rows, cols, factor, least=step) // step * step


class SuperRes(Variant):
    name = "superres"
    title = "EMDiffuse-r (super-resolution)"
    description = "Makes images and stacks 2, 3 or 4 times finer in x and y, with an uncertainty map."
    training_inputs = ("input", "target")
    baseline_name = "bicubic"
    options_model = SuperResOptions

    def channels(self, options: BaseModel) -> tuple[int, int]:
        return 1, 1

    def output_geometry(self, shape: Sequence[int], voxel: Sequence[float], options: BaseModel) -> Geometry:
        f = options.factor
        shift = 0.5 / f - 0.5  # output pixel 0 samples the input there (pixel centres aligned, see upsample)
        return Geometry(
            tuple(shape[:-2]) + (shape[-2] * f, shape[-1] * f),
            tuple(voxel[:-2]) + (voxel[-2] / f, voxel[-1] / f),
            (0.0,) * (len(shape) - 2) + (shift * voxel[-2], shift * voxel[-1]),
        )

    def pixel_factor(self, options: BaseModel) -> int:
        return int(options.factor)

    def option_phrases(self, options: BaseModel) -> list[str]:
        f = options.factor
        return [f"{f}x super-resolution (pixels {f} times finer in x and y)"] + ([self.original_phrase()] if options.emdiffuse_original else [])

    def from_clean(self, clean: np.ndarray, options: BaseModel, **degradation: Any) -> dict[str, Any]:
        """Low-resolution images simulated from high-resolution ones: PSF blur and binning
        (``psf_sigma`` in fine pixels; default FWHM of one coarse pixel), then shot and read
        noise if a ``dose`` is given (as the command line does with ``--dose``)."""
        check_image(clean, "clean images", self.input_ndims)
        f = options.factor
        unit = to_unit(clean, "clean images")
        h, w = unit.shape[-2] // f * f, unit.shape[-1] // f * f
        if h == 0 or w == 0:
            raise InputError(f"clean images of {unit.shape[-2]} x {unit.shape[-1]} px are smaller than the factor {f}")
        target = np.ascontiguousarray(unit[..., :h, :w])
        low = psf_bin(target, f, degradation.get("psf_sigma"))
        if degradation.get("dose") is not None:
            low = poisson_gaussian(low, degradation["dose"], degradation.get("read_noise", 0.0), degradation.get("seed", 0))
        return {"input": low, "target": target}

    def check_pair(self, cond: Any, target: Any, factor: int) -> None:
        check_image(cond, "input", self.input_ndims)
        check_image(target, "target", self.input_ndims)
        want = tuple(cond.shape[:-2]) + (cond.shape[-2] * factor, cond.shape[-1] * factor)
        if tuple(target.shape) != want:
            raise InputError(
                f"the target must be {factor} times the input in y and x: input {tuple(cond.shape)} "
                f"needs a target of {want}, got {tuple(target.shape)} (register and crop them first)"
            )

    def training_pairs(self, arrays: dict[str, Any], options: BaseModel, split: Split) -> PairSource:
        f = options.factor
        cond, target = arrays["input"], arrays["target"]
        self.check_pair(cond, target, f)
        plane = cond.shape
        cond, target, rows, cols = paired_region(cond, target, split, scale=f)
        fitted = sr_patch(split, plane, rows, cols, f)
        # The target on the input's intensity scale (two acquisitions may differ in gain and
        # offset): compared after the coarse scan's own blur and binning, so that blur does not
        # bias the gain (simulated pairs come out at exactly 1 and 0); then one mapping for both,
        # fitted on the input as prediction will be: binning and blur narrow the percentiles, and
        # separate mappings would change the output's contrast.
        a, b = match_intensity(psf_bin(target, f), cond, smooth=MATCH_SMOOTH)
        norm = fit_normaliser(cond, name="input")
        matched = a * np.asarray(target, np.float32) + b
        resize = upsample_bilinear if options.emdiffuse_original else upsample
        pairs = AlignedPairs(norm.forward(cond), norm.forward(matched), rows, cols, split.min_std, scale=f, upsample=resize)
        pairs.patch = fitted
        pairs.summary.update(normaliser=norm.to_dict(), factor=f, target_to_input=[a, b])
        if options.emdiffuse_original:
            return pairs
        return ResidualPairs(pairs, lambda c: c)  # the condition is the bicubic baseline

    def blocks(self, shape: Sequence[int], options: BaseModel, samples: int = 0, grid: TileGrid | None = None) -> list[Block]:
        f = options.factor
        size = (int(shape[-2]), int(shape[-1]))
        return plane_blocks((*shape[:-2], shape[-2] * f, shape[-1] * f), shape, grid, lambda span: coarse_window(span, f, size))

    def predict_block(self, source: np.ndarray, block: Block, options: BaseModel, job: BlockJob) -> None:
        f = options.factor
        plane = as_stack(source)[0]
        h, w = block.planes[0]
        origin = (block.source[-2].start, block.source[-1].start)
        cols = block.window.span[2:] if block.window is not None else (0, w)  # the columns the tiler reads
        resize = upsample_bilinear if options.emdiffuse_original else upsample

        def read(y0: int, y1: int) -> np.ndarray:
            return upsampled_window(plane, f, (y0, y1, *cols), job.normaliser.forward, resize, origin, (h // f, w // f))[None]

        base = None if options.emdiffuse_original else read  # a residual model adds its condition back
        job.run(read, h, w, base=base, plane_key=plane_of(block), window=block.window)
