"""Percentile normalisation for any dtype, and its inverse.

Statistics are computed once per image or volume (from a bounded random subset of pixels for
large or lazy arrays), never per tile, so tiles share one intensity mapping and no brightness
jump appears between them. The same statistics map the output back to the input's range.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from .image import Image
from .tiff import GREY_ALPHA

MAX_SAMPLE_PIXELS = 4_000_000
#: the percentiles that map to -1 and 1 (a model records the ones it was trained with)
PERCENTILES = (0.1, 99.9)


@dataclass(frozen=True)
class Normaliser:
    """``x -> (x - low) / (high - low) * 2 - 1``: the percentiles map to -1 and 1."""

    low: float
    high: float

    def forward(self, x: np.ndarray) -> np.ndarray:
        a = np.asarray(x, np.float32)
        if not np.isfinite(a).all():
            raise InputError("image contains NaN or infinite values; replace them before enhancing")
        return ((a - self.low) / (self.high - self.low) * 2 - 1).astype(np.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return ((np.asarray(y, np.float32) + 1) / 2 * (self.high - self.low) + self.low).astype(np.float32)

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        """``x`` with the low percentile at 0 and the high one at 1, darker pixels clipped at 0:
        the scale on which a simulated dose is counted."""
        return np.clip((np.asarray(x, np.float32) - self.low) / (self.high - self.low), 0.0, None).astype(np.float32)

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`to_unit`: back to the input's grey values."""
        return (np.asarray(u, np.float32) * (self.high - self.low) + self.low).astype(np.float32)

    def scale_std(self, s: np.ndarray) -> np.ndarray:
        """A standard deviation in normalised units, in the input's units."""
        return (np.asarray(s, np.float32) * (self.high - self.low) / 2).astype(np.float32)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, stats: dict[str, float]) -> "Normaliser":
        """Statistics sent as JSON (:meth:`to_dict`), e.g. to the dask workers of a prediction."""
        try:
            return cls(float(stats["low"]), float(stats["high"]))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"normalisation statistics {stats!r} need numbers 'low' and 'high'") from None

    def forward_lazy(self, data):
        """:meth:`forward` block by block on a dask array (any size, bounded memory)."""
        import dask.array as da

        src = data if isinstance(data, da.Array) else da.from_array(data)
        return src.map_blocks(self.forward, dtype=np.float32)


