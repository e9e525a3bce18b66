"""Inputs from files on disk, read as the command line reads them.

The command line and the widgets both read files through :func:`read_logged` (lazily, by
:func:`..data.io.read_image`) and training data through :func:`training_arrays`, so a file
gives the same arrays either way: inputs, targets and volumes stay lazy (the trainer draws patches from
them), clean images for simulated degradation are read whole (the degradation is applied to
them once), and a prepared set (``emdiffuse prepare``) brings its held-out patches.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..data.image import known_pixel_um
from ..data.io import read_image
from ..data.normalise import check_grey
from ..data.tiff import GREY_ALPHA
from ..errors import naming
from ..variants import get_variant

log = logging.getLogger(__name__)

#: the training inputs that come as one file each, as the command line names them
FILE_INPUTS = ("input", "target", "volume")


def training_arrays(
    variant_name: str,
    variant_options: Mapping[str, Any] | None,
    files: Mapping[str, str | Path | None] | None = None,
    clean: str | Path | None = None,
    data: str | Path | None = None,
    dose: float | None = None,
    read_noise: float = 0.0,
    seed: int = 0,
) -> tuple[dict[str, Any], list[str], float | None]:
    """The arrays a run trains on, a note per source (for the model's record), and the pixel size
    in µm of the network's inputs where a file records it (None: unknown; prediction compares
    it with its input's: :meth:`..model_file.Model.pixel_warning`).

    ``files`` maps training inputs (``input``, ``target``, ``volume``) to files; ``clean`` is
    a file of clean images whose degradation is simulated (``dose``, ``read_noise``, ``seed``);
    ``data`` a prepared set. When a prepared set is given with other files, its held-out
    patches are dropped: they belong to its own patches, not to the files given with it.
    Empty when nothing is given (the caller says what it needs)."""
    variant = get_variant(variant_name)
    options = variant.options(dict(variant_options or {}))
    arrays: dict[str, Any] = {}
    notes: list[str] = []
    pixels: list[float | None] = []
    if clean:
        img = read_logged(clean, "clean images")
        with naming({"clean images": clean}):
            arrays = variant.from_clean(np.asarray(img.data), options, dose=dose, read_noise=read_noise, seed=seed)
        notes.append(f"clean {clean} with simulated degradation (dose {dose}, read noise {read_noise})")
        pixels.append(known_pixel_um(variant.calibration_voxel(img.voxel, options)))  # the simulated input's
    if data:
        from ..data.prepare import load_training_set, training_set_voxel

        arrays.update(load_training_set(data, variant.name, options.model_dump(mode="json"), variant.training_inputs))
        notes.append(f"prepared set {data}")
        pixels.append(known_pixel_um(training_set_voxel(data)))
    given = {name: path for name, path in (files or {}).items() if path}
    for name, path in given.items():
        img = read_logged(path, name)
        arrays[name] = img.data
        notes.append(f"{name} {path}")
        if name != "target":  # the network's input: a degraded image or the volume
            pixels.append(known_pixel_um(img.voxel))
    if data and (clean or given):
        arrays = {k: v for k, v in arrays.items() if not k.startswith("val_")}
    return arrays, notes, next((p for p in pixels if p), None)


def read_logged(path: str | Path, what: str, grey_of_alpha: bool = False) -> Any:
    """:func:`..data.io.read_image`, noting what was read (shown with ``-v``); an image of several
    samples per pixel is refused here, naming ``what`` and the file, while its record is at hand.
    ``grey_of_alpha``: a grey+alpha image gives its grey channel instead, as the napari reader
    opens it (its alpha says only where the picture is opaque); its ``meta["alpha_dropped"]`` says so."""
    img = read_image(path)
    if grey_of_alpha and img.meta.get("colour") == GREY_ALPHA:
        img = replace(img, data=img.data[..., 0], voxel=tuple(img.voxel[:-1]), meta={**img.meta, "colour": None, "alpha_dropped": True})
        log.warning("%s", alpha_note(path))
    with naming({what: path}):
        check_grey(img, what)
    log.info("%s: %s %s, voxel %s µm", what, img.shape, img.data.dtype, img.voxel)
    _warn_if_unfinished(path)
    return img


def alpha_note(path: str | Path) -> str:
    """What a user is told when a grey+alpha image is enhanced as its grey channel."""
    from ..data.formats import split_dataset

    return f"{split_dataset(path)[0]} is grey with an alpha channel: its grey values are enhanced, its alpha (where the picture is opaque) is left out"


def _warn_if_unfinished(path: str | Path) -> None:
    """Warn when ``path`` is an array of a result whose run was stopped: its unfinished planes
    hold zeros, which would be enhanced as if they were images."""
    from ..data.formats import split_dataset, store_root
    from ..data.safe_output import own_attrs
    from .predict_output import describe_bounds

    store = store_root(split_dataset(path)[0])
    attrs = own_attrs(store) if store.is_dir() else None
    if attrs and attrs.get("complete") is False and "shape" in attrs:
        done = describe_bounds(attrs["finished"], attrs["shape"]) if attrs.get("finished") else "nothing"
        log.warning("%s: an unfinished result (only %s is finished): the rest holds zeros, not an image", path, done)
