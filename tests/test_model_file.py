import json
import re

import numpy as np
import pytest
import torch

from napari_emdiffuse.config import load_preset
from napari_emdiffuse.errors import ModelFileError
from napari_emdiffuse.model_file import Model, ModelInfo
from napari_emdiffuse.models import resolve_model
from napari_emdiffuse.variants import complete, model_options


def _model():
    return Model(complete(load_preset("tiny")), ModelInfo(training={"steps": 3}, metrics={"val_psnr": 20.0}))


def test_round_trip(tmp_path):
    m = _model()
    m.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "weights.safetensors"]
    back = Model.load(tmp_path / "m")
    assert back.preset == m.preset and back.info.metrics == {"val_psnr": 20.0}
    for a, b in zip(m.network.state_dict().values(), back.network.state_dict().values()):
        assert torch.equal(a, b)
    assert resolve_model(tmp_path / "m").preset == m.preset


def test_truncated_weights_fail_loudly(tmp_path):
    _model().save(tmp_path)
    w = tmp_path / "weights.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        Model.load(tmp_path)


def test_weights_of_another_network_are_refused(tmp_path):
    _model().save(tmp_path)
    other = Model(complete(load_preset("emdiffuse-n-cpu")), ModelInfo())
    other.save(tmp_path / "other")
    (tmp_path / "weights.safetensors").write_bytes((tmp_path / "other" / "weights.safetensors").read_bytes())
    with pytest.raises(ModelFileError, match="do not match the network"):
        Model.load(tmp_path)


def test_a_top_level_variant_that_disagrees_with_the_preset_is_refused_naming_both(tmp_path):
    """Listings (``emdiffuse models``, the widgets' model list) read the top-level copy, prediction
    the preset's: an edited model.json whose two disagree loaded as the preset's without a word."""
    _model().save(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["variant"] == meta["preset"]["variant"] == "denoise"
    (tmp_path / "model.json").write_text(json.dumps({**meta, "variant": "superres"}))
    with pytest.raises(ModelFileError) as err:
        Model.load(tmp_path)
    assert str(err.value) == (
        f"{tmp_path}: model.json says variant 'superres' at its top level but 'denoise' in its preset; one of them was edited: make them agree"
    )
    with pytest.raises(ModelFileError, match="'superres' at its top level"):
        Model.from_json({**meta, "variant": "superres"})
    (tmp_path / "model.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "variant"}))
    assert Model.load(tmp_path).variant == "denoise"  # without the copy, the preset alone says it


def test_bad_model_json(tmp_path):
    _model().save(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**meta, "format_version": 42}))
    with pytest.raises(ModelFileError, match="format 42"):
        Model.load(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="cannot read"):
        Model.load(tmp_path)
    (tmp_path / "model.json").unlink()
    with pytest.raises(ModelFileError, match="not a model folder"):
        Model.load(tmp_path)
    with pytest.raises(ModelFileError, match="no such model folder"):
        resolve_model(tmp_path / "missing")


def test_no_pickle_anywhere():
    """Model files are safetensors + JSON; torch.load is never called without weights_only=True."""
    import pathlib
    import re

    src = pathlib.Path(__file__).resolve().parents[1] / "src"
    # bioimage.io's pytorch_state_dict format is a torch.save file: the export writes one holding
    # tensors only, and reads it back with weights_only=True. Nothing else may write one.
    may_save = {"bioimageio_export.py"}
    for f in src.rglob("*.py"):
        text = f.read_text()
        assert not re.search(r"import pickle|pickle\.load", text), f
        if f.name not in may_save:
            assert "torch.save(" not in text, f
        for start in (m.end() for m in re.finditer(r"torch\.load\(", text)):
            depth, end = 1, start
            while depth:  # to the call's closing parenthesis, past nested ones
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            assert "weights_only=True" in text[start:end], f


def test_a_denoiser_stored_before_the_residual_option_keeps_its_meaning(tmp_path, isbi_pair):
    """Old model.json files have no ``residual`` key: they learnt the clean image itself and
    must still be run that way; a new model writes the key and keeps its residual."""
    from napari_emdiffuse.config import SampleConfig
    from napari_emdiffuse.jobs.predict import run_predict

    noisy, _ = isbi_pair
    v = load_preset("tiny", {"diffusion": {"prediction": "v"}})
    torch.manual_seed(3)
    m = Model(complete(v), ModelInfo())
    for p in m.network.parameters():  # a network that answers something (not the zero start)
        p.data.normal_(0, 0.05)
    m.save(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "model.json").read_text())["preset"]["variant_options"] == {"residual": True}
    meta = json.loads((tmp_path / "new" / "model.json").read_text())
    meta["preset"]["variant_options"] = {}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model.json").write_text(json.dumps(meta))
    (tmp_path / "old" / "weights.safetensors").write_bytes((tmp_path / "new" / "weights.safetensors").read_bytes())
    old = Model.load(tmp_path / "old")
    assert old.preset.variant_options == {"residual": False}
    explicit = Model(v.with_overrides({"variant_options": {"residual": False}}), ModelInfo(), network=old.network)
    cfg = SampleConfig(steps=2, samples=1, tile_size=64, overlap=16)
    image = noisy[0, :32, :32]
    a = run_predict(old, image, sample=cfg, estimate="mean").mean
    np.testing.assert_array_equal(a, run_predict(explicit, image, sample=cfg, estimate="mean").mean)
    assert not np.allclose(a, run_predict(Model.load(tmp_path / "new"), image, sample=cfg, estimate="mean").mean, atol=1e-3)


