"""Model folders: ``model.json`` (what the model is) + ``weights.safetensors`` (EMA weights).

No pickle: a model file is data, not code. Loading checks that every weight is present with the
right shape and fails with a clear message otherwise (the original warned and carried on).
Writes are atomic: files are written beside their target and renamed into place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import __version__
from .config import NetworkConfig, Preset, parse_preset
from .data.memory import memory_budget
from .data.normalise import PERCENTILES
from .data.safe_output import StagedStore, replacing_file, write_bytes
from .engine.network import UNet
from .engine.network_original import OriginalNetwork
from .errors import ConfigError, ModelFileError

MODEL_FORMAT = 1
MODEL_JSON = "model.json"
WEIGHTS = "weights.safetensors"
#: copies of the weights training holds at once (network, EMA, gradients, two Adam moments)
TRAINING_COPIES = 5
MAX_CHANNELS = 64
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors so that a kill at any moment leaves the old file or the new one."""
    with replacing_file(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)


def tensor_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of every tensor in a safetensors file, from its header alone."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), str(f.get_slice(k).get_dtype())) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ModelFileError(f"{path}: cannot read weights ({err}); the file may be truncated or not a safetensors file") from None


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFileError(f"{path}: cannot read weights ({err}); the file may be truncated or not a safetensors file") from None


def check_model_folder(folder: Path, overwrite: bool) -> None:
    """Refuse to write a model at ``folder`` when something is there, unless it is a model
    folder and ``overwrite`` is given (a user's other folder or file is never replaced)."""
    if not (folder.exists() or folder.is_symlink()) or (folder.is_dir() and not any(folder.iterdir())):
        return
    if not (folder.is_dir() and (folder / MODEL_JSON).is_file()):
        raise ModelFileError(f"{folder}: exists and is not a model folder; choose another name")
    if not overwrite:
        raise ModelFileError(f"{folder}: a model folder already exists there; add --overwrite to replace it")


def build_network(cfg: NetworkConfig, out_channels: int, cond_channels: int) -> torch.nn.Module:
    """The network a preset's ``network.architecture`` names (both share one interface)."""
    if cfg.architecture == "emdiffuse-original":
        return OriginalNetwork(cfg, out_channels, cond_channels)
    return UNet(cfg, out_channels, cond_channels)


