"""``emdiffuse prepare`` (a training set from raw files) and ``emdiffuse info`` (what a file holds)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ..arg_types import number, variant_option, whole
from ..cli_jobs import add_quiet
from ..errors import InputError, naming
from .degrade import DEFAULT_DOSE, DEFAULT_READ_NOISE
from .normalise import check_grey


def _voxel_text(voxel: tuple[float, ...], in_pixels: bool = False) -> str:
    """Micrometres as nm when small, e.g. ``50 x 4 x 4 nm``. A size of 1 is the readers'
    placeholder for one the file does not record, not 1 µm: said to be unknown, on every axis
    or on those it holds (``? x 4 x 4 nm (z unknown)``, a stack whose slice spacing is not recorded).
    ``in_pixels``: the file records no length, only the voxel's shape in x pixels (a z spacing in
    pixels, the reader's ``voxel_unit`` "pixel")."""
    if all(v == 1.0 for v in voxel):
        return "unknown (not recorded in the file: 1 per pixel)"
    if in_pixels:
        return " x ".join(f"{v:g}" for v in voxel) + " pixels (no pixel size recorded: the voxel's shape in x pixels)"
    known = [v for v in voxel if v != 1.0]
    nm = all(v < 1.0 for v in known)
    text = " x ".join("?" if v == 1.0 else f"{v * 1e3:g}" if nm else f"{v:g}" for v in voxel) + (" nm" if nm else " µm")
    axes = "zyx"[-len(voxel) :] if len(voxel) <= 3 else [f"axis {k}" for k in range(len(voxel))]
    unknown = [axis for axis, v in zip(axes, voxel) if v == 1.0]
    return text + (f" ({', '.join(unknown)} unknown)" if unknown else "")


