"""Preparing a training set for a variant: the variant is looked up and asked what the set
depends on (the inputs it learns from, their dimensionality, its simulated degradation, the
factor between input and target pixels); :mod:`..data.prepare` writes the set knowing no variant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..data.image import Image
from ..data.normalise import check_image
from ..data.prepare import PrepareOptions, Progress, SetVariant, write_clean, write_pairs, write_volume
from ..errors import InputError
from ..variants import Variant, get_variant


def _variant(name: str, raw_options: dict[str, Any] | None) -> tuple[Variant, BaseModel, SetVariant]:
    try:
        variant = get_variant(name)
        options = variant.options(raw_options or {})
    except ValueError as err:
        raise InputError(str(err).splitlines()[0]) from None
    return variant, options, SetVariant(variant.name, variant.title, options.model_dump(mode="json"), variant.pixel_factor(options))


def prepare_pairs(
    input: Image,
    target: Image,
    out: str | Path,
    variant: str = "denoise",
    variant_options: dict[str, Any] | None = None,
    opts: PrepareOptions = PrepareOptions(),
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """A set of registered pairs for a paired variant (:func:`..data.prepare.write_pairs`);
    returns the report. The inputs are only read; an existing set is replaced only with
    ``overwrite`` (as for every ``prepare_*``)."""
    v, _, spec = _variant(variant, variant_options)
    if tuple(v.training_inputs) != ("input", "target"):
        raise InputError(f"{v.title} learns from a single volume, not from pairs: prepare it with --volume")
    check_image(input.data, "input", v.input_ndims)
    check_image(target.data, "target", v.input_ndims)
    return write_pairs(input, target, out, spec, opts, progress, overwrite)


def prepare_clean(
    clean: Image,
    out: str | Path,
    variant: str = "denoise",
    variant_options: dict[str, Any] | None = None,
    degradation: dict[str, Any] | None = None,
    opts: PrepareOptions = PrepareOptions(),
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """A set simulated from clean images by the variant's own degradation (noise for
    EMDiffuse-n, PSF blur and binning for EMDiffuse-r; :func:`..data.prepare.write_clean`)."""
    v, options, spec = _variant(variant, variant_options)
    if tuple(v.training_inputs) != ("input", "target"):
        raise InputError(f"{v.title} learns from a volume as it is: prepare it with --volume")
    check_image(clean.data, "clean images", v.input_ndims)

    def simulate(data: Any, **deg: Any) -> dict[str, Any]:
        return v.from_clean(data, options, **deg)

    return write_clean(clean, out, spec, simulate, degradation, opts, progress, overwrite)


def prepare_volume(
    volume: Image,
    out: str | Path,
    variant: str = "iso_i",
    variant_options: dict[str, Any] | None = None,
    drift: bool = False,
    opts: PrepareOptions = PrepareOptions(),
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """A volume for the vEM variants, drift corrected if ``drift`` (:func:`..data.prepare.write_volume`)."""
    v, options, spec = _variant(variant, variant_options)
    if tuple(v.training_inputs) != ("volume",):
        raise InputError(f"{v.title} learns from pairs (--input/--target) or clean images (--clean), not from a volume")
    v.check_input(volume.data, options, "volume")
    return write_volume(volume, out, spec, drift, opts, progress, overwrite)
