"""The models shipped in the package: they load, carry their model card, and run on a small crop."""

import numpy as np
import pytest

from napari_emdiffuse.config import SampleConfig
from napari_emdiffuse.demo import DEFAULT_MODEL
from napari_emdiffuse.jobs.predict import run_predict
from napari_emdiffuse.models import bundled_models, resolve_model


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
    crop = np.random.default_rng(0).integers(0, 255, (40, 56)).astype(np.uint8)
    res = run_predict(model, crop, sample=SampleConfig(steps=2, samples=2, tile_size=64, overlap=16))
    assert res.mean.shape[-2:] == crop.shape or model.variant != "denoise"
    assert np.isfinite(res.mean).all() and np.isfinite(res.std).all()


def test_demo_writes_its_outputs(tmp_path):
    from napari_emdiffuse.demo import main

    assert main(["--out", str(tmp_path), "--slices", "1", "--samples", "2", "--steps", "2"]) == 0
    for f in ("denoised.tif", "denoised_uncertainty.tif", "demo.png", "metrics.json"):
        assert (tmp_path / f).is_file(), f
