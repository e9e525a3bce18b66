"""The ``emdiffuse`` command: train, predict, presets (and the data commands).

Every error a user can cause ends in a one-line message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys
import traceback
import unicodedata
from pathlib import Path
from typing import Any, NoReturn, Sequence, get_args

import numpy as np

from .arg_types import as_flags
from .cli_jobs import add_quiet, ctrl_c_cancels, drive, terminate
from .errors import DeviceError, EMDiffuseError, InputError, naming



def _roi(text: str | None) -> Any:
    """``--roi Y0:Y1,X0:X1`` as a :class:`~.variants.base.Roi` (None without it); an empty one is refused."""
    if not text:
        return None
    from .variants.base import Roi

    try:
        ys, xs = text.split(",")
        y0, y1 = (int(v) for v in ys.split(":"))
        x0, x1 = (int(v) for v in xs.split(":"))
    except ValueError:
        raise InputError(f"--roi {text!r}: expected Y0:Y1,X0:X1 in pixels, e.g. 0:256,128:512") from None
    if y0 >= y1 or x0 >= x1:
        raise InputError(f"--roi {text}: empty; Y0 must be less than Y1 and X0 less than X1, e.g. 0:256,128:512")
    return Roi(y0, y1, x0, x1)


def _check_roi(roi: Any, text: str, shape: Sequence[int], source: str) -> None:
    """Refuse a ``--roi`` not wholly inside the image it applies to (the training jobs would clip
    it, silently training on another region than the one asked for); ``source`` names the image."""
    height, width = (int(n) for n in shape[-2:])
    if roi.y0 < 0 or roi.x0 < 0 or roi.y1 > height or roi.x1 > width:
        apart = roi.y0 >= height or roi.x0 >= width or roi.y1 <= 0 or roi.x1 <= 0
        where = "lies outside" if apart else "reaches past the edge of"
        raise InputError(f"--roi {text}: {where} the image {source} ({height} x {width} px); give Y0:Y1,X0:X1 within it")


def _require_device(args: argparse.Namespace) -> None:
    """A device named with ``--device`` (cuda, cuda:N, mps) must be usable here, or the command
    stops before any work: a run meant for a GPU must not creep along on the CPU. (The jobs fall
    back to the CPU with a warning, for the widgets, whose menus offer only the devices found.)
    With ``--cluster`` the workers choose theirs, and refuse one they do not have."""
    name = getattr(args, "device", None)
    if name is None or name.strip().lower() in ("auto", "cpu") or getattr(args, "cluster", None):
        return
    from .engine.device import select_device

    try:
        select_device(name, strict=True)
    except DeviceError as err:
        hint = "" if str(err).startswith("unknown device") else "; use --device auto (the best found here) or cpu"  # an unknown name lists the choices itself
        raise DeviceError(f"--device {name}: {err}{hint}") from None


def cmd_presets(args: argparse.Namespace) -> int:
    from .config import builtin_presets, load_preset
    from .variants import resolve

    if args.show:
        preset = load_preset(args.show)
        resolve(preset, args.show)
        print(preset.to_json())
        return 0
    for name in sorted(builtin_presets()):
        p = load_preset(name)
        first = re.split(r"\.(?:\s|$)", p.description)[0]  # its first sentence: "1.6 M" ends none
        print(f"{name:<22} {p.variant:<10} {first}")
    return 0


_ESCAPES = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|.)")


def printable(text: str) -> str:
    """``text`` without terminal escape sequences or control characters (line breaks and tabs
    kept): a model card from someone else's folder must not move the cursor or retitle the
    terminal."""
    text = _ESCAPES.sub("", text)
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c)[0] != "C")


def cmd_models(args: argparse.Namespace) -> int:
    from .models import bundled_models, describe_model, resolve_model
    from .variants import model_options, plain_options

    if args.show:
        model = resolve_model(args.show)
        model_options(model)  # a broken model folder is refused, however it is used
        print(printable(model.info.card or f"{args.show}: no model card; what its model.json records:\n{model.summary()}"))
        warning = model.quality_warning()
        if warning:
            print(f"warning: {warning}")
        return 0
    for name, folder in sorted(bundled_models().items()):
        print(printable(f"{name:<15} {describe_model(folder, plain_options)}"))
    print("(`emdiffuse models --show NAME` prints a model's card; `emdiffuse predict --model NAME` uses it)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .arg_types import variant_option
    from .config import load_preset, parse_preset
    from .engine.distributed import detect_world
    from .jobs.events import new_cancel_token
    from .jobs.train import checkpoint_state, continues_run, finished_run, train
    from .jobs.inputs import FILE_INPUTS, training_arrays
    from .models import resolve_model
    from .variants import model_options, resolve

    roi = _roi(args.roi)  # a malformed or empty region is refused before any file is read
    world = detect_world()
    resume = continues_run(args.out, args.resume, args.overwrite, world)
    overrides: dict[str, Any] = {"train": {}}
    if args.iterations is not None:
        overrides["train"]["iterations"] = args.iterations
    if args.minutes is not None:
        overrides["train"]["minutes"] = args.minutes
    if args.seed is not None:
        overrides["train"]["seed"] = args.seed
    if args.batch_size is not None:
        overrides["train"]["batch_size"] = args.batch_size
    if args.variant_option:
        overrides["variant_options"] = dict(variant_option(o) for o in args.variant_option)
    init = resolve_model(args.from_model) if args.from_model else None
    if init is not None:
        model_options(init)  # a broken model folder is refused before any data is read
    with as_flags("train", overrides["train"]):
        if resume:  # the run's own settings, so that simulated data is made the same way again
            state = checkpoint_state(args.out)
            preset = parse_preset(state["preset"]).with_overrides(overrides)
            finished = finished_run(Path(args.out), int(state["step"]), preset)
            if finished is not None:  # said before any data is read
                if world.is_main:
                    print(finished[1])
                return 0
            if args.iterations is not None and args.minutes is None and preset.train.minutes is not None:
                # asked for a number of steps: the first run's time limit would stop this one short of them, unsaid
                print(f"resuming to {args.iterations} steps without the first run's time limit ({preset.train.minutes:g} minutes); "
                      "give --minutes to set one")
                preset = preset.with_overrides({"train": {"minutes": None}})
        elif init is not None and not (args.config or args.preset):  # fine-tune with the model's own preset
            preset = init.preset.with_overrides(overrides)
        else:
            preset = load_preset(args.config or args.preset or "emdiffuse-n-cpu", overrides)
    variant, _ = resolve(preset, args.config or None)  # a bad variant or option named before any file is read
    arrays, notes, pixel = training_arrays(
        preset.variant, preset.variant_options, {name: getattr(args, name) for name in FILE_INPUTS},
        clean=args.clean, data=args.data, dose=args.dose, read_noise=args.read_noise, seed=preset.train.seed,
    )  # fmt: skip
    if not arrays:
        needs = " and ".join(f"--{n}" for n in variant.training_inputs)
        raise InputError(f"no training data: give {needs} (or --clean with simulated degradation); a resumed run needs its data again")
    if roi is not None:  # in the pixels of the network's input, the variant's first training input, where it came from
        first = variant.training_inputs[0]
        given = getattr(args, first, None)
        source = given or (f"of the training set {args.data}" if args.data else f"simulated from {args.clean}")
        _check_roi(roi, args.roi, arrays[first].shape, str(source))
    token = new_cancel_token()
    with ctrl_c_cancels(token) as stop:
        events = train(
            preset, arrays, args.out, device=args.device, init_model=init, resume=resume,
            roi=roi, data_note="; ".join(notes), cancel=token, pixel_size_um=pixel,
        )
        simulated = f"(simulated from {args.clean})" if args.clean and not args.input else None
        with naming({"input": args.input or simulated, "target": args.target or args.clean, "volume": args.volume, "clean images": args.clean}):
            # one voice: the other processes of a torchrun/srun run show nothing
            result = drive(events, args.quiet or not world.is_main, echo=world.is_main)
    if world.is_main and result.reason != "nothing left to train":  # the job said why nothing was saved
        print(f"model saved to {result.model_dir} after {result.steps} steps ({result.reason})")
    return stop.exit_status() if stop.signum is not None else 0  # a signal during the wrap-up is one too


def cmd_predict(args: argparse.Namespace) -> int:
    from ._reader import placed
    from .data.tiff import TIFF_DTYPES
    from .jobs.events import new_cancel_token
    from .jobs.predict import predict
    from .jobs.predict_output import OutputNames
    from .jobs.inputs import read_logged
    from .models import model_record, resolve_model
    from .variants import model_options

    names = OutputNames.for_path(args.output)  # an unsupported name is refused before the model loads
    model = resolve_model(args.model)
    options = model_options(model)  # a broken model folder is refused before the input is read
    img = read_logged(args.input, "image", grey_of_alpha=True)  # as the napari reader and Enhance take it
    over: dict[str, Any] = {}
    for key in ("sampler", "steps", "spacing", "samples", "tile_size", "overlap", "tile_batch", "seed"):
        if getattr(args, key) is not None:
            over[key] = getattr(args, key)
    with as_flags("sample", over):
        sample = model.preset.with_overrides({"sample": over}).sample
    if args.keep_dtype and not names.store and np.dtype(img.data.dtype) not in TIFF_DTYPES:
        raise InputError(f"--keep-dtype: the input {args.input} is {img.data.dtype}, which a TIFF cannot hold; leave out --keep-dtype (float32) or write .zarr")
    with naming({"image": args.input}):
        voxel, sampling, position = _as_placed(img.voxel, placed(args.input, img))  # as the napari reader and Enhance place it
        origin = _output_origin(model, options, img, voxel, position)
    token = new_cancel_token()
    with ctrl_c_cancels(token) as stop:
        events = predict(
            model,
            img.data,
            sample=sample,
            voxel=voxel,
            device=args.device,
            out_dtype="input" if args.keep_dtype else "float32",
            output=Path(args.output),
            input_paths=[img.path] if img.path else [],
            keep_samples=args.save_samples,
            compile=args.compile,
            cancel=token,
            overwrite=args.overwrite,
            model_name=model_record(args.model),
            estimate=args.estimate,
            alpha=args.alpha,
            resume=args.resume,
            cluster=args.cluster,
            origin=origin,
            sampling=sampling,
        )
        with naming({"image": args.input}):
            result = drive(events, args.quiet)
    if not result.complete:  # the job's message said what was kept
        return stop.exit_status()
    print("wrote " + ", ".join(str(p) for p in result.written))
    return 0


def _as_placed(voxel: tuple[float, ...], where: Any) -> tuple[tuple[float, ...], tuple[float, ...] | None, tuple[float, ...] | None]:
    """The voxel, ``sampling`` and first pixel's position (None: at 0) predict is given for a file
    placed as ``where`` (:func:`._reader.placed`): as it records them, or, for a file whose z
    spacing alone is known (x at the 1 per pixel placeholder, as an ImageJ stack with a spacing
    and no resolution), its voxel as the sampling in pixels and its position in its own pixels,
    as Enhance gives a layer of it (:meth:`.Placement.sampling`, :meth:`.Placement.position_um`):
    so that the isotropic variants judge its z spacing, and the result, which records no pixel
    size, reopens over the file where the reader lays it (it lay at z scale 1)."""
    from .data.image import known_pixel_um

    n = len(voxel)
    position = None if where.position is None else tuple(float(p) for p in where.position[-n:])  # a single slice saved as a stack is read as its plane
    if where.sampling:
        return voxel, tuple(where.sampling[-n:]), position
    if known_pixel_um(voxel) is None and any(float(v) != 1.0 for v in voxel):
        pixels = None if position is None else tuple(p / float(v) for p, v in zip(position, voxel))
        return (1.0,) * n, tuple(float(v) for v in voxel), pixels
    return voxel, None, position


def _output_origin(model: Any, options: Any, img: Any, voxel: tuple[float, ...], position: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """Where the result's first pixel lies (µm; without a pixel size, in the input's pixels) when
    the input records its own ``position`` (from :func:`_as_placed`: an OME-Zarr translation, an
    ImageJ origin, in the unit of ``voxel``): there, moved as the variant moves it, so the result
    reopens over the input in napari; None leaves the variant's own geometry."""
    from .variants import get_variant

    if position is None:
        return None
    variant = get_variant(model.variant)
    variant.check_input(img, options)
    shift = variant.output_geometry(img.shape, voxel, options).origin
    return tuple(t + s for t, s in zip(position, shift))


