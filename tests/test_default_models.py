"""The models shipped in the package: they load, carry their model card, and run on a small crop."""

import numpy as np
import pytest

from napari_emdiffuse.config import SampleConfig
from napari_emdiffuse.demo import DEFAULT_MODEL
from napari_emdiffuse.jobs.predict import run_predict
from napari_emdiffuse.models import bundled_models, resolve_model
from napari_emdiffuse.variants import get_variant


def test_the_demo_model_is_bundled():
    assert DEFAULT_MODEL in bundled_models()


@pytest.mark.parametrize("name", sorted(bundled_models()))
def test_bundled_model_loads_documents_itself_and_runs(name):
    model = resolve_model(name)
    folder = bundled_models()[name]
    assert (folder / "MODEL_CARD.md").read_text() == model.info.card
    for section in ("Training data", "Degradation", "Settings", "Measured", "Data terms"):
        assert f"**{section}.**" in model.info.card
    assert model.info.training["steps"] > 0 and "val_psnr" in model.info.metrics
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 5e6  # small enough to ship in the package
    volume = model.variant in ("iso_i", "iso_a")
    crop = np.random.default_rng(0).integers(0, 255, (3, 40, 56) if volume else (40, 56)).astype(np.uint8)
    voxel = (0.02, 0.005, 0.005) if volume else (0.005, 0.005)
    res = run_predict(model, crop, voxel=voxel, sample=SampleConfig(steps=2, samples=2, tile_size=64, overlap=16))
    geometry = get_variant(model.variant).output_geometry(crop.shape, voxel, get_variant(model.variant).options(model.preset.variant_options))
    assert res.mean.shape == geometry.shape and tuple(res.voxel) == tuple(geometry.voxel)
    assert np.isfinite(res.mean).all() and np.isfinite(res.std).all()


def test_every_variant_has_a_default_model():
    variants = {resolve_model(name).variant for name in bundled_models()}
    assert variants == {"denoise", "superres", "iso_i", "iso_a"}


def test_models_command_lists_the_defaults(capsys):
    from napari_emdiffuse.cli import main

    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    for name in ("emdiffuse-n", "emdiffuse-r", "vemdiffuse-i", "vemdiffuse-a"):
        assert name in listed
    line = next(t for t in listed.splitlines() if t.startswith("emdiffuse-r "))
    assert "inputs 10 nm" in line  # the pixel size it learnt from: its inputs are the 5 nm FIB-SEM binned 2x


def test_demo_writes_its_outputs(tmp_path):
    from napari_emdiffuse.demo import main

    assert main(["--out", str(tmp_path), "--slices", "1", "--samples", "2", "--steps", "2"]) == 0
    for f in ("denoised.tif", "denoised_uncertainty.tif", "demo.png", "metrics.json"):
        assert (tmp_path / f).is_file(), f


@pytest.mark.parametrize("name", sorted(bundled_models()))
def test_bundled_models_keep_the_parameterisation_they_were_trained_with(name):
    import json

    stored = json.loads((bundled_models()[name] / "model.json").read_text())["preset"]
    model = resolve_model(name)
    assert model.preset.diffusion.prediction == stored["diffusion"]["prediction"]
    if model.variant == "denoise":
        assert model.preset.variant_options["residual"] == stored["variant_options"].get("residual", False)
