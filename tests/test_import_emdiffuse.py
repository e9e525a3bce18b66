"""Importing the original EMDiffuse weights: exact forward pass, complete mapping, clean refusals,
and an imported model through predict (every sampler, tiled), fine-tuning and the widget.

Reads ``../shared/fixtures/emdiffuse-original`` (made by running the original code; see its
MANIFEST.json) and skips with a message where it is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_emdiffuse.cli import main
from napari_emdiffuse.engine.diffusion import c_noise
from napari_emdiffuse.import_emdiffuse import build_preset, check_variant, infer_unet, is_schedule_buffer
from napari_emdiffuse.model_file import Model, build_network, load_state_strict
from napari_emdiffuse.variants import get_variant
from napari_emdiffuse.variants.base import Split

FIXTURES = (Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "emdiffuse-original").resolve()
CASES = {"emdiffuse_n_small": "denoise", "vemdiffuse_i_small": "iso_i"}
PAPER = {"emdiffuse_n_paper": ("denoise", 15_677_345), "vemdiffuse_i_paper": ("iso_i", 16_615_873)}


@pytest.fixture(scope="module")
def fixtures() -> Path:
    if not (FIXTURES / "MANIFEST.json").is_file():
        pytest.skip(f"original EMDiffuse fixtures not found at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="module")
def imported(fixtures, tmp_path_factory) -> dict[str, Path]:
    """Both small fixture networks imported through the command line."""
    root = tmp_path_factory.mktemp("imported")
    out = {}
    for name, variant in CASES.items():
        assert main(["import-emdiffuse", str(fixtures / f"{name}.pth"), "--variant", variant, "--out", str(root / name)]) == 0
        out[name] = root / name
    return out


def _c_noise_of(gamma: np.ndarray) -> torch.Tensor:
    g = torch.from_numpy(gamma).double()
    return c_noise(((1 - g) / g).sqrt()).float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_forward_matches_the_original(fixtures, imported):
    """Through our network interface (x_noisy, cond, c_noise), fp32 on the CPU."""
    io = np.load(fixtures / "emdiffuse_n_small_io.npz")
    net = Model.load(imported["emdiffuse_n_small"]).network.eval()
    with torch.no_grad():
        eps = net(torch.from_numpy(io["y_t"]), torch.from_numpy(io["cond"]), _c_noise_of(io["gammas"]))
    assert _rel(eps, torch.from_numpy(io["eps"])) <= 1e-5


def test_vem_forward_matches_the_original_slice_by_slice(fixtures, imported):
    """Each output channel is one slice of the gap, generated with its own slice index."""
    io = np.load(fixtures / "vemdiffuse_i_small_io.npz")
    model = Model.load(imported["vemdiffuse_i_small"])
    net, k1 = model.network.eval(), model.info.out_channels
    assert k1 == 5 and model.info.cond_channels == 2  # the published factor 6
    y, index = torch.from_numpy(io["y_t"]), io["channel_index"].astype(int)
    x = torch.randn(y.shape[0], k1, *y.shape[-2:])
    for i, c in enumerate(index):
        x[i, c] = y[i, 0]
    with torch.no_grad():
        eps = net(x, torch.from_numpy(io["cond"]), _c_noise_of(io["gammas"]))
    got = torch.stack([eps[i, c] for i, c in enumerate(index)])[:, None]
    assert _rel(got, torch.from_numpy(io["eps"])) <= 1e-5


@pytest.mark.parametrize("name", sorted(PAPER))
def test_published_layouts_map_completely(fixtures, name):
    """From the key lists alone, on the meta device (nothing allocated)."""
    variant, count = PAPER[name]
    keys = json.loads((fixtures / f"{name}_keys.json").read_text())
    state = {k: torch.empty(v, device="meta") for k, v in keys.items() if not is_schedule_buffer(k)}
    assert len(state) == len(keys) - 6  # gammas, sqrt_recip*, posterior_* are the schedule
    unet = infer_unet(state, name)
    check_variant(variant, unet, name)
    preset = build_preset(variant, unet, {}, None)
    v = get_variant(variant)
    with torch.device("meta"):
        net = build_network(preset.network, *v.channels(v.options(preset.variant_options)))
    load_state_strict(net, state, name)  # every key used, none missing, shapes equal
    assert sum(p.numel() for p in net.parameters()) == sum(t.numel() for t in state.values()) == count
    assert preset.network.attention_levels == ()  # attn_res 16: the middle block only


#: our paper-size presets and the published network each claims to be
PAPER_PRESETS = {"emdiffuse_n_paper": ("emdiffuse-n", "emdiffuse-n-paper", "emdiffuse-r"), "vemdiffuse_i_paper": ("vemdiffuse-i", "vemdiffuse-a")}


@pytest.mark.parametrize("name", sorted(PAPER_PRESETS))
def test_paper_presets_have_the_published_layout(fixtures, name):
    """The presets that say "as published" build the published network's levels, widths and
    attention (the middle block only: the original's attn_res 16 is never reached at 256 px)."""
    from napari_emdiffuse.config import load_preset

    keys = json.loads((fixtures / f"{name}_keys.json").read_text())
    state = {k: torch.empty(v, device="meta") for k, v in keys.items() if not is_schedule_buffer(k)}
    published = build_preset(PAPER[name][0], infer_unet(state, name), {}, None).network
    fields = ("base_channels", "channel_mults", "num_res_blocks", "attention_levels", "bottleneck_attention")
    for preset in PAPER_PRESETS[name]:
        ours = load_preset(preset).network
        assert {f: getattr(ours, f) for f in fields} == {f: getattr(published, f) for f in fields}, preset


def test_module_prefix_and_config_with_comments(fixtures, imported, tmp_path):
    """A DistributedDataParallel save (``module.`` keys) with the original's commented config."""
    state = torch.load(fixtures / "emdiffuse_n_small.pth", weights_only=True)
    ddp = tmp_path / "200_Network_ema.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, ddp)
    manifest = json.loads((fixtures / "MANIFEST.json").read_text())["cases"]["emdiffuse_n_small"]
    config = tmp_path / "EMDiffuse-n.json"
    body = json.dumps({"model": {"which_networks": [{"args": {"unet": manifest["unet"], "beta_schedule": manifest["beta_schedule"]}}]}}, indent=1)
    config.write_text('{ // experiment\n' + body[1:].replace('"unet": {', '"unet": { // the network', 1))
    out = tmp_path / "model"
    assert main(["import-emdiffuse", str(ddp), "--variant", "denoise", "--out", str(out), "--config", str(config)]) == 0
    a, b = Model.load(out), Model.load(imported["emdiffuse_n_small"])
    assert a.preset.network.dropout == 0.2 and a.preset.diffusion.prediction == "eps"
    assert all(torch.equal(a.network.state_dict()[k], v) for k, v in b.network.state_dict().items())


def _bad_files(fixtures: Path, tmp: Path) -> dict[str, tuple[Path, str, str]]:
    """name -> (file, variant, words the message must contain)."""
    raw = (fixtures / "emdiffuse_n_small.pth").read_bytes()
    state = torch.load(fixtures / "emdiffuse_n_small.pth", weights_only=True)
    files = {}
    (tmp / "corrupt.pth").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    files["corrupt"] = (tmp / "corrupt.pth", "denoise", "weights_only")
    (tmp / "truncated.pth").write_bytes(raw[: len(raw) // 2])
    files["truncated"] = (tmp / "truncated.pth", "denoise", "weights_only")
    torch.save({"epoch": 3, "denoise_fn.out.2.bias": torch.zeros(1)}, tmp / "state.pth")
    files["non-tensor"] = (tmp / "state.pth", "denoise", "not a tensor")
    torch.save([torch.zeros(1)], tmp / "list.pth")
    files["not a dict"] = (tmp / "list.pth", "denoise", "not a state dict")
    files["wrong variant"] = (fixtures / "emdiffuse_n_small.pth", "iso_i", "--variant denoise or superres")
    files["wrong variant (vEM)"] = (fixtures / "vemdiffuse_i_small.pth", "superres", "--variant iso_i or iso_a")
    bad = dict(state)
    bad["denoise_fn.middle_block.1.qkv.weight"] = torch.zeros(384, 128, 3)
    torch.save(bad, tmp / "shape.pth")
    files["shape mismatch"] = (tmp / "shape.pth", "denoise", "wrong shape (e.g. denoise_fn.middle_block.1.qkv.weight)")
    return files


def test_bad_files_give_one_line_and_write_nothing(fixtures, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for name, (path, variant, words) in _bad_files(fixtures, src).items():
        out = tmp_path / "out" / name.replace(" ", "_")
        assert main(["import-emdiffuse", str(path), "--variant", variant, "--out", str(out)]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, (name, err)
        assert not out.exists(), name
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_refuses_a_non_empty_out(fixtures, imported, capsys):
    before = sorted(p.name for p in imported["emdiffuse_n_small"].iterdir())
    path = fixtures / "emdiffuse_n_small.pth"
    assert main(["import-emdiffuse", str(path), "--variant", "denoise", "--out", str(imported["emdiffuse_n_small"])]) == 2
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in imported["emdiffuse_n_small"].iterdir()) == before


def test_model_records_what_the_original_assumed(imported):
    meta = json.loads((imported["vemdiffuse_i_small"] / "model.json").read_text())
    p = meta["preset"]
    assert p["network"]["architecture"] == "emdiffuse-original" and p["network"]["slice_index"]
    assert p["diffusion"] == {**p["diffusion"], "prediction": "eps", "timesteps": 2000, "beta_start": 1e-6, "beta_end": 0.01}
    assert p["variant_options"] == {"factor": 6, "emdiffuse_original": True}
    assert meta["training"]["channel_order"].startswith("condition first")
    card = (imported["vemdiffuse_i_small"] / "MODEL_CARD.md").read_text()
    assert "10686160" in card and "MIT" in card and "s41467-024-49125-z" in card


@pytest.fixture(scope="module")
def em_plane(tmp_path_factory, isbi_path) -> Path:
    """A non-square 8-bit crop of real EM, larger than a 64 px tile."""
    path = tmp_path_factory.mktemp("em") / "plane.tif"
    tifffile.imwrite(path, tifffile.imread(isbi_path)[0, 100:196, 60:220])
    return path


@pytest.mark.parametrize("sampler,extra", [("dpmpp_2m", []), ("ddim", []), ("ddpm", ["--spacing", "emdiffuse-test"])])
def test_imported_model_predicts_with_every_sampler_tiled(imported, em_plane, tmp_path, sampler, extra):
    from napari_emdiffuse.engine.grid import tile_starts

    out = tmp_path / "out.tif"
    args = ["predict", "--model", str(imported["emdiffuse_n_small"]), "--input", str(em_plane), "--output", str(out)]
    args += ["--sampler", sampler, "--steps", "3", "--samples", "2", "--tile-size", "64", "--overlap", "24", "-q", *extra]
    assert main(args) == 0
    mean, std = tifffile.imread(out), tifffile.imread(tmp_path / "out_uncertainty.tif")
    assert mean.shape == std.shape == (96, 160) and np.isfinite(mean).all() and (std >= 0).all() and std.max() > 0
    for axis, length in ((1, 160), (0, 96)):  # no seam: border jumps like any neighbouring pixels'
        starts = tile_starts(length, 64, 24)
        borders = [s - 1 for s in starts[1:]] + [s + 63 for s in starts[:-1]]
        jumps = np.abs(np.diff(mean, axis=axis)).mean(1 - axis)
        assert jumps[borders].mean() < 1.3 * jumps.mean()


def test_vem_imported_model_fills_each_gap(imported, tmp_path):
    vol = (np.random.default_rng(1).random((3, 40, 48)) * 255).astype(np.uint8)
    src, out = tmp_path / "vol.tif", tmp_path / "iso.tif"
    tifffile.imwrite(src, vol)
    args = ["predict", "--model", str(imported["vemdiffuse_i_small"]), "--input", str(src), "--output", str(out)]
    assert main(args + ["--steps", "2", "--samples", "1", "--tile-size", "32", "--overlap", "8", "-q"]) == 0
    iso = tifffile.imread(out)
    assert iso.shape == (13, 40, 48)  # factor 6: (3 - 1) * 6 + 1 slices
    np.testing.assert_array_equal(iso[[0, 6, 12]], vol.astype(np.float32))  # input slices kept
    assert np.isfinite(iso).all() and iso[1:6].std() > 0


@pytest.mark.slow
def test_fine_tune_imported_model_then_predict(imported, em_plane, tmp_path):
    clean = tifffile.imread(em_plane)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "noisy.tif", np.stack([noisy, noisy[::-1]]))
    tifffile.imwrite(tmp_path / "clean.tif", np.stack([clean, clean[::-1]]))
    run = tmp_path / "tuned"
    args = ["train", "--from-model", str(imported["emdiffuse_n_small"]), "--input", str(tmp_path / "noisy.tif")]
    assert main(args + ["--target", str(tmp_path / "clean.tif"), "--out", str(run), "--iterations", "2", "--batch-size", "1", "-q"]) == 0
    tuned = Model.load(run)
    assert tuned.preset.network.architecture == "emdiffuse-original" and tuned.preset.diffusion.prediction == "eps"
    before = Model.load(imported["emdiffuse_n_small"]).network.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in tuned.network.state_dict().items())
    out = tmp_path / "out.tif"
    assert main(["predict", "--model", str(run), "--input", str(em_plane), "--output", str(out), "--steps", "2", "--samples", "1", "-q"]) == 0
    assert tifffile.imread(out).shape == (96, 160)


def test_8bit_input_is_mapped_as_the_original(imported):
    from napari_emdiffuse.data.normalise import Normaliser
    from napari_emdiffuse.jobs.predict import normaliser_for

    model = Model.load(imported["emdiffuse_n_small"])
    ramp = np.arange(40 * 40).reshape(40, 40)
    assert normaliser_for(model, (ramp % 100 + 50).astype(np.uint8)) == Normaliser(0.0, 255.0)
    assert normaliser_for(model, (ramp * 30).astype(np.uint16)).high < 50000  # percentiles for 16-bit


# ---- how the variants drive an original network (no fixtures needed) -----------------------------


def test_superres_original_mode_is_bilinear_and_not_residual():
    from napari_emdiffuse.variants.superres import upsample_bilinear

    v = get_variant("superres")
    opts = v.options({"factor": 2, "emdiffuse_original": True})
    rng = np.random.default_rng(0)
    high = rng.random((2, 64, 64)).astype(np.float32)
    low = high.reshape(2, 32, 2, 32, 2).mean(axis=(2, 4))
    pairs = v.training_pairs({"input": low, "target": high}, opts, Split("train", 0.25, 32))
    assert pairs.baseline(np.zeros((1, 1, 32, 32), np.float32)) is None  # not a residual target
    cond, target = pairs.sample(np.random.default_rng(1), 2, 32)
    assert cond.shape == target.shape == (2, 1, 32, 32)
    ramp = np.add.outer(4 * np.arange(4.0), np.arange(4.0)).astype(np.float32)  # 4 y + x: bilinear is exact inside
    at = (np.arange(8) + 0.5) / 2 - 0.5  # pixel centres aligned
    np.testing.assert_allclose(upsample_bilinear(ramp, 2)[1:7, 1:7], np.add.outer(4 * at, at)[1:7, 1:7], atol=1e-5)


def test_vem_original_mode_pairs_and_options():
    from napari_emdiffuse.config import ConfigError

    vol = np.random.default_rng(0).random((20, 48, 48)).astype(np.float32)
    for name in ("iso_i", "iso_a"):
        v = get_variant(name)
        opts = v.options({"factor": 6, "emdiffuse_original": True})
        assert v.channels(opts) == (5, 2)
        assert [p for b in v.blocks((3, 40, 48), opts) for p in b.planes] == [(40, 48)] * 2
        pairs = v.training_pairs({"volume": vol}, opts, Split("train", 0.2, 16))
        cond, target = pairs.sample(np.random.default_rng(1), 3, 16)
        assert cond.shape == (3, 2, 16, 16) and target.shape == (3, 5, 16, 16)
    with pytest.raises(ConfigError, match="whole number"):
        get_variant("iso_a").options({"factor": 6.5, "emdiffuse_original": True})


def test_original_gap_condition_puts_the_later_slice_first():
    from napari_emdiffuse.variants.volume import original_condition

    vol = np.arange(7)[:, None, None] * np.ones((7, 2, 2))
    np.testing.assert_array_equal(original_condition(vol, 1, 5, slice(None))[:, 0, 0], [6, 1])