def test_predict_normalises_at_the_percentiles_the_model_records(tmp_path):
    """model.json's ``normalisation`` is what prediction uses, not a note beside it; a model
    that records none gets the percentiles training uses, and nonsense is refused on loading."""
    from napari_emdiffuse.data.normalise import PERCENTILES, fit_normaliser
    from napari_emdiffuse.jobs.predict import normaliser_for

    image = np.random.default_rng(0).gamma(2.0, 30.0, (64, 64)).astype(np.float32)
    m = Model(load_preset("tiny"), ModelInfo(normalisation={"method": "percentile", "low": 2.0, "high": 98.0}))
    assert normaliser_for(Model.from_json(m.to_json()), image) == fit_normaliser(image, 2.0, 98.0) != fit_normaliser(image)
    meta = m.to_json()
    del meta["normalisation"]
    assert Model.from_json(meta).info.normalisation["low"] == PERCENTILES[0]
    for bad in ({"low": 50, "high": 10}, {"low": "lots"}, {"high": 101}):
        with pytest.raises(ModelFileError, match="normalisation percentiles"):
            Model.from_json({**m.to_json(), "normalisation": bad})


def _bad_option_folder(tmp_path):
    """A model folder whose model.json names a variant option the variant does not take."""
    _model().save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["preset"]["variant_options"] = {"residual": True, "factr": 2}
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    return tmp_path / "m"


def test_a_bad_variant_option_is_a_bad_model_file_named_by_its_folder(tmp_path):
    """model_file knows no variant: Model.load keeps the preset as stored, and the variant
    registry's check names the folder; a new model stores every option (variants.complete)."""
    folder = _bad_option_folder(tmp_path)
    model = Model.load(folder)
    with pytest.raises(ModelFileError, match=rf"^{re.escape(str(folder))}: preset 'tiny': variant_options: .*factr") as err:
        model_options(model)
    assert "\n" not in str(err.value)
    given = Model(load_preset("tiny"), ModelInfo())
    assert given.preset.variant_options == {}  # as given: writing the options out is complete()'s
    assert model_options(given).model_dump() == complete(given.preset).variant_options == {"residual": True}


def test_the_cli_refuses_a_bad_variant_option_in_one_line_before_reading_the_input(tmp_path, capsys):
    from napari_emdiffuse.cli import main

    folder = _bad_option_folder(tmp_path)
    assert main(["predict", "--model", str(folder), "--input", str(tmp_path / "absent.tif"), "--output", str(tmp_path / "o.tif")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(folder) in err and "factr" in err and "absent.tif" not in err
    assert not (tmp_path / "o.tif").exists()


def test_a_preset_without_its_options_is_not_saved_to_change_meaning(tmp_path):
    """In memory a denoiser without the ``residual`` key is residual (the default); on disk the
    missing key means a model from before the option. Saving it as it is would flip it."""
    given = Model(load_preset("tiny"), ModelInfo())
    with pytest.raises(ValueError, match=r"variants.complete\(\)"):
        given.save(tmp_path / "m")
    assert not (tmp_path / "m").exists()
    done = Model(complete(given.preset), ModelInfo(), network=given.network)
    assert model_options(Model.load(done.save(tmp_path / "m"))) == model_options(given)


def test_the_pixel_warning_speaks_only_for_known_and_very_different_pixel_sizes():
    from napari_emdiffuse.config import load_preset
    from napari_emdiffuse.data.image import known_pixel_um
    from napari_emdiffuse.model_file import PIXEL_TOLERANCE, Model, ModelInfo

    model = Model(load_preset("tiny"), ModelInfo(training={"pixel_size_um": 0.005}))
    assert model.pixel_warning(None) is None
    assert model.pixel_warning(0.005 * PIXEL_TOLERANCE) is None and model.pixel_warning(0.005 / PIXEL_TOLERANCE) is None
    assert "10 nm" in model.pixel_warning(0.010) and "2 times larger" in model.pixel_warning(0.010)
    assert "(4000 times larger)" in model.pixel_warning(20.0) and "20000 nm" in model.pixel_warning(20.0)
    assert "2.5 times smaller" in model.pixel_warning(0.002)
    assert Model(model.preset, ModelInfo()).pixel_warning(0.5) is None  # a model that does not record it
    # a pixel of exactly 1 µm is what a file without a pixel size reads as: unknown
    assert known_pixel_um((0.05, 1.0, 1.0)) is None and known_pixel_um((1.0, 1.0)) is None
    assert known_pixel_um((0.05, 0.004, 0.004)) == 0.004 and known_pixel_um((0.0, 0.0)) is None


def test_the_bundled_models_record_the_pixel_size_of_their_inputs():
    from napari_emdiffuse.models import resolve_model

    sizes = {name: resolve_model(name).info.training.get("pixel_size_um") for name in ("emdiffuse-n", "emdiffuse-r", "vemdiffuse-i", "vemdiffuse-a")}
    assert sizes == {"emdiffuse-n": 0.004, "emdiffuse-r": 0.010, "vemdiffuse-i": 0.005, "vemdiffuse-a": 0.005}
