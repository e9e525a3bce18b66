"""Building a training set (zarr) from raw files: pairs, clean-only data, or a volume.

The set is a zarr group that ``emdiffuse train --data SET.zarr`` reads directly. Its arrays are
named as the variant's ``training_inputs``:

- pairs (EMDiffuse-n, -r): ``input`` and ``target`` are stacks of registered, kept training
  patches; ``val_input`` and ``val_target`` the held-out validation patches, from slices (or,
  for a single image, rows) that share no pixel with the training patches;
- a volume (vEMDiffuse-i, -a): ``volume``, drift-corrected if asked.

Its attributes hold the variant, its options, the voxel sizes and whether it is complete; the
report is written beside the set as ``NAME_report.json`` with a picture, ``NAME_overlay.png``.
The patches keep the raw grey values: training normalises them as it does any input.

This module knows no variant: :mod:`..jobs.prepare` asks the variant what a set depends on and
passes it here as a :class:`SetVariant`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from .image import Image, coarsened, lazy
from .normalise import fit_normaliser, to_dtype
from .overlay import green_magenta, grey_rgb, pair_panel, save_png, stack_panels
from .patches import PatchGeometry, grid, has_structure, split_rows_of_grid, split_slices
from .register import RegistrationError, correct_drift, estimate_drift, register_pair
from .safe_output import CREATED_BY, SOFTWARE, StagedStore, check_new_output, check_space, lock_beside, write_bytes

SET_FORMAT = "napari-emdiffuse-training-set"
SET_VERSION = 1
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SetVariant:
    """What a training set needs of the variant it is prepared for, so that data/ imports none."""

    name: str
    title: str
    options: dict[str, Any]  # validated, as JSON: recorded in the set and checked when it is loaded
    factor: int = 1  # how many times finer the target's pixels are than the input's (y, x)


@dataclass(frozen=True)
class PrepareOptions:
    """How pairs are turned into patches (the command line's ``emdiffuse prepare`` flags)."""

    patch: int = 256  # stored patch size in target pixels: at least 1.5 x the training patch
    min_ncc: float = 0.6  # patches that correlate less after registration, relative to what their noise allows, are rejected
    min_std: float = 0.05  # ... and those with less contrast (normalised units, -1..1)
    val_fraction: float = 0.1
    register: bool = True
    local: bool = True  # the non-rigid (optical flow) step
    smooth: float = 2.0  # Gaussian sigma for registration, raise for very noisy inputs
    overlay: int = 4  # pairs shown in the overlay picture
    seed: int = 0


REJECTED = ("not covered", "no signal", "misaligned", "flat")
"""Why a patch of a pair is not kept, in the order they are checked (docs/data-preparation.md)."""


NO_SIGNAL_WARN = 0.5  # share of all patches rejected as "no signal" above which prepare warns (review s16 N3)


def no_signal_warning(report: dict[str, Any]) -> str | None:
    """A warning when more than :data:`NO_SIGNAL_WARN` of a pair set's patches were rejected as
    "no signal" (None otherwise): registration judged patches of ``report["patch"]["input"]``
    input pixels (``--patch`` divided by the factor for super-resolution), too small for the
    noise of these images; a larger ``--patch`` or a higher dose keeps them."""
    rejected, kept = report.get("patches_rejected") or {}, report.get("patches_kept") or {}
    total = sum(rejected.values()) + sum(kept.values())
    n = rejected.get("no signal", 0)
    if not total or n <= NO_SIGNAL_WARN * total:
        return None
    size = report.get("patch", {}).get("input")
    judged = f" of {size} input px" if size else ""
    return (
        f"warning: {n} of {total} patches ({n / total:.0%}) were rejected as \"no signal\" (registration judged patches{judged}): "
        "where the images hold structure, a larger --patch (super-resolution judges --patch / factor) or a higher dose "
        "keeps more; blank areas (resin, borders) stay rejected"
    )


def reject_reason(covered: bool, kept: bool, no_signal: bool, target_patch: np.ndarray, normaliser: Any, min_std: float) -> str | None:
    """Why a patch is not kept (one of :data:`REJECTED`), or None to keep it: the one place that
    decides. ``covered``: the target reaches all of it; ``kept``, ``no_signal``: its verdict by
    :func:`.register.keep` (True, False where nothing was registered); ``target_patch`` (the
    registered target's) must have contrast (:func:`.patches.has_structure`)."""
    if not covered:
        return "not covered"
    if not kept:
        return "no signal" if no_signal else "misaligned"
    if not has_structure(target_patch, normaliser, min_std):
        return "flat"
    return None


def _stack(a: Any) -> Any:
    return a[None] if a.ndim == 2 else a


def report_paths(out: Path) -> tuple[Path, Path]:
    """``SET.zarr`` -> ``SET_report.json``, ``SET_overlay.png`` beside it."""
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.parent / f"{stem}_report.json", out.parent / f"{stem}_overlay.png"


class _SetOutput:
    """The training set being written: checked before anything is computed, locked, built
    beside ``out`` and swapped in by :func:`_finish`; an error or Ctrl-C leaves what was there."""

    def __init__(self, out: str | Path, protect: list[Path | None], overwrite: bool, nbytes: int) -> None:
        self.out = Path(out)
        names = [self.out, *report_paths(self.out)]
        for p in names:
            check_new_output(p, protect, overwrite)
        self.nbytes, self.lock, self.staged = nbytes, lock_beside(self.out, names), None

    def __enter__(self) -> "_SetOutput":
        self.lock.acquire()
        try:
            check_space(self.out.parent, self.nbytes)
        except BaseException:
            self.lock.release()
            raise
        return self

    def open(self) -> Any:
        import zarr

        self.staged = StagedStore(self.out)
        group = zarr.open_group(str(self.staged.path), mode="w-", zarr_format=2)
        group.attrs[CREATED_BY] = SOFTWARE
        return group

    def __exit__(self, *exc: Any) -> None:
        if self.staged is not None:
            self.staged.discard()
        self.lock.release()


def _nbytes(*arrays: Any) -> int:
    return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in arrays)


