"""The EDM parameterisation around each variant's baseline: a model that has learnt nothing
(its network's last layer is zero, as at initialisation) returns the baseline, not noise."""

import numpy as np
import pytest

from napari_emdiffuse.config import load_preset
from napari_emdiffuse.jobs.predict import run_predict
from napari_emdiffuse.model_file import Model, ModelInfo
from napari_emdiffuse.variants import get_variant
from napari_emdiffuse.variants.superres import upsample


def _untrained(preset: str) -> Model:
    p = load_preset(preset, {"diffusion": {"sigma_data": 0.3}, "sample": {"samples": 2, "steps": 2}})
    assert p.diffusion.prediction == "edm"
    variant = get_variant(p.variant)
    out_c, cond_c = variant.channels(variant.options(p.variant_options))
    return Model(p, ModelInfo(out_channels=out_c, cond_channels=cond_c))


def _linear_z(volume: np.ndarray, k: int) -> np.ndarray:
    v = volume.astype(np.float64)
    z = np.arange((len(v) - 1) * k + 1) / k
    i0 = np.minimum(np.floor(z).astype(int), len(v) - 2)
    t = (z - i0)[:, None, None]
    return v[i0] * (1 - t) + v[i0 + 1] * t


@pytest.mark.parametrize(
    "preset, make_input, baseline",
    [
        ("tiny", lambda clean, noisy: noisy[0, :40, :48], lambda x: x),
        ("emdiffuse-r-tiny", lambda clean, noisy: clean[0, :24, :40], lambda x: upsample(x, 2)),
        ("vemdiffuse-i-tiny", lambda clean, noisy: clean[:, :32, :32], lambda x: _linear_z(x, 4)),
        ("vemdiffuse-a-tiny", lambda clean, noisy: clean[:, :32, :32], lambda x: _linear_z(x, 4)),
    ],
)
def test_an_untrained_model_returns_its_baseline(preset, make_input, baseline, isbi_pair):
    noisy, clean = isbi_pair
    image = make_input(clean, noisy).astype(np.float32)
    model = _untrained(preset)
    res = run_predict(model, image, device="cpu")
    want = baseline(image)
    assert res.mean.shape == want.shape
    np.testing.assert_allclose(res.mean, want, atol=1e-4 * float(np.ptp(image)))
    # samples of a model that knows nothing spread around the baseline by about sigma_data
    assert float(np.mean(res.std)) > 0
    mean_of_samples = run_predict(model, image, device="cpu", estimate="mean").mean
    assert np.abs(mean_of_samples - want).max() > 1e-3
