"""Export a model as a bioimage.io (BioImage Model Zoo) model package, and import one back.

The package (format 0.5, built and checked with ``bioimageio.spec``) holds the network's weights
as a PyTorch state dict, with :mod:`napari_emdiffuse.bioimageio_model` as the architecture
source; the preprocessing is the plugin's normalisation (the 0.1 and 99.9 percentiles scaled to
0-1); the prediction is deterministic (fixed seed, steps and samples) with the mean of the
samples as the first output and their standard deviation, the uncertainty, as the second; the
test tensors are a crop of the real ssTEM sample shipped with the plugin; the model card is the
documentation and the EMDiffuse paper the citation. ``model.json`` rides along as an attachment,
so :func:`import_bioimageio` gives back the model folder it came from. Like every output of the
plugin, the package replaces an existing file only when asked, and is written beside its name and
renamed into place when complete.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, ModelFileError

#: A deterministic prediction: these sampler settings are fixed in the package.
STEPS, SAMPLES, SEED = 10, 4, 0
#: Side of the square test crop (pixels of the input).
TEST_SIZE = 64
#: Relative reproducibility tolerance per output: the mean of the samples is stable, their spread less so.
RELATIVE_TOLERANCE = {"mean": 1e-4, "uncertainty": 1e-3}
#: Absolute tolerance as a fraction of the output's test tensor maximum. bioimageio.spec refuses
#: more than 1 % (a fixed value cannot fit: the uncertainty's maximum is 0.08 for one model, 0.4
#: for another); half of that cap stays clear of its float32 rounding and is still looser than what
#: bioimageio.core's test needs (it reproduced the test tensors exactly on the CPU).
ABSOLUTE_FRACTION = 0.005
CITATION = {
    "text": "Lu et al. (2024) Diffusion-based deep learning method for augmenting ultrastructural imaging and "
    "volume electron microscopy. Nature Communications 15, 4677",
    "doi": "10.1038/s41467-024-49125-z",
}
EXPORTABLE = ("denoise", "superres")  # variants whose prediction is one 2D image in, one out


_MISCALL = "info,  # pyright: ignore[reportArgumentType]  # taken from pydantic docs"


def _pydantic_compat() -> None:
    """bioimageio.spec 0.5.12 (the version bioimageio.core 0.11 pins) calls pydantic's serializer
    handlers as ``handler(value, info)`` in three places; pydantic 2.13 and later read a second
    argument as an index key and refuse, so no package could be written. Those three functions
    (already bound into pydantic's schemas) get their own code back, compiled without the extra
    argument, as pydantic documents the call; a spec that calls the handler correctly is left alone."""
    import inspect
    import textwrap

    from bioimageio.spec._internal import io_packaging
    from bioimageio.spec._internal import validated_string_with_inner_node as vs
    from bioimageio.spec.model import v0_4

    method = getattr(vs.ValidatedStringWithInnerNode, "_serialize", None)
    for func in (io_packaging.package_file_descr_serializer, v0_4.package_weights, getattr(method, "wrapped", method)):
        func = getattr(func, "__func__", func)
        if not hasattr(func, "__code__") or getattr(func, "_emdiffuse_compat", False):
            continue
        source = textwrap.dedent(inspect.getsource(func))
        if _MISCALL not in source:
            continue
        lines = source.replace(_MISCALL, "").splitlines()
        while lines[0].startswith("@"):  # the decorators are applied already
            lines.pop(0)
        space: dict[str, Any] = {}
        exec(compile("\n".join(lines), inspect.getsourcefile(func) or "<bioimageio>", "exec"), func.__globals__, space)  # noqa: S102
        func.__code__ = space[func.__name__].__code__
        func._emdiffuse_compat = True  # its source lines no longer match its code: never again


def _test_crop(model: Any) -> np.ndarray:
    """A crop of the real ssTEM sample (the first slice), as float32."""
    import tifffile

    from ._sample_data import sample_path

    plane = tifffile.imread(sample_path(), key=0)
    return np.ascontiguousarray(plane[:TEST_SIZE, :TEST_SIZE]).astype(np.float32)


def _scaled(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """The package's preprocessing, for the test outputs: percentiles to 0 and 1."""
    lo, hi = np.percentile(image, [low, high])
    return ((image - lo) / (hi - lo + 1e-6)).astype(np.float32)


def _cover(image: np.ndarray, mean: np.ndarray, std: np.ndarray, path: Path) -> None:
    from PIL import Image

    def grey(a: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(a, [0.5, 99.5])
        return (np.clip((a - lo) / (hi - lo + 1e-12), 0, 1) * 255).astype(np.uint8)

    panels = [np.kron(grey(a), np.ones((4, 4), np.uint8)) for a in (image, mean, std)]  # 256 px tall
    h = max(p.shape[0] for p in panels)
    row = np.concatenate([np.pad(p, ((0, h - p.shape[0]), (0, 8)), constant_values=255) for p in panels], axis=1)
    Image.fromarray(row).resize((row.shape[1], h)).save(path)


def _first_reason(err: ValueError) -> str:
    """The first complaint of pydantic's refusal of a description, or of bioimageio.spec's refusal of
    a written package ("... is invalid:" then one reason a line): the user sees one line."""
    from pydantic import ValidationError

    if isinstance(err, ValidationError) and err.errors():
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"]))
        msg = str(first["msg"]).removeprefix("Value error, ")
        return f"{where}: {msg}" if where else msg
    lines = [line.strip(" -") for line in str(err).split("is invalid:", 1)[-1].splitlines()]
    return next((line for line in lines if line), type(err).__name__)


def export_bioimageio(model_dir: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``out`` (a .zip) as a bioimage.io model package of the model in ``model_dir``;
    an existing ``out`` is replaced only with ``overwrite``, and never when it is one of the
    files the package is made from."""
    import torch
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio

    from ._sample_data import sample_path
    from .bioimageio_model import EMDiffusePrediction
    from .data.safe_output import check_new_output, replacing_file
    from .model_file import MODEL_JSON, WEIGHTS, Model, read_model_json
    from .variants import model_options

    _pydantic_compat()

    model_dir, out = Path(model_dir), Path(out)
    if out.suffix.lower() != ".zip":
        raise InputError(f"{out}: a bioimage.io package is a .zip file; name it ….zip")
    check_new_output(out, [model_dir / MODEL_JSON, model_dir / WEIGHTS, model_dir / "MODEL_CARD.md", sample_path()], overwrite)
    model = Model.load(model_dir)
    model_options(model)  # a bad variant option is refused before anything runs
    if model.variant not in EXPORTABLE:
        raise InputError(
            f"{model_dir}: bioimage.io export takes EMDiffuse-n and EMDiffuse-r models (one image in, one out); "
            f"this is a {model.variant} model, which builds a volume slab by slab from several input slices, "
            "a prediction bioimage.io's runners cannot reproduce; share the model folder itself "
            "(model.json + weights.safetensors) instead"
        )
    meta = read_model_json(model_dir)
    low, high = float(model.info.normalisation["low"]), float(model.info.normalisation["high"])
    voxel = 0.004  # µm: the ssTEM sample's pixel, the test input's
    image = _test_crop(model)
    wrapper = EMDiffusePrediction(meta, STEPS, SAMPLES, SEED).eval()
    with torch.no_grad():
        mean, std = (t.numpy() for t in wrapper(torch.from_numpy(_scaled(image, low, high))[None, None]))
    factor = mean.shape[-1] // image.shape[-1]

    with tempfile.TemporaryDirectory(prefix="emdiffuse-bioimageio-") as tmp:
        work = Path(tmp)
        np.save(work / "test_input.npy", image[None, None])
        np.save(work / "test_mean.npy", mean)
        np.save(work / "test_uncertainty.npy", std)
        torch.save(wrapper.state_dict(), work / "weights.pt")
        (work / MODEL_JSON).write_text(json.dumps(meta, indent=2))
        card_file = model_dir / "MODEL_CARD.md"
        card = card_file.read_text() if card_file.is_file() else model.info.card
        (work / "README.md").write_text(card or f"# {model_dir.name}\n\nA napari-emdiffuse {model.variant} model.\n")
        _cover(image, mean[0, 0], std[0, 0], work / "cover.png")
        source = work / "bioimageio_model.py"
        source.write_text(Path(__file__).with_name("bioimageio_model.py").read_text())

        multiple = int(model.network.size_multiple)
        # at least 2 x 2 pixels at the bottleneck: GroupNorm needs more than one value per group
        size = bio.ParameterizedSize(min=2 * multiple, step=multiple)
        y_in = bio.SpaceInputAxis(id=bio.AxisId("y"), size=size, scale=voxel, unit="micrometer")
        x_in = bio.SpaceInputAxis(id=bio.AxisId("x"), size=size, scale=voxel, unit="micrometer")

        def out_axes() -> list[Any]:
            return [bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier("channel")])] + [
                bio.SpaceOutputAxis(
                    id=bio.AxisId(a), size=bio.SizeReference(tensor_id=bio.TensorId("input"), axis_id=bio.AxisId(a)),
                    scale=voxel / factor, unit="micrometer",
                )
                for a in ("y", "x")
            ]  # fmt: skip

        inputs = [
            bio.InputTensorDescr(
                id=bio.TensorId("input"),
                description="EM image, grey values as acquired",
                axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier("em")]), y_in, x_in],
                test_tensor=bio.FileDescr(source=work / "test_input.npy"),
                preprocessing=[
                    bio.EnsureDtypeDescr(kwargs=bio.EnsureDtypeKwargs(dtype="float32")),
                    bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(axes=[bio.AxisId("y"), bio.AxisId("x")], min_percentile=low, max_percentile=high)),
                ],
            )
        ]
        outputs = [
            bio.OutputTensorDescr(
                id=bio.TensorId(name), description=text, axes=out_axes(), test_tensor=bio.FileDescr(source=work / f"test_{name}.npy")
            )
            for name, text in (
                ("mean", f"mean of {SAMPLES} samples (0-1 = the input's {low:g}-{high:g} percentiles)"),
                ("uncertainty", "standard deviation of the samples, in the same units"),
            )
        ]
        tolerance = [
            bio.ReproducibilityTolerance(
                relative_tolerance=RELATIVE_TOLERANCE[k], absolute_tolerance=max(float(test.max()), 0.0) * ABSOLUTE_FRACTION,
                output_ids=[bio.TensorId(k)],
            )
            for k, test in (("mean", mean), ("uncertainty", std))
        ]  # fmt: skip
        with replacing_file(out) as tmp:
            try:
                descr = bio.ModelDescr(
                    name=f"napari-emdiffuse {model_dir.name}"[:128],
                    description=(f"{model.variant} model from napari-emdiffuse: diffusion-model enhancement of electron microscopy "
                                 f"with an uncertainty map ({STEPS} sampler steps, {SAMPLES} samples, seed {SEED})."),  # fmt: skip
                    authors=[bio.Author(name="napari-emdiffuse")],
                    cite=[bio.CiteEntry(**CITATION)],
                    license="MIT",
                    documentation=bio.FileDescr(source=work / "README.md"),
                    covers=[bio.FileDescr(source=work / "cover.png")],
                    tags=["electron-microscopy", "denoising" if model.variant == "denoise" else "super-resolution", "diffusion", "uncertainty", "pytorch"],
                    attachments=[bio.FileDescr(source=work / MODEL_JSON)],
                    inputs=inputs,
                    outputs=outputs,
                    weights=bio.WeightsDescr(
                        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
                            source=work / "weights.pt",
                            architecture=bio.ArchitectureFromFileDescr(
                                source=source, callable=bio.Identifier("EMDiffusePrediction"),
                                kwargs={"model_json": meta, "steps": STEPS, "samples": SAMPLES, "seed": SEED},
                            ),
                            pytorch_version=bio.Version(torch.__version__.split("+")[0]),
                        )
                    ),  # fmt: skip
                    config=bio.Config(bioimageio=bio.BioimageioConfig(reproducibility_tolerance=tolerance)),
                )
                save_bioimageio_package(descr, output_path=tmp)
            except ValueError as err:  # pydantic's refusal of the description, or the spec's of the written package
                raise RuntimeError(f"{out}: the bioimage.io package could not be validated ({_first_reason(err)})") from err
    return out


def check_package(package: str | Path) -> Any:
    """bioimageio.core's model test of a package (format validation, then the test tensors
    reproduced within the package's tolerances), offline: no URL of a citation or a
    documentation is fetched (``BIOIMAGEIO_PERFORM_IO_CHECKS=false`` does the same for the
    ``bioimageio`` command). Returns its validation summary (``.status`` is "passed" or "failed")."""
    from bioimageio.core import test_model
    from bioimageio.spec import ValidationContext

    _pydantic_compat()
    with ValidationContext(perform_io_checks=False):
        return test_model(str(package))


def import_bioimageio(package: str | Path, out: str | Path) -> Path:
    """The model folder (model.json + weights.safetensors) inside a package :func:`export_bioimageio` wrote."""
    import torch

    from .model_file import MODEL_JSON, Model
    from .variants import model_options

    package, out = Path(package), Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} is not empty; choose a new folder for the imported model")
    try:
        with zipfile.ZipFile(package) as z:
            names = set(z.namelist())
            if MODEL_JSON not in names or "weights.pt" not in names:
                raise ModelFileError(f"{package}: not a package exported by napari-emdiffuse (no {MODEL_JSON} or weights.pt)")
            meta = json.loads(z.read(MODEL_JSON))
            with tempfile.TemporaryDirectory() as tmp:
                z.extract("weights.pt", tmp)
                state = torch.load(Path(tmp) / "weights.pt", map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{package}: cannot read the package ({err})") from None
    model = Model.from_json(meta, source=str(package))
    model_options(model)
    network_state = {k.removeprefix("network."): v for k, v in state.items()}
    from .model_file import load_state_strict

    load_state_strict(model.network, network_state, str(package))
    return model.save(out)


def cmd_export(args: Any) -> int:
    from .models import find_model

    out = export_bioimageio(find_model(args.model), args.out, args.overwrite)
    print(f"wrote the bioimage.io model package {out}")
    if args.check:
        summary = check_package(out)
        print(f"bioimage.io model test: {summary.status}")
        return 0 if summary.status == "passed" else 1
    return 0


def cmd_import(args: Any) -> int:
    print(f"imported {args.package} into the model folder {import_bioimageio(args.package, args.out)}")
    return 0


def add_parsers(subparsers: Any) -> None:
    """Register ``export-bioimageio`` and ``import-bioimageio`` on the ``emdiffuse`` command."""
    p = subparsers.add_parser("export-bioimageio", help="write a model as a bioimage.io model package (.zip)")
    p.add_argument("model", help="a bundled model's name or a model folder (EMDiffuse-n or -r)")
    p.add_argument("out", help="the package to write (….zip)")
    p.add_argument("--check", action="store_true", help="then run bioimage.io's model test on it (offline)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing package (written beside it and renamed into place when complete)")
    p.set_defaults(func=cmd_export)
    q = subparsers.add_parser("import-bioimageio", help="a package written by export-bioimageio, back as a model folder")
    q.add_argument("package", help="the package (….zip)")
    q.add_argument("--out", required=True, help="the model folder to write (must not exist, or be empty)")
    q.set_defaults(func=cmd_import)