def _finish(group: Any, out: _SetOutput, report: dict[str, Any], panels: list[np.ndarray]) -> dict[str, Any]:
    report_json, overlay_png = report_paths(out.out)
    if panels:
        report["overlay"] = overlay_png.name
    group.attrs["report"] = report
    assert out.staged is not None
    out.staged.commit()
    out.staged = None
    if panels:
        save_png(overlay_png, stack_panels(panels))
    write_bytes(report_json, json.dumps(report, indent=2).encode())
    return report


def _pairs_to_set(
    cond: Any,
    target: Any,
    out: _SetOutput,
    spec: SetVariant,
    opts: PrepareOptions,
    voxel: tuple[float, ...],
    sources: dict[str, Any],
    progress: Progress | None,
    name: str,
) -> dict[str, Any]:
    """The shared path of :func:`write_pairs` and :func:`write_clean`; ``name`` is the role of
    the images the target comes from ("target", "clean images"), named when they are too small."""
    register = opts.register
    geom = PatchGeometry.fit(opts.patch, spec.factor, spec.title)
    f = geom.factor
    cond, target = _stack(cond), _stack(target)
    depth, h, w = cond.shape
    want = (depth, h * f, w * f)
    if tuple(target.shape) != want:
        raise InputError(
            f"input {tuple(cond.shape)} and target {tuple(target.shape)} do not pair up: "
            f"the target should be {want}{f' (factor {f})' if f > 1 else ''}; crop or resample them first"
        )
    n_tg = fit_normaliser(target, name="target")  # what "flat" means for a target patch
    corners = grid(h, w, geom.input, name, f)
    if depth >= 3:
        train_z, val_z = split_slices(depth, opts.val_fraction)
        plan = {z: (corners if z in train_z else [], corners if z in val_z else []) for z in range(depth)}
        split_by = "slices"
    else:
        train_c, val_c = split_rows_of_grid(corners, geom.input, opts.val_fraction)
        plan = {z: (train_c, val_c) for z in range(depth)}
        split_by = "rows"

    group = out.open()
    dt_in = np.dtype(np.float32) if cond.dtype == np.float64 else np.dtype(cond.dtype)
    dt_tg = np.dtype(np.float32) if target.dtype == np.float64 else np.dtype(target.dtype)
    arrays = {}
    for prefix in ("", "val_"):
        arrays[prefix + "input"] = group.create_array(prefix + "input", shape=(0, geom.input, geom.input), dtype=dt_in, chunks=(1, geom.input, geom.input))
        arrays[prefix + "target"] = group.create_array(prefix + "target", shape=(0, geom.target, geom.target), dtype=dt_tg, chunks=(1, geom.target, geom.target))
    group.attrs.update(
        {
            "format": SET_FORMAT,
            "format_version": SET_VERSION,
            "variant": spec.name,
            "variant_options": spec.options,
            "voxel_size": list(voxel),
            "target_voxel_size": list(voxel[:-2]) + [voxel[-2] / f, voxel[-1] / f],
            "complete": False,
        }
    )

    shown = set(np.linspace(0, depth - 1, min(opts.overlay, depth)).round().astype(int).tolist()) if opts.overlay else set()
    panels: list[np.ndarray] = []
    slices: list[dict[str, Any]] = []
    rejected = dict.fromkeys(REJECTED, 0)
    kept = {"train": 0, "val": 0}
    for z in range(depth):
        if progress is not None:
            progress(z, depth, "registering" if register else "cutting patches")
        train_c, val_c = plan[z]
        if not train_c and not val_c:
            slices.append({"slice": z, "role": "gap between training and validation slices"})
            continue
        c_plane = np.asarray(cond[z])
        t_plane = np.asarray(target[z])
        entry: dict[str, Any] = {"slice": z, "role": "validation" if val_c else "training"}
        if register:
            try:
                reg = register_pair(c_plane, t_plane, factor=f, smooth=opts.smooth, local=opts.local, patch=geom.input, min_ncc=opts.min_ncc)
            except RegistrationError as err:
                entry["failed"] = str(err)
                slices.append(entry)
                rejected["no signal" if err.no_signal else "misaligned"] += len(train_c) + len(val_c)
                continue
            warped, aligned, no_signal, covered = reg.warped, reg.kept, reg.no_signal, reg.valid
            entry.update(reg.summary())
        else:
            warped, aligned, no_signal, covered = t_plane.astype(np.float32), None, None, None
        bad: list[tuple[int, int]] = []
        index = {c: divmod(k, w // geom.input) for k, c in enumerate(corners)}  # corner -> score cell
        for split, chosen in (("train", train_c), ("val", val_c)):
            ins, tgs = [], []
            for y, x in chosen:
                tsl = (slice(y * f, y * f + geom.target), slice(x * f, x * f + geom.target))
                tpatch, cell = warped[tsl], index[(y, x)]
                reason = reject_reason(
                    covered is None or bool(covered[tsl].all()),
                    aligned is None or bool(aligned[cell]),
                    no_signal is not None and bool(no_signal[cell]),
                    tpatch,
                    n_tg,
                    opts.min_std,
                )
                if reason is None:
                    ins.append(c_plane[y : y + geom.input, x : x + geom.input].astype(dt_in))
                    tgs.append(to_dtype(tpatch, dt_tg))
                    continue
                rejected[reason] += 1
                bad.append((y, x))
            if ins:
                prefix = "val_" if split == "val" else ""
                arrays[prefix + "input"].append(np.stack(ins))
                arrays[prefix + "target"].append(np.stack(tgs))
                kept[split] += len(ins)
        entry["kept"] = len(train_c) + len(val_c) - len(bad)
        slices.append(entry)
        if z in shown and register:
            before = t_plane if f == 1 else t_plane[f // 2 :: f, f // 2 :: f]
            after = warped if f == 1 else warped[f // 2 :: f, f // 2 :: f]
            panels.append(pair_panel(c_plane, before, after, bad, geom.input))
        elif z in shown:
            panels.append(green_magenta(c_plane, t_plane if f == 1 else t_plane[f // 2 :: f, f // 2 :: f]))
    if progress is not None:
        progress(depth, depth, "done")
    if kept["train"] == 0 or kept["val"] == 0:
        reasons = ", ".join(f"{n} {k}" for k, n in rejected.items() if n)
        advice = (
            "they hold too little signal to align by: use a larger --patch or a higher dose"
            if rejected["no signal"] > rejected["misaligned"]
            else "check that input and target show the same place, or lower --min-ncc / --min-std / --patch"
        )
        raise InputError(f"no usable {'training' if kept['train'] == 0 else 'validation'} patches ({reasons or 'none to cut'}); {advice}")
    ok = [s for s in slices if "ncc_local" in s]
    report = {
        "kind": "pairs" if register else "simulated pairs",
        "variant": spec.name,
        "sources": sources,
        "settings": asdict(opts),
        "patch": {"input": geom.input, "target": geom.target},
        "split_by": split_by,
        "patches_kept": kept,
        "patches_rejected": rejected,
        "registration": (
            {
                "slices_registered": len(ok),
                "slices_failed": sum("failed" in s for s in slices),
                "median_ncc_before": round(float(np.median([s["ncc_before"] for s in ok])), 4) if ok else None,
                "median_ncc_after": round(float(np.median([s["ncc_local"] for s in ok])), 4) if ok else None,
            }
            if register
            else None
        ),
        "slices": slices,
    }
    group.attrs.update({"split": kept, "complete": True})
    return _finish(group, out, report, panels)


def write_pairs(
    input: Image,
    target: Image,
    out: str | Path,
    spec: SetVariant,
    opts: PrepareOptions = PrepareOptions(),
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Register ``target`` onto ``input`` slice by slice and keep the well-aligned, structured
    patches; returns the report. The inputs are only read; an existing set is replaced only
    with ``overwrite`` (as for every ``write_*``)."""
    sources = {
        "input": {"path": str(input.path), "shape": list(input.shape), "dtype": str(input.data.dtype), "voxel_um": list(input.voxel)},
        "target": {"path": str(target.path), "shape": list(target.shape), "dtype": str(target.data.dtype), "voxel_um": list(target.voxel)},
    }
    with _SetOutput(out, [input.path, target.path], overwrite, 2 * _nbytes(input.data, target.data)) as written:
        return _pairs_to_set(input.data, target.data, written, spec, opts, tuple(input.voxel), sources, progress, "target")


def write_clean(
    clean: Image,
    out: str | Path,
    spec: SetVariant,
    simulate: Callable[..., dict[str, Any]],
    degradation: dict[str, Any] | None = None,
    opts: PrepareOptions = PrepareOptions(),
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Simulate the degraded input from clean images with ``simulate(clean, **degradation)``
    (the variant's own degradation), optionally with scan-line jitter, and cut patches as for
    real pairs (no registration: the pair is aligned by construction).

    ``degradation``: ``dose``, ``read_noise``, ``psf_sigma``, ``jitter`` (px), ``jitter_correlation``.
    """
    from .degrade import scan_line_jitter

    with _SetOutput(out, [clean.path], overwrite, 3 * _nbytes(clean.data)) as written:
        deg = dict(degradation or {})
        jitter = float(deg.pop("jitter", 0.0) or 0.0)
        correlation = float(deg.pop("jitter_correlation", 0.0) or 0.0)
        deg.setdefault("seed", opts.seed)
        arrays = simulate(np.asarray(clean.data), **deg)
        cond = arrays["input"]
        if jitter:
            cond = scan_line_jitter(cond, jitter, correlation, seed=opts.seed + 1)
        voxel = coarsened(clean.voxel, spec.factor)  # the simulated input's: none made up where the clean images have none
        sources = {
            "clean": {"path": str(clean.path), "shape": list(clean.shape), "dtype": str(clean.data.dtype), "voxel_um": list(clean.voxel)},
            "degradation": {**deg, "jitter": jitter, "jitter_correlation": correlation},
        }
        opts = replace(opts, register=False, local=False)  # aligned by construction
        return _pairs_to_set(cond, arrays["target"], written, spec, opts, voxel, sources, progress, "clean images")


def write_volume(
    volume: Image,
    out: str | Path,
    spec: SetVariant,
    drift: bool = False,
    opts: PrepareOptions = PrepareOptions(),
    progress: Progress | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """A volume for the vEM variants, slice-to-slice drift corrected if ``drift``, written chunk
    by chunk (any size); the report counts the patches with structure per slice."""
    import dask.array as da

    from .containers import default_chunks

    with _SetOutput(out, [volume.path], overwrite, _nbytes(volume.data)) as written:
        data = volume.data if isinstance(volume.data, da.Array) else da.from_array(volume.data, chunks=default_chunks(volume.shape))
        normaliser = fit_normaliser(data, name="volume")
        report: dict[str, Any] = {
            "kind": "volume",
            "variant": spec.name,
            "sources": {"volume": {"path": str(volume.path), "shape": list(volume.shape), "dtype": str(data.dtype), "voxel_um": list(volume.voxel)}},
            "settings": {"drift": drift, "patch": opts.patch, "min_std": opts.min_std},
        }
        panels: list[np.ndarray] = []
        if drift:
            if progress is not None:
                progress(0, 2, "estimating drift")
            est = estimate_drift(data)
            corrected = correct_drift(data, est.shifts)
            report["drift"] = {**est.summary(), "shifts_px": np.round(est.shifts, 3).tolist()}
            y = data.shape[1] // 2
            before = np.asarray(data[:, y, :])
            after = np.asarray(corrected[:, min(y, corrected.shape[1] - 1), :])
            zoom = max(1, int(round(volume.voxel[0] / volume.voxel[-1]))) if volume.voxel[-1] > 0 else 1
            panels = [grey_rgb(np.repeat(before, zoom, 0)), grey_rgb(np.repeat(after, zoom, 0))]  # xz: before, after
            data = corrected
        group = written.open()
        dtype = np.dtype(np.float32) if data.dtype == np.float64 else np.dtype(data.dtype)
        arr = group.create_array("volume", shape=data.shape, dtype=dtype, chunks=default_chunks(data.shape))
        group.attrs.update(
            {
                "format": SET_FORMAT,
                "format_version": SET_VERSION,
                "variant": spec.name,
                "variant_options": spec.options,
                "voxel_size": list(volume.voxel),
                "complete": False,
            }
        )
        if progress is not None:
            progress(1, 2, "writing")
        da.store(data.astype(dtype).rechunk(arr.chunks), arr, lock=False)
        patch = min(opts.patch, data.shape[1], data.shape[2])
        sample = np.linspace(0, data.shape[0] - 1, min(64, data.shape[0])).round().astype(int)
        with_structure = total = 0
        for z in sorted(set(sample.tolist())):
            plane = np.asarray(arr[z])
            for y, x in grid(plane.shape[0], plane.shape[1], patch):
                total += 1
                with_structure += has_structure(plane[y : y + patch, x : x + patch], normaliser, opts.min_std)
        report["patches"] = {"patch": patch, "slices_sampled": int(len(set(sample.tolist()))), "with_structure": with_structure, "total": total}
        report["shape"] = list(data.shape)
        group.attrs["complete"] = True
        if progress is not None:
            progress(2, 2, "done")
        return _finish(group, written, report, panels)


def training_set_voxel(path: str | Path) -> tuple[float, ...]:
    """The voxel size (µm) of a prepared set's inputs as its source recorded it (empty where the
    set does not say; read after :func:`load_training_set` has checked the set)."""
    import zarr

    return tuple(float(v) for v in zarr.open_group(str(path), mode="r").attrs.get("voxel_size", ()))


def load_training_set(path: str | Path, variant: str, options: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The arrays ``names`` of a prepared set (lazy), that ``variant`` trains on, after checking
    that the set was prepared for that variant and its validated ``options`` (JSON; e.g. the same
    factor); its held-out validation patches come as ``val_input``/``val_target`` where the set has them."""
    import zarr

    path = Path(path)
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as err:  # noqa: BLE001 - zarr raises many types for a missing or broken store
        raise InputError(f"{path}: not a prepared training set ({err})") from None
    attrs = dict(group.attrs)
    if attrs.get("format") != SET_FORMAT:
        raise InputError(f"{path}: not a training set made by `emdiffuse prepare`")
    if not attrs.get("complete"):
        raise InputError(f"{path}: the training set is incomplete (its preparation was interrupted); prepare it again")
    if attrs.get("variant") != variant:
        raise InputError(f"{path} was prepared for the {attrs.get('variant')} variant, but the preset trains {variant}")
    if attrs.get("variant_options", {}) != options:
        raise InputError(f"{path} was prepared with variant options {attrs.get('variant_options')}, the preset has {options}")
    missing = [n for n in names if not hasattr(group.get(n), "shape")]
    if missing:
        raise InputError(f"{path}: the training set has no {missing[0]!r} array (damaged or edited?); prepare it again")
    arrays = [*names, *(f"val_{n}" for n in names if f"val_{n}" in group)]
    return {name: lazy(group[name], path) for name in arrays}