def _parse_voxel(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--voxel {text!r}: expected numbers in µm separated by commas, e.g. 0.05,0.004,0.004 (z,y,x)") from None
    if any(v <= 0 for v in values):
        raise InputError(f"--voxel {text!r}: voxel sizes must be positive")
    return values


def _open(path: str, voxel: tuple[float, ...] | None, what: str):
    from .io import read_image

    img = read_image(path)
    with naming({what: path}):
        check_grey(img, what)
    if voxel is not None:
        if len(voxel) != img.data.ndim:
            raise InputError(f"--voxel has {len(voxel)} values but the {what} has {img.data.ndim} axes {img.shape}")
        img.voxel = voxel
    return img


def _options(args: argparse.Namespace) -> tuple[str, dict[str, Any], int | None]:
    """Variant, its options and the preset's training patch size (when a preset is named)."""
    options: dict[str, Any] = {}
    patch = None
    variant = args.variant
    if args.preset:
        from ..config import load_preset

        preset = load_preset(args.preset)
        variant, options, patch = preset.variant, dict(preset.variant_options), preset.train.patch_size
    options.update(variant_option(text) for text in args.variant_option or [])
    return variant or "denoise", options, patch


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..cli_jobs import ctrl_c_cancels, drive
    from ..jobs.events import new_cancel_token
    from ..jobs.prepare import prepare_clean, prepare_pairs, prepare_volume
    from .prepare import PrepareOptions, no_signal_warning, report_paths

    given = [n for n in ("input", "clean", "volume") if getattr(args, n)]
    if len(given) != 1 or (args.input is None) != (args.target is None):
        raise InputError("give --input with --target (pairs), or --clean (clean images only), or --volume (vEM)")
    variant, options, train_patch = _options(args)
    patch = args.patch or max(64, (int(train_patch * 1.5) + 15) // 16 * 16 if train_patch else 256)
    opts = PrepareOptions(
        patch=patch,
        min_ncc=args.min_ncc,
        min_std=args.min_std,
        val_fraction=args.val_fraction,
        register=not args.no_register,
        local=not args.rigid,
        smooth=args.smooth,
        overlay=args.overlay,
        seed=args.seed,
    )
    voxel = _parse_voxel(args.voxel)
    out = Path(args.out)
    if out.suffix.lower() != ".zarr":  # a training set is a zarr store: "x.tif" would name a folder as a file
        raise InputError(f"{out}: a training set is written as zarr; give --out a name ending in .zarr")
    token = new_cancel_token()
    with naming({"input": args.input, "target": args.target, "clean images": args.clean, "volume": args.volume}), ctrl_c_cancels(token) as stop:
        if args.input:
            events = prepare_pairs(_open(args.input, voxel, "input"), _open(args.target, voxel, "target"), out, variant, options, opts, args.overwrite, token)
        elif args.clean:
            degradation = {"dose": args.dose, "read_noise": args.read_noise, "psf_sigma": args.psf_sigma, "jitter": args.jitter, "jitter_correlation": args.jitter_correlation}
            events = prepare_clean(_open(args.clean, voxel, "clean images"), out, variant, options, degradation, opts, args.overwrite, token)
        else:
            events = prepare_volume(_open(args.volume, voxel, "volume"), out, variant or "iso_i", options, args.drift, opts, args.overwrite, token)
        result = drive(events, args.quiet, unit="slice", describe=True)
    if not result.complete:  # the job's message said that nothing was written
        return stop.exit_status()
    report = result.report
    report_json, overlay = report_paths(out)
    if "patches_kept" in report:
        k, r = report["patches_kept"], report["patches_rejected"]
        warning = no_signal_warning(report)
        print(
            f"kept {k['train']} training and {k['val']} validation patches; rejected "
            + ", ".join(f"{n} {why}" for why, n in r.items())
            + (f"; {warning}" if warning else "")
        )
        reg = report.get("registration")
        if reg:
            print(f"registration: {reg['slices_registered']} slice(s) aligned, {reg['slices_failed']} failed; median NCC {reg['median_ncc_before']} -> {reg['median_ncc_after']}")
    else:
        p = report["patches"]
        print(f"volume {report['shape']}: {p['with_structure']} of {p['total']} sampled {p['patch']} px patches have structure")
        if "drift" in report:
            d = report["drift"]
            print(f"drift corrected: range {d['drift_range_px']} px; neighbour NCC {d['neighbour_ncc_before']} -> {d['neighbour_ncc_after']}")
    print(f"wrote {out} (train with: emdiffuse train --data {out} ...), {report_json.name}" + (f", {overlay.name}" if "overlay" in report else ""))
    return 0


def _set_info(path: Path) -> bool:
    """Describe a training set made by ``prepare``; False when ``path`` is not one."""
    import zarr

    from .prepare import SET_FORMAT

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:  # noqa: BLE001 - not a zarr group: an image, handled by the caller
        return False
    attrs = dict(group.attrs)
    if attrs.get("format") != SET_FORMAT:
        return False
    try:
        _print_set(path, group, attrs)
    except (TypeError, ValueError, AttributeError, KeyError) as err:
        raise InputError(f"{path}: the training set's metadata is damaged ({type(err).__name__}: {err}); prepare it again") from None
    return True


def _print_set(path: Path, group: Any, attrs: dict[str, Any]) -> None:
    print(f"training set: {path}  (variant {attrs.get('variant')}, options {attrs.get('variant_options')})")
    print(f"voxel:    {_voxel_text(tuple(attrs.get('voxel_size', ())))}" if attrs.get("voxel_size") else "voxel:    unknown")
    for name, arr in sorted(group.arrays()):
        print(f"  {name:<11} {tuple(arr.shape)} {arr.dtype}  chunks {tuple(arr.chunks)}")
    report = attrs.get("report", {})
    if "patches_kept" in report:
        print(f"patches:  kept {report['patches_kept']}, rejected {report['patches_rejected']}")
    if not attrs.get("complete"):
        print("warning:  incomplete (preparation was interrupted)")


def _sampling_lines(attrs: dict[str, Any], ndim: int) -> list[str]:
    """How large the pixels of one of our files without a pixel size are in napari's world pixels
    (its ``sampling``: a prediction's in its input's, which the reader shows in its own pixels; a
    layer napari's writer saved, in the world it lay in), by which the napari reader places it,
    judged as it judges it for an image of ``ndim`` axes (a single slice saved as a stack has its z)."""
    from .image import recorded_sampling

    if "sampling" not in attrs:
        return []
    factors = recorded_sampling(attrs["sampling"], ndim)
    if factors is None:
        return [f"sampling: {attrs['sampling']!r}, unreadable: napari shows it in its own pixels"]
    return [f"sampling: {' x '.join(f'{f:g}' for f in factors)} of napari's world pixels per pixel (no pixel size is recorded; napari places it by this)"]


def _provenance_lines(attrs: dict[str, Any], finished_blocks: int | None = 0, ndim: int | None = None) -> list[str]:
    """What made one of our outputs, whether it is complete and, without a pixel size, how large
    its pixels are (``ndim``: its axes as the napari reader shows it; None: its recorded shape's),
    from its provenance (and, for a store whose run was killed before it could say what it
    finished, its block markers)."""
    from ..jobs.predict_output import describe_bounds, describe_compute

    ndim = len(attrs.get("shape") or ()) if ndim is None else ndim
    if "shape" not in attrs or "finished" not in attrs:
        return _sampling_lines(attrs, ndim)
    settings = attrs.get("settings") or {}
    made = f"{attrs.get('software', '?')}, model {attrs.get('model', '?')} ({attrs.get('variant', '?')}"
    made += "".join(f" {k}={v}" for k, v in (attrs.get("variant_options") or {}).items()) + ")"
    if settings:
        made += f", {settings.get('sampler')} {settings.get('steps')} steps, {settings.get('samples')} samples, seed {settings.get('seed')}"
    if attrs.get("complete"):
        status = "yes"
    elif attrs.get("finished"):
        status = f"NO: only {describe_bounds(attrs['finished'], attrs['shape'])} is finished (the run was stopped; --resume continues it)"
    elif finished_blocks is None:
        status = "NO: its block markers cannot be read, so what is finished is unknown (the run was stopped; --resume continues it)"
    elif finished_blocks:
        status = f"NO: {finished_blocks} of {attrs.get('blocks', '?')} blocks are finished (the run was stopped; --resume continues it)"
    else:
        status = "NO: nothing is finished (the run was stopped)"
    lines = [f"complete: {status}", f"made by:  {made}"]
    if attrs.get("compute"):
        lines.append(f"computed: {describe_compute(attrs['compute'])}")
    if attrs.get("input"):
        lines.append(f"input:    {', '.join(attrs['input'])}")
    lines += _sampling_lines(attrs, ndim)
    bounds = attrs.get("bounds") or {}
    if isinstance(bounds.get("coverage"), (int, float)) and bounds.get("settings") in ("same", "fewer steps", "other"):
        from ..uncertainty import coverage_label

        caveat = {"same": "sampled as calibrated", "fewer steps": "sampled with fewer steps than calibrated: likely too narrow",
                  "other": "sampled otherwise than calibrated: coverage approximate"}[bounds["settings"]]
        lines.append(f"bounds:   lower/upper hold the truth at {coverage_label(bounds['coverage'], bounds['settings'])} of pixels like the calibration data's ({caveat})")
    widened = attrs.get("bounds_widened") or []
    if any(w > 1 for w in widened):
        where = "all planes" if len(widened) == 1 else ", ".join(f"plane {z} {w:.2f}x" for z, w in enumerate(widened) if w > 1)
        lines.append(f"bounds:   widened for an input noisier than the calibration data: {where}")
    if (attrs.get("bounds_rough") or {}).get("note"):
        lines.append(f"bounds:   {attrs['bounds_rough']['note']}")
    return lines


def _prediction_info(path: Path) -> bool:
    """Describe a prediction store written by ``predict``; False when ``path`` is not one."""
    import zarr

    from ..jobs.predict_output import blocks_done
    from .safe_output import own_attrs

    attrs = own_attrs(path)
    if attrs is None or "finished" not in attrs:
        return False
    group = zarr.open_group(str(path), mode="r")
    print(f"prediction: {path}")
    arrays = [(n, a) for n, a in group.members(max_depth=None) if isinstance(a, zarr.Array) and not n.startswith(".")]
    for name, arr in sorted(arrays):  # an image's level is NAME/0
        print(f"  {name.removesuffix('/0'):<11} {tuple(arr.shape)} {arr.dtype}  chunks {tuple(arr.chunks)}")
    print(f"voxel:    {_voxel_text(tuple(attrs['voxel_size']))}" if attrs.get("voxel_size") else "voxel:    unknown")
    print("\n".join(_provenance_lines(attrs, blocks_done(path))))
    return True


def cmd_info(args: argparse.Namespace) -> int:
    from .._reader import placed
    from .io import read_image

    path = Path(args.file)
    if path.is_dir() and args.dataset is None and (_set_info(path) or _prediction_info(path)):
        return 0
    img = read_image(args.file, dataset=args.dataset, level=args.level)
    data = img.data
    nbytes = int(np.prod(data.shape)) * np.dtype(data.dtype).itemsize
    chunks = img.meta.get("chunks") or (tuple(c[0] for c in data.chunks) if hasattr(data, "chunks") else None)
    lines = [
        f"file:     {img.path}",
        f"format:   {img.meta.get('format', '?')}" + (f" (level {img.meta['level']} of {img.meta['levels']})" if "levels" in img.meta else ""),
        f"shape:    {tuple(data.shape)}" + (f"  axes {img.meta['axes']}" if img.meta.get("axes") else ""),
        f"dtype:    {data.dtype}",
        *([f"colour:   {img.meta['colour']} ({data.shape[-1]} samples per pixel), not one grey value: convert it to greyscale to enhance it"] if img.meta.get("colour") else []),
        *([f"planes:   {img.meta['planes_as']}"] if img.meta.get("planes_as") else []),
        f"voxel:    {_voxel_text(tuple(img.voxel[:-1] if img.meta.get('colour') else img.voxel), img.meta.get('voxel_unit') == 'pixel')}",  # a sample is no distance
        f"chunks:   {tuple(int(c) for c in chunks) if chunks else 'none'}",
        f"size:     {nbytes / 2**20:.1f} MiB uncompressed",
        *_provenance_lines(img.meta.get("provenance") or {}, ndim=placed(args.file, img, dataset=args.dataset, quiet=True).ndim),
    ]
    print("\n".join(lines))
    return 0


def add_parsers(subparsers: Any) -> None:
    """Register ``prepare`` and ``info`` on the ``emdiffuse`` command's sub-parsers."""
    p = subparsers.add_parser("prepare", help="build a training set (zarr) from raw files, with registration and a report")
    src = p.add_argument_group("what you have (one of)")
    src.add_argument("--input", help="degraded images (noisy / low resolution); with --target")
    src.add_argument("--target", help="clean / high-resolution images of the same place (registered onto --input)")
    src.add_argument("--clean", help="clean images only: the degraded input is simulated")
    src.add_argument("--volume", help="a volume for the vEM variants")
    p.add_argument("--out", required=True, help="the training set to write, e.g. train_set.zarr")
    p.add_argument("--overwrite", action="store_true", help="replace an existing training set (built beside it, swapped in when complete)")
    p.add_argument("--preset", help="take variant, options and patch size from this preset (as for train)")
    p.add_argument("--variant", help="denoise (default), superres, iso_i or iso_a")
    p.add_argument("--option", dest="variant_option", action="append", help="variant option KEY=VALUE, e.g. factor=2")
    p.add_argument("--voxel", help="voxel size in µm, z,y,x (or y,x), when the files do not record it")
    p.add_argument("--patch", type=whole(16, 4096), help="patch size stored (target pixels); default 1.5 x the preset's, or 256")
    p.add_argument("--min-ncc", type=number(-1, 1), default=0.6, help="reject patches that correlate less after registration than this share of the correlation their noise allows (default 0.6); patches with too little signal to stand out of chance are rejected as 'no signal' whatever this is")
    p.add_argument("--min-std", type=number(0), default=0.05, help="reject patches with less contrast, in units of the 0.1-99.9 %% range / 2 (default 0.05)")
    p.add_argument("--val-fraction", type=number(0, 0.5, low_open=True, high_open=True), default=0.1, help="share of slices (or rows) held out for validation")
    p.add_argument("--no-register", action="store_true", help="the pairs are already aligned")
    p.add_argument("--rigid", action="store_true", help="global (affine) registration only, no optical flow")
    p.add_argument("--smooth", type=number(0), default=2.0, help="Gaussian sigma (px) for registration; raise for very noisy input")
    p.add_argument("--drift", action="store_true", help="correct slice-to-slice drift of --volume (FIB-SEM, SBEM)")
    sim = p.add_argument_group("simulated degradation (with --clean)")
    sim.add_argument("--dose", type=number(0, low_open=True), default=DEFAULT_DOSE, help="counts at full scale (shot noise); lower is noisier")
    sim.add_argument("--read-noise", type=number(0), default=DEFAULT_READ_NOISE, help="Gaussian read noise, fraction of the range")
    sim.add_argument("--psf-sigma", type=number(0), help="beam PSF sigma in fine pixels (superres; default FWHM of one coarse pixel)")
    sim.add_argument("--jitter", type=number(0), default=0.0, help="scan-line jitter, standard deviation in pixels")
    sim.add_argument("--jitter-correlation", type=number(0, 1, high_open=True), default=0.0, help="how much neighbouring lines jitter together (0-1)")
    p.add_argument("--overlay", type=whole(0, 64), default=4, help="pairs (slices) shown in NAME_overlay.png")
    p.add_argument("--seed", type=whole(0, 2**32 - 1), default=0)
    add_quiet(p)
    p.set_defaults(func=cmd_prepare)

    i = subparsers.add_parser("info", help="shape, dtype, voxel size and chunking of an image file (and, for our outputs, what made them and whether they are complete)")
    i.add_argument("file", help="TIFF, zarr/OME-Zarr, N5, MRC, HDF5 (file.h5:/dataset), PNG or a folder of slices")
    i.add_argument("--dataset", help="dataset inside an HDF5/N5/zarr container")
    i.add_argument("--level", type=whole(0), default=0, help="pyramid level of an OME-Zarr image")
    i.set_defaults(func=cmd_info)
