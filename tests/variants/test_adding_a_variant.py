"""docs/adding-a-variant.md, checked: its example variant, written to a module of its own and
registered (the one registry line), validates its preset options, trains a few steps and
predicts through the public job API. Nothing else of the package is touched."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_emdiffuse import variants
from napari_emdiffuse.config import SampleConfig, load_preset
from napari_emdiffuse.errors import ConfigError
from napari_emdiffuse.jobs.events import TrainResult
from napari_emdiffuse.jobs.predict import run_predict
from napari_emdiffuse.jobs.train import train
from napari_emdiffuse.model_file import Model

DOC = Path(__file__).resolve().parents[2] / "docs" / "adding-a-variant.md"


def _example_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The page's first Python block as a module outside the package (its relative imports made
    absolute, as they resolve inside ``napari_emdiffuse/variants/``)."""
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[0]
    code = code.replace("from ..", "from napari_emdiffuse.").replace("from .", "from napari_emdiffuse.variants.")
    path = tmp_path / "deblur_variant.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("deblur_variant", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # pydantic resolves the annotations through it
    spec.loader.exec_module(module)
    return module


def test_the_documented_fifth_variant_runs_with_its_module_and_one_registry_line(tmp_path, monkeypatch, isbi_clean):
    module = _example_module(tmp_path, monkeypatch)
    monkeypatch.setitem(variants.VARIANTS, "deblur", module.Deblur())  # the registry line

    fast = {"steps": 2, "samples": 2, "tile_size": 32, "overlap": 8, "tile_batch": 4}
    over = {"variant": "deblur", "variant_options": {"sigma": 1.0}, "train": {"iterations": 3, "val_every": 3, "checkpoint_every": 3}, "sample": fast}
    preset = load_preset("tiny", over)
    variant, options = variants.resolve(preset)
    assert variant.name == "deblur" and options.sigma == 1.0
    with pytest.raises(ConfigError, match=r"variant_options: .*sigma: .*less than or equal to 10"):
        variants.resolve(load_preset("tiny", {**over, "variant_options": {"sigma": 50}}))

    arrays = variant.from_clean(isbi_clean[:2, :96, :96], options)
    events = list(train(preset, arrays, tmp_path / "run", device="cpu"))
    result = events[-1]
    assert isinstance(result, TrainResult) and result.steps == 3
    model = Model.load(result.model_dir)
    assert model.variant == "deblur" and variants.model_options(model).sigma == 1.0

    image = arrays["input"][0, :40, :48]
    res = run_predict(model, image, voxel=(0.004, 0.004), device="cpu", sample=SampleConfig(**fast), keep_samples=True)
    assert res.mean.shape == res.std.shape == image.shape and res.samples.shape == (2, *image.shape)
    assert np.isfinite(res.mean).all() and (res.std >= 0).all()
