"""``emdiffuse import-emdiffuse``: the published EMDiffuse weights as one of our model folders.

The original code saves its networks' state dicts as ``.pth`` files (``*_Network.pth`` and the
EMA copy ``*_Network_ema.pth``): the UNet's tensors under ``denoise_fn.``, possibly with a
``module.`` prefix (DistributedDataParallel), and the noise-schedule buffers (``gammas``,
``sqrt_*``, ``posterior_*``) beside them. We read them with ``torch.load(weights_only=True)``
only, infer the network's size from the tensor shapes (or take it from the original config
JSON), load every tensor strictly into :class:`~.engine.network_original.OriginalNetwork`, and
write a model folder that records what the original assumed: eps prediction conditioned on
gamma, its training schedule, the condition first in the channel order, its intensity
convention, and how each variant drives the network (``emdiffuse_original`` variant option).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from .config import Preset, parse_preset
from .data.formats import special_file
from .errors import ConfigError, ModelFileError
from .model_file import Model, ModelInfo, load_state_strict

VARIANTS = ("denoise", "superres", "iso_i", "iso_a")
#: the original's z_times (slices from one input slice to the next) in the published configs
PUBLISHED_FACTOR = {"iso_i": 6, "iso_a": 10}
TITLES = {
    "denoise": "EMDiffuse-n",
    "superres": "EMDiffuse-r",
    "iso_i": "vEMDiffuse-i",
    "iso_a": "vEMDiffuse-a",
}
TRAINED_ON = {
    "denoise": "mouse brain cortex TEM, noisy/clean pairs acquired at several exposure times (Lu et al. 2024)",
    "superres": "mouse brain cortex TEM, low/high-resolution pairs at 2x the pixel size (Lu et al. 2024)",
    "iso_i": "the OpenOrganelle mouse liver FIB-SEM volume (8 nm isotropic), every 6th slice as input",
    "iso_a": "the MICrONS multi-area volume, lateral axis standing in for z, factor 10 (Lu et al. 2024)",
}
PREFIX = "denoise_fn."


def _fail(path: Path | str, why: str) -> ModelFileError:
    return ModelFileError(f"{path}: {why}")


def is_schedule_buffer(key: str) -> bool:
    """The original's noise-schedule buffers, saved beside the network's weights."""
    return "." not in key and (key in ("gammas", "betas", "alphas", "alphas_cumprod") or key.startswith(("sqrt_", "posterior_")))


def read_state(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The network tensors of an original ``.pth`` (keys under ``denoise_fn.``) and the names
    of the schedule buffers dropped. Anything but a plain dict of tensors is refused."""
    path = Path(path)
    special = special_file(path)
    if special:
        raise _fail(path, f"{special}, not a regular file; give the *_Network.pth file itself")
    if not path.is_file():
        raise _fail(path, "a folder, not the *_Network.pth file" if path.is_dir() else "no such file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt, truncated or pickled objects all end here
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise _fail(path, f"not a plain PyTorch state dict that loads with weights_only=True ({first})") from None
    if not isinstance(raw, dict) or not raw:
        raise _fail(path, f"holds a {type(raw).__name__}, not a state dict of tensors (give the *_Network.pth file)")
    bad = next((k for k, v in raw.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise _fail(path, f"entry {bad!r} is a {type(raw[bad]).__name__}, not a tensor (give the *_Network.pth file, not the .state)")
    state: dict[str, torch.Tensor] = {}
    dropped = []
    for key, value in raw.items():
        key = key.removeprefix("module.")
        if is_schedule_buffer(key):
            dropped.append(key)
            continue
        if not key.startswith(PREFIX):  # the UNet saved on its own
            key = PREFIX + key
        state[key] = value.float()
    if not state:
        raise _fail(path, "holds only noise-schedule buffers, no network weights")
    return state, dropped


def read_original_config(path: str | Path) -> dict[str, Any]:
    """An original config JSON, whose lines may carry ``//`` comments as its parser allows."""
    path = Path(path)
    special = special_file(path)
    if special:
        raise ConfigError(f"{path}: {special}, not a regular file; give the config JSON file itself")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err})") from None
    stripped = "\n".join(line.split("//")[0] for line in text.splitlines())
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON after removing // comments (line {err.lineno}: {err.msg})") from None
    try:
        net = data["model"]["which_networks"][0]["args"]
        unet = dict(net["unet"])
    except (KeyError, IndexError, TypeError):
        raise ConfigError(f"{path}: no model.which_networks[0].args.unet: not an EMDiffuse config") from None
    out: dict[str, Any] = {"unet": unet, "beta_schedule": net.get("beta_schedule", {})}
    try:
        out["z_times"] = int(data["datasets"]["train"]["which_dataset"]["args"]["z_times"])
    except (KeyError, TypeError, ValueError):
        pass
    return out


def _ints(state: dict[str, torch.Tensor], pattern: str) -> set[int]:
    rx = re.compile(pattern)
    return {int(m.group(1)) for k in state if (m := rx.match(k))}


def infer_unet(state: dict[str, torch.Tensor], source: str = "weights") -> dict[str, Any]:
    """The original ``unet`` settings that the tensor shapes imply (head width cannot be seen:
    the published 32 is assumed)."""
    try:
        stem = state[PREFIX + "input_blocks.0.0.weight"]
        head = state[PREFIX + "out.2.weight"]
    except KeyError as err:
        raise _fail(source, f"no {err.args[0]}: not an EMDiffuse / guided-diffusion UNet") from None
    width = int(stem.shape[0])
    n_out = len(_ints(state, re.escape(PREFIX) + r"output_blocks\.(\d+)\."))
    # an upsampling residual block follows the first one (and any attention) in its output block
    ups = {i for i in _ints(state, re.escape(PREFIX) + r"output_blocks\.(\d+)\.[12]\.in_layers\.")}
    levels = len(ups) + 1
    if n_out % levels:
        raise _fail(source, f"{n_out} output blocks do not split into {levels} levels: an unknown layout")
    res_blocks = n_out // levels - 1
    mults = []
    for level in range(levels):
        first = (levels - 1 - level) * (res_blocks + 1)
        w = state.get(PREFIX + f"output_blocks.{first}.0.in_layers.2.weight")
        if w is None or w.shape[0] % width:
            raise _fail(source, f"output block {first} is missing or has an odd width: an unknown layout")
        mults.append(int(w.shape[0]) // width)
    attn_blocks = _ints(state, re.escape(PREFIX) + r"input_blocks\.(\d+)\.1\.qkv\.weight")
    per_level = res_blocks + 1  # residual blocks and the downsampling one
    attn_levels = sorted({(i - 1) // per_level for i in attn_blocks})
    return {
        "in_channel": int(stem.shape[1]),
        "out_channel": int(head.shape[0]),
        "inner_channel": width,
        "channel_mults": mults,
        "res_blocks": res_blocks,
        "attn_res": [2**lv for lv in attn_levels],
        "num_head_channels": 32,
        "dropout": 0.2,
        "slice_index": PREFIX + "channel_embed.0.weight" in state,
    }


def network_config(unet: dict[str, Any]) -> dict[str, Any]:
    """Our ``network`` preset section for an original ``unet`` config.

    The original puts attention at every level whose downsampling rate is in ``attn_res``
    (level ``l`` has rate ``2**l``), and always in the middle block.
    """
    mults = [int(m) for m in unet["channel_mults"]]
    attn = {int(r) for r in unet.get("attn_res", [])}
    heads = int(unet.get("num_head_channels", 32))
    if heads <= 0:
        raise ConfigError("num_head_channels -1 (a fixed number of heads) is not supported; the published configs use 32")
    return {
        "architecture": "emdiffuse-original",
        "base_channels": int(unet["inner_channel"]),
        "channel_mults": mults,
        "num_res_blocks": int(unet["res_blocks"]),
        "attention_levels": [lv for lv in range(len(mults)) if 2**lv in attn],
        "bottleneck_attention": True,
        "dropout": float(unet.get("dropout", 0.0)),
        "slice_index": bool(unet["slice_index"]),
        "head_channels": heads,
    }


def diffusion_config(beta_schedule: dict[str, Any]) -> dict[str, Any]:
    """The original's training schedule as ours (eps prediction; linear beta only)."""
    train = beta_schedule.get("train") or {"schedule": "linear", "n_timestep": 2000, "linear_start": 1e-6, "linear_end": 0.01}
    if train.get("schedule", "linear") != "linear":
        raise ConfigError(f"beta schedule {train.get('schedule')!r} is not supported; the published models use 'linear'")
    return {
        "timesteps": int(train.get("n_timestep", 2000)),
        "beta_start": float(train.get("linear_start", 1e-6)),
        "beta_end": float(train.get("linear_end", 0.01)),
        "prediction": "eps",
    }


def build_preset(variant: str, unet: dict[str, Any], beta_schedule: dict[str, Any], factor: int | None) -> Preset:
    options: dict[str, Any] = {"residual": False} if variant == "denoise" else {}  # the original generates the clean image
    if variant == "superres":
        options = {"factor": 2, "emdiffuse_original": True}
    elif variant in PUBLISHED_FACTOR:
        options = {"factor": factor or PUBLISHED_FACTOR[variant], "emdiffuse_original": True}
    return parse_preset(
        {
            "name": f"imported-{TITLES[variant].lower()}",
            "description": f"{TITLES[variant]} with the original EMDiffuse weights (imported).",
            "variant": variant,
            "variant_options": options,
            "network": network_config(unet),
            "diffusion": diffusion_config(beta_schedule),
            # the original's fine-tuning settings: lr 5e-5, 256 px patches, dropout 0.2
            "train": {"patch_size": 256, "batch_size": 4, "lr": 5e-5, "iterations": 2000, "val_every": 250, "ema_decay": 0.999},
            # 256 px tiles: the middle block's attention then sees what it saw in training
            "sample": {"sampler": "dpmpp_2m", "steps": 10, "samples": 4, "tile_size": 256, "overlap": 32, "tile_batch": 4},
        },
        source="imported model",
    )


def check_variant(variant: str, unet: dict[str, Any], source: str) -> None:
    """Refuse a file that cannot be the network of ``variant`` (wrong --variant)."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    vem = variant in PUBLISHED_FACTOR
    if unet["slice_index"] != vem:
        kind = "a vEMDiffuse network (it embeds a slice index)" if unet["slice_index"] else "an EMDiffuse-n/-r network (no slice index)"
        fits = "iso_i or iso_a" if unet["slice_index"] else "denoise or superres"
        raise _fail(source, f"is {kind}, not {TITLES[variant]}; use --variant {fits}")
    want_in = 3 if vem else 2
    if unet["in_channel"] != want_in or unet["out_channel"] != 1:
        raise _fail(
            source,
            f"takes {unet['in_channel']} input and gives {unet['out_channel']} output channels; "
            f"{TITLES[variant]} takes {want_in} and gives 1",
        )


def model_card(variant: str, source: Path, dropped: list[str], factor: int | None) -> str:
    title = TITLES[variant]
    record = "10686160" if variant in PUBLISHED_FACTOR else "10686030"
    use = {
        "denoise": "Denoises 2D TEM/SEM images and stacks slice by slice, with an uncertainty map.",
        "superres": "Super-resolution at factor 2: the low-resolution image is upsampled bilinearly to the output grid "
        "and given to the network, as the original does; pixel size halved.",
        "iso_i": f"Generates the {(factor or 6) - 1} slices between each pair of input slices (z voxel divided by "
        f"{factor or 6}), each from its two bounding slices and its slice index, as the original does.",
        "iso_a": f"Generates the {(factor or 10) - 1} slices between each pair of input slices (z voxel divided by "
        f"{factor or 10}), each from its two bounding slices and its slice index, as the original does.",
    }[variant]
    return "\n".join(
        [
            f"# imported {title}: the original EMDiffuse weights",
            "",
            f"**What it does.** {use}",
            "",
            f"**Weights.** Imported from `{source.name}` with `emdiffuse import-emdiffuse`; published by the EMDiffuse "
            f"authors (Zenodo record {record}, https://zenodo.org/records/{record}; the original repository "
            "https://github.com/Luchixiang/EMDiffuse links them). Tensors mapped 1:1 into the original layout "
            f"(`network.architecture: emdiffuse-original`){'; noise-schedule buffers dropped: ' + ', '.join(dropped) if dropped else ''}.",
            "",
            f"**Trained on.** {TRAINED_ON[variant]}, by the authors, on GPUs, with their training schedule "
            "(linear beta 1e-6 to 0.01, 2000 steps, eps prediction conditioned on gamma = alpha-bar).",
            "",
            "**Intensities.** The original maps 8-bit images linearly to [-1, 1] (0 to -1, 255 to 1); so do we for "
            "8-bit input. Other data (16-bit, float) is mapped by its 0.1 and 99.9 percentiles to -1 and 1, which is "
            "what exporting it to 8-bit with that contrast stretch would give the original; export such data "
            "yourself if you know a better 8-bit mapping.",
            "",
            "**Sampling.** Our samplers run the imported eps-model (DPM-Solver++ in 10 steps by default); "
            "`--sampler ddpm --steps 1000` with the preset's `sample.spacing: emdiffuse-test` reproduces the original's "
            "test schedule (linear beta 1e-4 to 0.09, 1000 steps). See docs/published-models.md.",
            "",
            "**Licence and citation.** The EMDiffuse code is MIT-licensed (Copyright (c) 2024 Luchixiang); check the "
            "Zenodo record for the weights' terms. Cite: C. Lu, K. Chen, H. Qiu, X. Chen, G. Chen, X. Qi, H. Jiang. "
            "Diffusion-based deep learning method for augmenting ultrastructural imaging and volume electron "
            "microscopy. Nature Communications 15, 4677 (2024), doi:10.1038/s41467-024-49125-z.",
            "",
            "**Limits.** Trained on the authors' tissue and microscopes: fine-tune on a region of your own data "
            "(`emdiffuse train --from-model DIR ...`) and read the uncertainty map.",
        ]
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_emdiffuse(
    weights: str | Path, variant: str, out: str | Path, config: str | Path | None = None
) -> tuple[Model, list[str]]:
    """Import an original ``.pth`` as a model folder ``out``; returns the model and the names of
    the schedule buffers dropped. On any error nothing is written."""
    weights, out = Path(weights), Path(out)
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelFileError(f"{out}: already exists and is not an empty folder; choose another --out")
    state, dropped = read_state(weights)
    original = read_original_config(config) if config is not None else {}
    inferred = infer_unet(state, str(weights))
    unet = {**inferred, **original.get("unet", {}), "slice_index": inferred["slice_index"]}
    check_variant(variant, unet, str(weights))
    factor = original.get("z_times") if variant in PUBLISHED_FACTOR else None
    preset = build_preset(variant, unet, original.get("beta_schedule", {}), factor)
    from .variants import complete, resolve

    preset = complete(preset)
    v, options = resolve(preset)
    out_c, cond_c = v.channels(options)
    card = model_card(variant, weights, dropped, factor)
    info = ModelInfo(
        out_channels=out_c,
        cond_channels=cond_c,
        normalisation={**ModelInfo().normalisation, "uint8": "full range"},
        training={
            "source": "original EMDiffuse weights",
            "file": weights.name,
            "sha256": _sha256(weights),
            "original_unet": {k: unet[k] for k in sorted(unet)},
            "noise_input": "gamma = alpha-bar = 1 / (1 + sigma^2)",
            "prediction": "eps",
            "channel_order": "condition first, then the noisy image",
            "intensity": "original: 8-bit mapped linearly to [-1, 1]; here the same for 8-bit input, "
            "0.1/99.9 percentiles to -1/1 for other data types",
            "schedule_buffers_dropped": dropped,
        },
        card=card,
    )
    model = Model(preset, info)
    load_state_strict(model.network, state, str(weights))  # names every missing, extra or mis-shaped tensor
    model.save_new(out)  # staged beside and swapped in; checked empty above
    return model, dropped


def cmd_import(args: Any) -> int:
    model, dropped = import_emdiffuse(args.file, args.variant, args.out, args.config)
    n = sum(p.numel() for p in model.network.parameters())
    if dropped:
        print(f"dropped the original's noise-schedule buffers ({', '.join(dropped)}): our samplers compute their own")
    print(f"imported {TITLES[args.variant]} ({n / 1e6:.2f} M parameters, every tensor used) into {args.out}")
    return 0


def add_parser(subparsers: Any) -> None:
    """Register ``import-emdiffuse`` on the ``emdiffuse`` command's sub-parsers."""
    p = subparsers.add_parser(
        "import-emdiffuse", help="import the published EMDiffuse weights (*_Network.pth) as a model folder"
    )
    p.add_argument("file", help="the original's *_Network.pth or *_Network_ema.pth")
    p.add_argument("--variant", required=True, choices=VARIANTS, help="which network the file holds")
    p.add_argument("--out", required=True, help="the model folder to write (must not exist, or be empty)")
    p.add_argument("--config", help="the original config JSON the model was trained with (// comments allowed)")
    p.set_defaults(func=cmd_import)