def build_parser() -> argparse.ArgumentParser:
    from .arg_types import number
    from .data.degrade import DEFAULT_DOSE, DEFAULT_READ_NOISE
    from .config import SampleConfig, SamplerName

    p = _Parser(prog="emdiffuse", description="Diffusion-model enhancement of electron microscopy images.")
    p.add_argument("-v", "--verbose", action="store_true", help="more messages, and tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train or fine-tune a model")
    t.add_argument("--preset", help="built-in preset name (see `emdiffuse presets`; default emdiffuse-n-cpu, or with --from-model that model's own)")
    t.add_argument("--config", help="JSON preset file (may name a built-in preset as \"base\")")
    t.add_argument("--input", help="degraded images (noisy / low resolution), paired with --target")
    t.add_argument("--target", help="clean / high-resolution images, registered to --input")
    t.add_argument("--volume", help="a volume (vEM variants)")
    t.add_argument("--data", help="a training set made by `emdiffuse prepare` (zarr)")
    t.add_argument("--clean", help="clean images only: the degradation is simulated")
    t.add_argument("--dose", type=number(0, low_open=True), default=DEFAULT_DOSE, help="simulated dose: counts at full scale (with --clean)")
    t.add_argument("--read-noise", type=number(0), default=DEFAULT_READ_NOISE, help="simulated read noise, fraction of range (with --clean)")
    t.add_argument("--out", required=True, help="run folder: model.json, weights and checkpoint go here")
    t.add_argument("--iterations", type=int)
    t.add_argument("--minutes", type=float, help="end within this many minutes: training stops early enough for the final validation and calibration "
                   "(at least half the time is training's; a calibration that does not fit in the rest uses fewer patches)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    t.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a model or checkpoint, replacing it")
    t.add_argument("--from-model", help="fine-tune this model (a folder, or the name of a bundled model)")
    t.add_argument("--roi", help="train only on Y0:Y1,X0:X1 (pixels of --input or --volume; it must lie inside the image)")
    t.add_argument("--option", dest="variant_option", action="append", help="variant option KEY=VALUE, e.g. factor=2")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps; a device named here that is not usable is an error")
    add_quiet(t)
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("predict", help="enhance an image or volume with a model")
    r.add_argument("--model", required=True, help="model folder, or the name of a bundled model")
    r.add_argument("--input", required=True)
    r.add_argument("--output", required=True, help="OUT.tif (and OUT_uncertainty.tif are written), OUT.ome.tif or OUT.zarr")
    r.add_argument("--sampler", choices=sorted(get_args(SamplerName)))
    r.add_argument("--steps", type=int, help="sampler steps (network evaluations per sample)")
    r.add_argument("--spacing", choices=get_args(SampleConfig.model_fields["spacing"].annotation), help="noise levels; emdiffuse-test: the original's test schedule")
    r.add_argument("--samples", type=int, help="samples averaged; their spread is the uncertainty")
    r.add_argument("--tile-size", type=int)
    r.add_argument("--overlap", type=int)
    r.add_argument("--tile-batch", type=int, help="tiles x samples evaluated at once")
    r.add_argument("--seed", type=int)
    r.add_argument(
        "--estimate", choices=("best", "mean"), default="best",
        help="the output: best = the network's posterior-mean estimate (highest PSNR; for measuring), "
        "mean = the mean of the samples; --save-samples adds the sharp samples (for looking at detail)",
    )
    r.add_argument("--alpha", type=float, help="miscoverage of the calibrated interval (default: the model's, 0.1 for 90 %%)")
    r.add_argument("--keep-dtype", action="store_true", help="write the input's data type instead of float32")
    r.add_argument("--save-samples", action="store_true", help="also write every sample")
    r.add_argument("--overwrite", action="store_true", help="replace existing outputs (written beside them and swapped in when complete)")
    r.add_argument("--resume", action="store_true", help="continue a zarr output left by a cancelled or killed run: only the missing blocks are computed")
    r.add_argument("--cluster", help="run the blocks on dask workers: local:N, tcp://host:port (a running scheduler) or a cluster file (JSON, SLURM/PBS/LSF); see docs/whole-volume.md")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps; a device named here that is not usable is an error")
    r.add_argument("--compile", action="store_true", help="torch.compile the network first (about a minute of compiling; on a CPU it ran 1.1-1.4x slower than without, docs/benchmarks-throughput.md)")
    add_quiet(r)
    r.set_defaults(func=cmd_predict)

    s = sub.add_parser("presets", help="list the built-in presets, or show one")
    s.add_argument("--show", metavar="NAME", help="print a preset as JSON (a starting point for your own)")
    s.set_defaults(func=cmd_presets)

    m = sub.add_parser("models", help="list the bundled default models, or show one's model card")
    m.add_argument("--show", metavar="NAME", help="print the model card of a bundled model (or a model folder)")
    m.set_defaults(func=cmd_models)
    from .bioimageio_export import add_parsers as add_bioimageio_parsers
    from .cli_calibrate import add_parser as add_calibrate_parser
    from .data.cli_commands import add_parsers
    from .import_emdiffuse import add_parser as add_import_parser

    add_calibrate_parser(sub)
    add_parsers(sub)
    add_import_parser(sub)
    add_bioimageio_parsers(sub)
    return p