def to_dtype(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``a`` as ``dtype``: rounded and clipped to the range of an integer type, so values out of
    range saturate instead of wrapping around."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        a = np.clip(np.rint(a), info.min, info.max)
    return np.asarray(a).astype(dtype)


def _bin(a: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``n x n`` blocks over the last two axes (rows and columns beyond a multiple dropped)."""
    if n <= 1:
        return a
    h, w = a.shape[-2] // n * n, a.shape[-1] // n * n
    return a[..., :h, :w].reshape(*a.shape[:-2], h // n, n, w // n, n).mean(axis=(-3, -1))


def match_intensity(target: np.ndarray, reference: np.ndarray, factor: int = 1, smooth: int = 1) -> tuple[float, float]:
    """``(a, b)`` such that ``a * target + b`` is on the intensity scale of ``reference``.

    A clean (or high-resolution) target and its noisy (or low-resolution) input come from the
    same sample but may differ in gain and offset. The model learns the target on the *input's*
    scale, so its output maps back to the input's units at prediction. The fit regresses the
    input on the target (binned by ``factor`` for super-resolution pairs): zero-mean noise in the
    input then leaves the estimate unbiased. ``smooth`` bins both by that many more pixels first,
    so that blur in the reference (a coarser acquisition's PSF) does not bias the gain.
    """
    t = _bin(np.asarray(target, np.float64), factor * smooth)
    r = _bin(np.asarray(reference, np.float64), smooth)
    h, w = min(t.shape[-2], r.shape[-2]), min(t.shape[-1], r.shape[-1])
    t, r = t[..., :h, :w].ravel(), r[..., :h, :w].ravel()
    if t.size > MAX_SAMPLE_PIXELS:
        pick = np.random.default_rng(0).choice(t.size, MAX_SAMPLE_PIXELS, replace=False)
        t, r = t[pick], r[pick]
    var = t.var()
    if var == 0:
        raise InputError("target is constant: there is nothing to learn from it")
    a = float(np.mean((t - t.mean()) * (r - r.mean())) / var)
    if a <= 0:
        raise InputError("input and target are not positively related (wrong pairing, or inverted contrast?)")
    return a, float(r.mean() - a * t.mean())


def _pixel_sample(image, max_pixels: int, seed: int = 0) -> np.ndarray:
    """All pixels of a small array; for a large (or dask) one, whole planes/rows chosen at random."""
    if image.size <= max_pixels:
        return np.asarray(image).ravel()
    rng = np.random.default_rng(seed)
    if image.ndim >= 3:
        plane = int(np.prod(image.shape[-2:]))
        n = max(1, min(image.shape[0], max_pixels // max(plane, 1)))
        idx = np.sort(rng.choice(image.shape[0], n, replace=False))
        sub = np.asarray(image[idx.tolist()] if hasattr(image, "dask") or hasattr(image, "chunks") else image[idx])
        if sub.size > max_pixels:
            sub = sub.ravel()[rng.choice(sub.size, max_pixels, replace=False)]
        return sub.ravel()
    rows = max(1, min(image.shape[0], max_pixels // max(image.shape[-1], 1)))
    idx = np.sort(rng.choice(image.shape[0], rows, replace=False))
    return np.asarray(image[idx.tolist()] if hasattr(image, "dask") else image[idx]).ravel()


def fit_normaliser(
    image, low: float = PERCENTILES[0], high: float = PERCENTILES[1], max_pixels: int = MAX_SAMPLE_PIXELS, name: str = "image"
) -> Normaliser:
    """Percentile statistics of ``image`` (numpy, dask or zarr), robust to empty and saturated areas.

    This is the one place that says what an image's grey-value range is: the range its pixels
    actually use, never its data type's (12-bit data in uint16 files, signed MRC data). Pixels at
    the observed extremes (saturated or zero-padded areas) are left out when enough others
    remain; NaN or infinite values are refused with a message.
    """
    if image.size == 0:
        raise InputError(f"{name} is empty (shape {tuple(image.shape)})")
    vals = _pixel_sample(image, max_pixels).astype(np.float64, copy=False)
    if not np.all(np.isfinite(vals)):
        raise InputError(f"{name} contains NaN or infinite values; replace them first")
    inner = vals[(vals > vals.min()) & (vals < vals.max())]
    if inner.size >= 0.5 * vals.size:
        vals = inner
    lo, hi = np.percentile(vals, [low, high])
    if not hi > lo:
        lo, hi = float(vals.min()), float(vals.max())
    if not hi > lo:
        raise InputError(f"{name} is constant (every pixel is {lo:g}): there is nothing to enhance")
    return Normaliser(float(lo), float(hi))


#: the fewest pixels a plane may have along y and x: an input's noise is measured from its
#: 2 x 2 pixel blocks (:func:`..uncertainty.noise_level`), of which a plane one pixel high has none
MIN_PLANE_PX = 2


#: what a bare array's few values last are taken for (:func:`check_image`)
SAMPLES_BY_SHAPE = {2: GREY_ALPHA, 3: "RGB", 4: "RGBA"}


def _several_samples(name: str, shape: tuple[int, ...], colour: str) -> InputError:
    return InputError(f"{name} has {shape[-1]} samples per pixel ({colour}; shape {shape}), not one grey value: convert it to greyscale first")


def check_grey(image: Image, name: str = "image") -> None:
    """Refuse, where a file is read, an image whose file recorded several samples per pixel
    (``meta["colour"]``: colour, grey+alpha, ...): the jobs then see its bare array, whose
    shape alone would pass for a volume of thin slices."""
    colour = image.meta.get("colour")
    if colour:
        raise _several_samples(name, tuple(image.data.shape), colour)


def check_image(image: Any, name: str = "image", ndims: tuple[int, ...] = (2, 3)) -> None:
    """Refuse what no variant can use: wrong dimensionality, empty or smaller than
    :data:`MIN_PLANE_PX`, several samples per pixel (colour, grey+alpha, ...), 1-bit, complex or
    non-numeric data. ``image`` is an :class:`.Image`, whose file recorded what its samples are
    (``meta["colour"]``), or a bare array (a napari layer's), where only the shape can tell: 2,
    3 or 4 values last on planes larger than 4 pixels are grey+alpha, RGB or RGBA, as napari and
    imageio hold such pictures (an image 2 pixels wide is none an EM user enhances)."""
    colour = image.meta.get("colour") if isinstance(image, Image) else None
    data = image.data if isinstance(image, Image) else image
    shape = tuple(data.shape)
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "uifb":
        raise InputError(f"{name} has data type {dtype}, expected integer or floating-point grey values")
    if dtype.kind == "b":
        raise InputError(f"{name} is a 1-bit (black and white) mask, not a grey-value image: 1-bit images are not supported")
    if colour is None and len(shape) in (3, 4) and shape[-1] in SAMPLES_BY_SHAPE and min(shape[-3:-1]) > 4:
        colour = SAMPLES_BY_SHAPE[shape[-1]]
    if colour is not None:
        raise _several_samples(name, shape, colour)
    if len(shape) not in ndims:
        want = " or ".join(f"{d}D" for d in ndims)
        raise InputError(f"{name} has {len(shape)} dimensions (shape {shape}); expected {want}")
    if 0 in shape:
        raise InputError(f"{name} is empty (shape {shape})")
    if min(shape[-2:]) < MIN_PLANE_PX:
        size = f"is {shape[-2]} x {shape[-1]} pixels" if len(shape) == 2 else f"has planes of {shape[-2]} x {shape[-1]} pixels"
        raise InputError(f"{name} {size}; the smallest image this tool takes is {MIN_PLANE_PX} x {MIN_PLANE_PX} pixels")
