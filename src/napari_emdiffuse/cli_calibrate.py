"""``emdiffuse calibrate``: fit a model's error bounds on data whose truth the user knows."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, get_args

import numpy as np

from .data.degrade import DEFAULT_DOSE, DEFAULT_READ_NOISE
from .arg_types import as_flags
from .cli_jobs import add_quiet, ctrl_c_cancels, drive
from .errors import InputError, naming


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .jobs.calibrate import calibrate
    from .jobs.events import new_cancel_token
    from .jobs.inputs import read_logged
    from .model_file import check_model_folder
    from .models import find_model, resolve_model
    from .variants import get_variant, model_options

    if bool(args.clean) == bool(args.input or args.truth) or bool(args.input) != bool(args.truth):
        raise InputError("give either --clean (the degradation is simulated) or both --input and --truth")
    out = Path(args.out)
    if out.exists() and out.resolve() == find_model(args.model).resolve():
        raise InputError(
            f"{out}: is the model being calibrated; calibrate writes a calibrated copy, so give --out another folder "
            "(replacing the model's own folder would drop what else it holds, such as the training checkpoint)"
        )
    check_model_folder(out, args.overwrite)  # before any computation: a refusal now costs nothing
    model = resolve_model(args.model)
    variant, options = get_variant(model.variant), model_options(model)
    if args.clean:
        clean = read_logged(args.clean, "clean")
        with naming({"clean images": args.clean, "clean volume": args.clean}):
            image, truth = variant.calibration_pair(np.asarray(clean.data), options, dose=args.dose, read_noise=args.read_noise, seed=args.seed)
        voxel, source = variant.calibration_voxel(clean.voxel, options), f"{Path(args.clean).name} (its degradation simulated{_noise_note(model.variant, args)})"
        names = (f"the input simulated from {args.clean}", f"the truth from {args.clean}")
    else:
        inp, tru = read_logged(args.input, "input"), read_logged(args.truth, "truth")
        image, truth, voxel = np.asarray(inp.data), np.asarray(tru.data), inp.voxel
        source = f"{Path(args.input).name} against {Path(args.truth).name}"
        names = (f"the input {args.input}", f"the truth {args.truth}")
    over: dict[str, Any] = {k: getattr(args, k) for k in ("sampler", "steps", "samples") if getattr(args, k) is not None}
    with as_flags("sample", over):
        sample = model.preset.with_overrides({"sample": over}).sample
    token = new_cancel_token()
    with ctrl_c_cancels(token) as stop:
        with naming({"image": args.clean or args.input}):
            result = drive(calibrate(model, image, truth, sample=sample, voxel=voxel, device=args.device, cancel=token, source=source, names=names), args.quiet)
    if not result.complete:
        return stop.exit_status()
    folder = result.model.save_new(out, overwrite=args.overwrite)
    print(f"wrote the calibrated model {folder}")
    return 0


def _noise_note(variant: str, args: argparse.Namespace) -> str:
    return f": dose {args.dose:g}, read noise {args.read_noise:g}" if variant == "denoise" else ""


def add_parser(subparsers: Any) -> None:
    """Register ``calibrate`` on the ``emdiffuse`` command's sub-parsers."""
    from .arg_types import number, whole
    from .config import SamplerName

    p = subparsers.add_parser(
        "calibrate",
        help="fit a model's error bounds on a region whose truth you know; writes a calibrated copy of the model",
        description=(
            "Runs the model as predict does on INPUT and compares with TRUTH (or simulates the input from clean "
            "data with --clean), then stores the scale that makes its interval cover 1 - alpha of the pixels. "
            "The bounds hold for data like the calibration region, at the sampling settings used here: use a "
            "region of slices the model was not trained on (bounds fitted on the training slices can fall short on new ones)."
        ),
    )
    p.add_argument("--model", required=True, help="model folder, or the name of a bundled model")
    p.add_argument("--clean", help="clean images (EMDiffuse-n, -r) or an isotropic volume (vEMDiffuse): the input is simulated from it")
    p.add_argument("--input", help="an input as predict takes it (with --truth)")
    p.add_argument("--truth", help="what the model's output for --input should be, pixel for pixel, in the same intensity units")
    p.add_argument("--dose", type=number(0, low_open=True), default=DEFAULT_DOSE, help="simulated dose for EMDiffuse-n (with --clean)")
    p.add_argument("--read-noise", type=number(0), default=DEFAULT_READ_NOISE, help="simulated read noise for EMDiffuse-n (with --clean)")
    p.add_argument("--seed", type=int, default=0, help="of the simulated noise")
    p.add_argument("--sampler", choices=sorted(get_args(SamplerName)), help="sampling settings to calibrate for (default: the model's)")
    p.add_argument("--steps", type=whole(1))
    p.add_argument("--samples", type=whole(2), help="samples per prediction; their spread is the error map")
    p.add_argument("--out", required=True, help="the calibrated model folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder at --out")
    p.add_argument("--device", default="auto")
    add_quiet(p)
    p.set_defaults(func=cmd_calibrate)