#: options whose value may begin with "-": a region reaching past the top or left edge
#: (``--roi -10:64,0:64``), which argparse would take for an option ("expected one argument")
DASHED_VALUES = ("--roi",)


def attach_dashed_values(argv: Sequence[str]) -> list[str]:
    """``--roi -10:64,0:64`` as ``--roi=-10:64,0:64``, so that such a value reaches our own check,
    which says what is wrong with it (a value of ``-`` and a digit only: ``--roi --device cpu``
    still lacks its value)."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in DASHED_VALUES and re.match(r"-\d", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line, like every other error (argparse prints the usage first);
    an option's value that begins with "-" taken as its value (:func:`attach_dashed_values`)."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        return super().parse_known_args(attach_dashed_values(sys.argv[1:] if args is None else args), namespace)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


#: what else than --device cpu helps when the GPU runs out of memory, by command: sampling halves
#: its tile batch by itself down to one tile before it gives up (engine.tiling), so only a smaller
#: tile helps predict; calibrate samples with the model's own tiles
_SMALLER = {"train": "a smaller --batch-size (or a --config with a smaller train.patch_size)", "predict": "a smaller --tile-size"}


def _out_of_memory_hint(command: str, err: BaseException) -> str | None:
    """What a user does about a GPU that ran out of memory (the error itself, or the cause of a
    failed block whose finished blocks are kept), or None for any other error: a device too small
    for these settings is the user's to fix, not a bug of ours."""
    from .engine.device import is_out_of_memory

    smaller = _SMALLER.get(command)
    if is_out_of_memory(err):
        return f"the GPU ran out of memory: try {smaller + ', or ' if smaller else ''}--device cpu"
    if err.__cause__ is not None and is_out_of_memory(err.__cause__):
        return "the GPU ran out of memory: resume with --device cpu (slower) or on a GPU with more memory" + (f"; {smaller} starts the result afresh" if smaller else "")
    return None


