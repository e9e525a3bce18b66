"""Validated configuration: pydantic models that round-trip to JSON presets.

A preset is a complete :class:`Preset`; a user's JSON file may override any subset of keys
(``load_preset(path_or_name, overrides)``). Unknown keys are rejected (``extra="forbid"``) and
every error names the dotted key as a preset file spells it and what is wrong. The variant and its options are checked
by the variant registry (``variants.resolve``), not here: configuration is the ground floor and
imports no variant.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

FORMAT_VERSION = 1
#: bounds of counts a user sets: a typo such as 1e9 iterations is refused, not run for years
MAX_STEPS = 10_000_000
MAX_MINUTES = 60 * 24 * 30
MAX_SEED = 2**32 - 1
SamplerName = Literal["ddpm", "ddim", "dpmpp_2m"]
DeviceName = str  # "auto", "cpu", "cuda", "cuda:N", "mps"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class NetworkConfig(_Strict):
    """Shape of the conditional UNet."""

    base_channels: int = Field(32, ge=4, le=512, description="width of the first level")
    channel_mults: tuple[Annotated[int, Field(ge=1, le=16)], ...] = Field((1, 2, 4, 8), min_length=1, max_length=6)
    num_res_blocks: int = Field(2, ge=1, le=8)
    attention_levels: tuple[int, ...] = Field((), description="levels (0 = full resolution) with self-attention")
    bottleneck_attention: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    architecture: Literal["unet", "emdiffuse-original"] = Field(
        "unet", description="unet: ours; emdiffuse-original: the original EMDiffuse layout (imported weights)"
    )
    slice_index: bool = Field(False, description="emdiffuse-original: the vEMDiffuse network's slice-index embedding")
    head_channels: int = Field(32, ge=1, le=512, description="emdiffuse-original: channels per attention head")

    @model_validator(mode="after")
    def _levels_exist(self) -> "NetworkConfig":
        bad = [lv for lv in self.attention_levels if not 0 <= lv < len(self.channel_mults)]
        if bad:
            raise ValueError(f"attention_levels: {bad} do not exist (the levels are 0 to {len(self.channel_mults) - 1})")
        if self.architecture == "unet" and self.slice_index:
            raise ValueError("slice_index: only the emdiffuse-original architecture has a slice-index embedding")
        if self.architecture == "emdiffuse-original":
            groups = 16 if self.base_channels == 16 else 32
            if any(self.base_channels * m % groups for m in self.channel_mults) or not self.bottleneck_attention:
                raise ValueError(
                    f"architecture: emdiffuse-original needs widths that are multiples of {groups} and bottleneck_attention true"
                )
        return self


class DiffusionConfig(_Strict):
    """Noise schedule and training target (see README, 'Diffusion parameterisation')."""

    timesteps: int = Field(2000, ge=10, le=10000)
    beta_start: float = Field(1e-6, gt=0.0, lt=1.0)
    beta_end: float = Field(0.01, gt=0.0, lt=1.0)
    prediction: Literal["edm", "v", "eps"] = Field(
        "edm",
        description="edm: EDM preconditioning around the variant's baseline (an untrained model returns the baseline); "
        "v: v-prediction (models before edm); eps: the paper's",
    )
    sigma_data: float | None = Field(
        None, gt=0.0, le=10.0, description="spread of the training target (edm); empty: measured when training starts"
    )

    @model_validator(mode="after")
    def _ordered(self) -> "DiffusionConfig":
        if self.beta_end <= self.beta_start:
            raise ValueError(f"beta_end: {self.beta_end:g} must be larger than beta_start ({self.beta_start:g})")
        return self


class TrainConfig(_Strict):
    patch_size: int = Field(128, ge=16, le=1024)
    batch_size: int = Field(8, ge=1, le=512)
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="after the warm-up: constant, or a cosine decay to lr/10 at train.iterations"
    )
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    ema_warmup: int = Field(100, ge=0, le=MAX_STEPS, description="steps over which the EMA decay ramps up linearly from 0 to ema_decay (0: constant)")
    grad_clip: float = Field(1.0, gt=0.0, le=1e6)
    iterations: int = Field(10000, ge=1, le=MAX_STEPS)
    minutes: float | None = Field(None, gt=0.0, le=MAX_MINUTES, description="wall-clock budget of the whole run, the final validation and calibration included")
    val_every: int = Field(500, ge=1, le=MAX_STEPS)
    val_patches: int = Field(8, ge=1, le=256, description="held-out patches scored in validation")
    cal_patches: int = Field(
        64, ge=2, le=1024, description="held-out patches that calibrate the uncertainty at the end of training (half fit the scale, half check it)"
    )
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="share of the data held out, by region")
    val_steps: int = Field(4, ge=1, le=1000, description="sampler steps of the preview sample (validation scores the best estimate)")
    checkpoint_every: int = Field(250, ge=1, le=MAX_STEPS)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    min_foreground_std: float = Field(0.02, ge=0.0, le=2.0, description="reject patches whose target is flatter than this")

    @field_validator("patch_size")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 16:
            raise ValueError(f"{v} is not a multiple of 16")
        return v


class SampleConfig(_Strict):
    sampler: SamplerName = "dpmpp_2m"
    steps: int = Field(10, ge=1, le=2000)
    spacing: Literal["karras", "uniform", "emdiffuse-test"] = Field(
        "karras",
        description="noise levels: karras (fast samplers), uniform in t (DDPM), or emdiffuse-test (the original's "
        "test schedule, linear beta 1e-4 to 0.09 over 1000 steps)",
    )
    samples: int = Field(4, ge=1, le=64, description="K samples per tile: mean is the output, std the uncertainty")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="ancestral noise for ddim (0 = deterministic)")
    tile_size: int = Field(256, ge=32, le=4096)
    overlap: int = Field(32, ge=0, le=1024)
    tile_batch: int = Field(8, ge=1, le=1024, description="tiles x samples evaluated together")
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _overlap_fits(self) -> "SampleConfig":
        if self.overlap * 2 >= self.tile_size:
            raise ValueError(f"overlap: {self.overlap} must be less than half the tile size ({self.tile_size})")
        return self


class Preset(_Strict):
    """Everything needed to train and run one model."""

    format_version: int = FORMAT_VERSION
    name: str = "custom"
    description: str = ""
    variant: str = Field("denoise", description="a name in the variant registry, which checks it and the options")
    variant_options: dict[str, Any] = Field(default_factory=dict)
    network: NetworkConfig = NetworkConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()

    @model_validator(mode="after")
    def _patch_fits_depth(self) -> "Preset":
        multiple = 2 ** (len(self.network.channel_mults) - 1)
        if self.train.patch_size % multiple:
            raise ValueError(
                f"train.patch_size: {self.train.patch_size} does not suit network.channel_mults "
                f"({len(self.network.channel_mults)} levels halve it {len(self.network.channel_mults) - 1} times): "
                f"use a multiple of {multiple}, or fewer levels"
            )
        return self

    def with_overrides(self, overrides: dict[str, Any]) -> "Preset":
        """A copy with nested keys replaced (``{"train": {"iterations": 100}}``)."""
        return parse_preset(_deep_merge(self.model_dump(mode="json"), overrides))

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "variant_options":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _format_errors(err: ValidationError, source: str | None) -> str:
    """The problems as "KEY: what is wrong", KEY spelt as in a preset file (``train.patch_size``),
    after the file's name where there is one. A section's own check (its loc is the section)
    starts its message with the field it blames ("overlap: ..."), which is joined to the section."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `emdiffuse presets --show NAME` lists the keys)"
        if not key:  # a check across sections names its keys itself
            lines.append(msg)
        elif e["type"] == "value_error" and re.match(r"\w+: ", msg):
            lines.append(f"{key}.{msg}")
        else:
            lines.append(f"{key}: {msg}")
    text = "; ".join(lines)
    return f"{source}: {text}" if source else text