def _figure(x: float) -> str:
    """A number as a user reads it: three significant figures, whole numbers from 100 up (no exponent)."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def in_nm(size_um: float) -> str:
    """A pixel size given in µm, as every message and listing writes it ("4 nm", "4000 nm")."""
    return f"{_figure(1000 * size_um)} nm"


#: how far (as a factor either way) an input's pixel size may be from the training data's before
#: prediction warns (:meth:`Model.pixel_warning`): EM acquired "at the same magnification" varies
#: by some tens of percent, a factor of 1.5 is a different scale of structure
PIXEL_TOLERANCE = 1.5


@dataclass
class ModelInfo:
    """Everything in ``model.json`` beside the preset."""

    out_channels: int = 1
    cond_channels: int = 1
    #: how its inputs are normalised: the percentiles that map to -1 and 1 (predict and the
    #: bioimage.io export read them), and ``"uint8": "full range"`` for the original's 8-bit convention
    normalisation: dict[str, Any] = field(default_factory=lambda: {"method": "percentile", "low": PERCENTILES[0], "high": PERCENTILES[1]})
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    card: str = ""


class Model:
    """A network with its preset and metadata; the unit the jobs, CLI and widgets pass around."""

    def __init__(self, preset: Preset, info: ModelInfo, network: torch.nn.Module | None = None, source: str = "") -> None:
        # the preset as given: its variant options are the variant registry's to check
        # (``variants.model_options``) and to write out (``variants.complete``)
        self.preset = preset
        self.info = info
        #: where it was read from (its folder), for the errors about what it declares
        self.source = source
        if network is None:
            declared_network(preset, info, f"preset {preset.name!r}")
        self.network = network or build_network(preset.network, info.out_channels, info.cond_channels)

    @property
    def variant(self) -> str:
        return self.preset.variant

    def summary(self) -> str:
        """What ``model.json`` records of how this model was trained and how it scored, in a few
        lines: what ``emdiffuse models --show`` prints for a model without a card (one a user
        trained), whose figures are otherwise only in the JSON."""
        t, m = self.info.training, self.info.metrics
        lines = [f"{self.variant} model, preset {self.preset.name}"]
        if "steps" in t:
            took = f" in {t['seconds']:.0f} s" if isinstance(t.get("seconds"), (int, float)) else ""
            lines.append(f"trained: {t['steps']} steps{took} on {t.get('device', '?')} ({t.get('stopped', '?')})")
        if t.get("data"):
            lines.append(f"data: {t['data']}")
        if t.get("fine_tuned_from"):
            lines.append(f"fine-tuned from: {t['fine_tuned_from']}")
        pixel = t.get("pixel_size_um")
        lines.append(f"pixel size: {in_nm(pixel)}" if pixel else "pixel size: none recorded (inputs' pixel sizes are not checked)")
        base = m.get("val_baseline_psnr", m.get("val_input_psnr"))
        if m.get("val_psnr") is not None and base is not None:
            lines.append(
                f"validation (step {m.get('val_step', '?')}, {m.get('val_patches', '?')} held-out patches): {m.get('val_estimate', 'estimate')} "
                f"{m['val_psnr']:.2f} dB, {m.get('val_baseline', 'baseline')} {base:.2f} dB ({m['val_psnr'] - base:+.2f} dB)"
            )
        else:
            lines.append("validation: none recorded")
        cal = m.get("calibration")
        if cal and cal.get("check_coverage") is not None:
            lines.append(
                f"error bounds: calibrated for {cal.get('samples', '?')} samples of {cal.get('steps', '?')} {cal.get('sampler', '')} steps; "
                f"the {1 - cal.get('alpha', 0.1):.0%} interval held {cal['check_coverage']:.1%} of held-out check pixels"
            )
        else:
            lines.append("error bounds: not calibrated (no lower/upper bounds are written)")
        return "\n".join(lines)

    def quality_warning(self) -> str | None:
        """A warning when the model scored below its baseline on its validation patches (None otherwise)."""
        m = self.info.metrics
        value = m.get("val_psnr")
        base = m.get("val_baseline_psnr", m.get("val_input_psnr"))  # the key older models wrote
        if value is None or base is None or value >= base:
            return None
        return (
            f"this model is worse than {m.get('val_baseline', 'its baseline')} on its validation patches "
            f"({value:.2f} dB against {base:.2f} dB): train longer"
        )

    def unchecked_pixel(self) -> str | None:
        """What an input without a pixel size costs where the model records the one it learnt from
        (None: nothing): the check of :meth:`pixel_warning` cannot run, and the user should know
        what the model expects. A clause: :meth:`unknown_pixel_note` says it of a file, Enhance of a layer."""
        trained = self.info.training.get("pixel_size_um")
        if not trained:
            return None
        return (
            f"it cannot be compared with the {in_nm(trained)} pixels this model learnt from: if your pixels are more "
            f"than {PIXEL_TOLERANCE:g} times larger or smaller, resample the input or fine-tune the model"
        )

    def unknown_pixel_note(self) -> str | None:
        """What to say when an input file has no pixel size (a TIFF without resolution tags) but
        the model records the one it learnt from (:meth:`unchecked_pixel`)."""
        cost = self.unchecked_pixel()
        return f"the input has no pixel size, so {cost} (set the pixel size in the file to have it checked)" if cost else None

    def pixel_warning(self, pixel_um: float | None) -> str | None:
        """A warning when the input's pixels (µm; None: unknown) differ from those of the inputs
        the model learnt from by more than :data:`PIXEL_TOLERANCE` either way (None otherwise):
        a network learns structures at the size they had in pixels, and its error bounds were
        calibrated at that size. Models that do not record their training pixel size stay silent."""
        trained = self.info.training.get("pixel_size_um")
        if not trained or pixel_um is None:
            return None
        ratio = pixel_um / trained
        if 1 / PIXEL_TOLERANCE <= ratio <= PIXEL_TOLERANCE:
            return None
        size = f"{_figure(ratio)} times larger" if ratio > 1 else f"{_figure(1 / ratio)} times smaller"
        return (
            f"this model learnt from inputs with {in_nm(trained)} pixels, and the input's are "
            f"{in_nm(pixel_um)} ({size}): it meets structures at a size it did not learn, and its error bounds "
            f"may not hold. Resample the input to about {in_nm(trained)} pixels, or fine-tune the model on your "
            "own data (the Train / fine-tune panel, or emdiffuse train --from-model)"
        )

    @property
    def calibration(self) -> dict[str, Any] | None:
        """The conformal calibration of its error map (:mod:`.uncertainty`), if training made one."""
        return self.info.metrics.get("calibration")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "napari-emdiffuse-model",
            "format_version": MODEL_FORMAT,
            "software_version": __version__,
            "variant": self.preset.variant,
            "preset": self.preset.model_dump(mode="json"),
            "out_channels": self.info.out_channels,
            "cond_channels": self.info.cond_channels,
            "normalisation": self.info.normalisation,
            "training": self.info.training,
            "metrics": self.info.metrics,
            "card": self.info.card,
        }

    def save(self, folder: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the folder; ``state`` replaces the network's own weights (e.g. the EMA copy).

        A preset that leaves out an option whose absence a stored model reads as "made before the
        option existed" (:func:`stored_preset`) is refused: written as it is, the model would
        change meaning on loading. ``variants.complete(preset)`` writes every option out."""
        preset = self.preset.model_dump(mode="json")
        if stored_preset(preset) != preset:
            raise ValueError(
                f"a {self.preset.variant} preset without all its variant options ({preset['variant_options']}) would read back "
                "as a model from before they existed: pass it through variants.complete() before saving"
            )
        folder = Path(folder)
        weights = state if state is not None else self.network.state_dict()
        atomic_save_tensors(weights, folder / WEIGHTS, metadata={"format": "napari-emdiffuse"})
        write_bytes(folder / MODEL_JSON, json.dumps(self.to_json(), indent=2).encode())
        return folder

    def save_new(self, folder: str | Path, overwrite: bool = False, state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write a new model folder (with its MODEL_CARD.md) beside ``folder`` and swap it in
        complete; an existing folder is replaced only with ``overwrite``, and only when it is a
        model folder (a user's other folder is never replaced). ``state`` as for :meth:`save`."""
        folder = Path(folder)
        check_model_folder(folder, overwrite)
        staged = StagedStore(folder)
        try:
            self.save(staged.path, state)
            write_bytes(staged.path / "MODEL_CARD.md", self.info.card.encode())
        except BaseException:
            staged.discard()
            raise
        return staged.commit()

    @classmethod
    def load(cls, folder: str | Path) -> "Model":
        folder = Path(folder)
        meta = read_model_json(folder)
        weights = folder / WEIGHTS
        if not weights.is_file():
            raise ModelFileError(f"{folder}: {WEIGHTS} is missing" + (" (there is a pipe or device of that name, not a file)" if weights.exists() else ""))
        preset, info = cls.parse_json(meta, source=str(folder))
        declared = declared_network(preset, info, str(folder))
        header = tensor_header(weights)
        _compare(declared.state_dict(), {k: shape for k, (shape, _) in header.items()}, str(weights))
        ints = sorted(k for k, (_, dtype) in header.items() if dtype not in _FLOAT_DTYPES)
        if ints:
            raise ModelFileError(f"{weights}: weights must be floating point, but {ints[0]} is {header[ints[0]][1]} ({len(ints)} such tensors)")
        model = cls(preset, info, build_network(preset.network, info.out_channels, info.cond_channels), source=str(folder))
        load_state_strict(model.network, load_tensors(weights), str(weights))
        return model

    @classmethod
    def from_json(cls, meta: dict[str, Any], source: str = "model.json") -> "Model":
        return cls(*cls.parse_json(meta, source), source=source)

    @staticmethod
    def parse_json(meta: dict[str, Any], source: str = "model.json") -> tuple[Preset, ModelInfo]:
        """The preset and metadata ``model.json`` declares, checked, without building anything."""
        try:
            preset = parse_preset(stored_preset(meta["preset"]), source=f"{source} (preset)")
            info = ModelInfo(
                out_channels=int(meta["out_channels"]),
                cond_channels=int(meta["cond_channels"]),
                normalisation={**ModelInfo().normalisation, **(meta.get("normalisation") or {})},
                training=dict(meta.get("training") or {}),
                metrics=dict(meta.get("metrics") or {}),
                card=str(meta.get("card", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            if isinstance(err, ConfigError):
                raise ModelFileError(str(err)) from None
            raise ModelFileError(f"{source}: {MODEL_JSON} is incomplete or malformed ({err!r})") from None
        stated = meta.get("variant", preset.variant)  # the copy at the top, which listings read without parsing the preset
        if stated != preset.variant:
            raise ModelFileError(
                f"{source}: {MODEL_JSON} says variant {stated!r} at its top level but {preset.variant!r} in its preset; "
                "one of them was edited: make them agree"
            )
        for key in ("out_channels", "cond_channels"):
            if not 1 <= getattr(info, key) <= MAX_CHANNELS:
                raise ModelFileError(f"{source}: {MODEL_JSON} key {key!r} is {getattr(info, key)}; expected 1 to {MAX_CHANNELS}")
        low, high = info.normalisation["low"], info.normalisation["high"]
        if not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in (low, high)) or not 0 <= low < high <= 100:
            raise ModelFileError(f"{source}: {MODEL_JSON} normalisation percentiles low {low!r}, high {high!r}; expected numbers 0 <= low < high <= 100")
        return preset, info


def stored_preset(data: Any) -> Any:
    """A preset as a model folder or checkpoint stores it, with the values that keys added since
    then had before they existed: a stored model keeps behaving exactly as when it was trained.

    Denoising models written before the ``residual`` option learnt the clean image itself.
    (``variants.complete`` writes every variant option out, so a new model always has the key.)
    """
    if not isinstance(data, dict) or data.get("variant", "denoise") != "denoise":
        return data
    options = data.get("variant_options", {})
    if isinstance(options, dict) and "residual" not in options:
        return {**data, "variant_options": {**options, "residual": False}}
    return data


def read_model_json(folder: Path) -> dict[str, Any]:
    path = folder / MODEL_JSON
    if not folder.is_dir():
        raise ModelFileError(f"{folder}: " + ("a file, not a model folder (a model is a folder with model.json and its weights)" if folder.exists() else "no such model folder"))
    if not path.is_file():
        raise ModelFileError(f"{folder}: not a model folder ({MODEL_JSON} is missing)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{path}: cannot read ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != "napari-emdiffuse-model":
        raise ModelFileError(f"{path}: not a napari-emdiffuse model description")
    if meta.get("format_version") != MODEL_FORMAT:
        raise ModelFileError(f"{path}: model format {meta.get('format_version')} is not supported (expected {MODEL_FORMAT})")
    return meta


def declared_network(preset: Preset, info: ModelInfo, source: str) -> torch.nn.Module:
    """The network built on the meta device (shapes only, no memory), refused when training it
    would not fit this machine: a model.json can declare any size, and is checked before
    anything is allocated."""
    with torch.device("meta"):
        net = build_network(preset.network, info.out_channels, info.cond_channels)
    params = sum(p.numel() for p in net.parameters())
    need = params * 4 * TRAINING_COPIES
    if need > memory_budget():
        raise ModelFileError(
            f"{source}: the network it declares has {params / 1e6:,.0f} million parameters; training it needs "
            f"{need / 2**30:,.1f} GiB, more than this machine's {memory_budget() / 2**30:,.1f} GiB budget (corrupt file, or use a smaller preset)"
        )
    return net


def _compare(own: dict[str, Any], shapes: dict[str, Any], source: str) -> None:
    """Refuse weights with missing, extra or mis-shaped tensors, naming one of each."""
    missing = sorted(set(own) - set(shapes))
    extra = sorted(set(shapes) - set(own))
    bad = [k for k in own if k in shapes and tuple(own[k].shape) != tuple(shapes[k])]
    if missing or extra or bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
        if bad:
            parts.append(f"{len(bad)} with the wrong shape (e.g. {bad[0]})")
        raise ModelFileError(f"{source}: weights do not match the network in model.json: " + ", ".join(parts))


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, failing loudly on any missing, extra or mis-shaped tensor, on integer
    weights and on NaN or infinite values (a diverged or damaged file)."""
    _compare(module.state_dict(), {k: v.shape for k, v in state.items()}, source)
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise ModelFileError(f"{source}: weights must be floating point, but {name} is {tensor.dtype}")
        if not tensor.is_meta and not bool(torch.isfinite(tensor).all()):
            raise ModelFileError(f"{source}: the weights contain NaN or infinite values (e.g. in {name}); the model is damaged or its training diverged")
    module.load_state_dict(state)