class _Stderr(logging.StreamHandler):
    """Messages to whatever ``sys.stderr`` is now (it is replaced under tests and in notebooks)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _Marked(logging.Formatter):
    """A warning starts with "warning: ", as a job's warnings do (:func:`.cli_jobs.drive`): in a
    terminal it reads apart from the progress notes that ``-v`` adds."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"warning: {text}" if record.levelno == logging.WARNING else text


def _log_to_stderr(verbose: bool) -> None:
    """Our warnings always, our progress notes with ``-v``; other libraries' log messages only
    with ``-v`` (their failures reach the user as our one-line errors)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(old)
    handler = _Stderr()
    handler.setFormatter(_Marked("%(message)s"))
    handler.addFilter(lambda r: verbose or r.name.split(".")[0] == "napari_emdiffuse")
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


#: the status of a command whose reader closed its output early, as the shell's tools end (128 + SIGPIPE)
CLOSED_OUTPUT = 141


def _stdout_closed() -> bool:
    """Whether our standard output is a pipe its reader has closed (rather than some other pipe
    of a job breaking): polling such a pipe reports an error or a hang-up (Linux, macOS; where
    there is no poll, Windows: not known, False). It cannot tell which pipe raised: a job's own pipe
    breaking while our output is also closed ends quietly too."""
    import select

    if not hasattr(select, "poll"):
        return False
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor behind stdout (None under pythonw)
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its status: 0 done, 2 a problem the user can fix, 1 an internal error,
    130 interrupted by Ctrl-C, 143 by SIGTERM, 141 its output closed early (``| head``). Nothing a user can cause ends in a traceback (``-v`` shows one)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error already printed on one line
        return stop.code if isinstance(stop.code, int) else 2
    _log_to_stderr(args.verbose)
    with contextlib.suppress(ValueError):  # not the main thread: leave SIGTERM alone
        signal.signal(signal.SIGTERM, terminate)
    try:
        _require_device(args)
        status = int(args.func(args) or 0)
        if sys.stdout is not None:
            sys.stdout.flush()  # a reader that closed our output is met here, not in Python's exit
        return status
    except KeyboardInterrupt as err:  # a second Ctrl-C, or SIGTERM outside a cancellable job
        print("emdiffuse: interrupted; nothing incomplete is left under the output's name", file=sys.stderr)
        return 128 + getattr(err, "signum", signal.SIGINT)
    except MemoryError as err:
        if args.verbose:
            traceback.print_exc()
        print(f"emdiffuse {args.command}: error: not enough memory ({_one_line(err)}); write .zarr output, use a smaller region or tile size", file=sys.stderr)
        return 2
    except (EMDiffuseError, ValueError, OSError) as err:
        if isinstance(err, BrokenPipeError) and _stdout_closed():
            # the reader of our output stopped early (`emdiffuse models | head -1`): nothing is wrong
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # or Python's exit flush fails again
            os.close(devnull)
            return CLOSED_OUTPUT
        if args.verbose:
            traceback.print_exc()
        oom = _out_of_memory_hint(args.command, err)
        print(f"emdiffuse {args.command}: error: {_one_line(err)}{'; ' + oom if oom else ''}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a bug of ours: still one line, the traceback with -v
        if args.verbose:
            traceback.print_exc()
        if oom := _out_of_memory_hint(args.command, err):
            print(f"emdiffuse {args.command}: error: {oom} ({_one_line(err)})", file=sys.stderr)
            return 2
        hint = "" if args.verbose else " (run with -v for the traceback)"
        print(f"emdiffuse {args.command}: internal error: {type(err).__name__}: {_one_line(err)}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