def parse_preset(data: dict[str, Any], source: str | None = None) -> Preset:
    """Validate a dict as a :class:`Preset`, raising :class:`ConfigError` with readable messages
    (naming ``source``, the file it came from, where there is one)."""
    named = f"{source}: " if source else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{named}a preset must be a JSON object, not {type(data).__name__}")
    version = data.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ConfigError(f"{named}format_version {version} is not supported (this version reads {FORMAT_VERSION})")
    try:
        return Preset.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def builtin_presets() -> dict[str, Path]:
    """Names and paths of the presets shipped with the package."""
    folder = resources.files("napari_emdiffuse") / "presets"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".json")}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: not a regular file (a folder, pipe or device); give a JSON preset file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read preset ({err.strerror or err})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a JSON text file (it is not UTF-8 text)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None


def load_preset(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Preset:
    """Load a built-in preset by name, or a JSON file.

    A user file may be partial: if it has a ``"base"`` key naming another preset, its keys
    override that one; otherwise they override the defaults.
    """
    presets = builtin_presets()
    key = str(name_or_path)
    if key in presets:
        path = presets[key]
    else:
        path = Path(key)
        if not path.exists():
            raise ConfigError(f"no preset called {key!r} and no such file; built-in presets: {sorted(presets)}")
    data = _read_json(path)
    base_name = data.pop("base", None) if isinstance(data, dict) else None
    if base_name is not None:
        if not isinstance(base_name, str) or base_name not in presets:
            raise ConfigError(f"{path}: base {base_name!r} is not a built-in preset; choose one of {sorted(presets)}")
        data = _deep_merge(_read_json(presets[base_name]), data)
    preset = parse_preset(data, source=str(path))
    return preset.with_overrides(overrides) if overrides else preset
