import json

import pytest

from napari_emdiffuse.config import ConfigError, builtin_presets, load_preset, parse_preset


def test_builtin_presets_load_and_round_trip():
    names = builtin_presets()
    assert {"emdiffuse-n", "emdiffuse-n-cpu", "tiny"} <= set(names)
    for name in names:
        p = load_preset(name)
        assert parse_preset(json.loads(p.to_json())) == p


def test_paper_preset_settings():
    p = load_preset("emdiffuse-n")
    assert p.variant == "denoise" and p.diffusion.timesteps == 2000
    assert (p.diffusion.beta_start, p.diffusion.beta_end) == (1e-6, 0.01)


def test_user_file_overrides_a_base(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"base": "tiny", "train": {"iterations": 7}, "sample": {"samples": 3}}))
    p = load_preset(f)
    assert p.train.iterations == 7 and p.sample.samples == 3
    assert p.network == load_preset("tiny").network


def test_overrides_in_code():
    p = load_preset("tiny", {"train": {"lr": 0.01}})
    assert p.train.lr == 0.01 and p.train.batch_size == load_preset("tiny").train.batch_size


@pytest.mark.parametrize(
    "data,match",
    [
        ({"train": {"iteratons": 5}}, r"train\.iteratons: unknown key"),
        ({"train": {"batch_size": 0}}, r"train\.batch_size: Input should be greater than or equal to 1"),
        ({"sample": {"sampler": "euler"}}, r"sample\.sampler: .*'ddpm', 'ddim' or 'dpmpp_2m'"),
        ({"sample": {"tile_size": 64, "overlap": 40}}, r"sample\.overlap: 40 must be less than half the tile size \(64\)"),
        ({"network": {"attention_levels": [7]}}, r"network\.attention_levels: \[7\] do not exist"),
        ({"train": {"patch_size": 100}}, r"train\.patch_size: 100 is not a multiple of 16"),
        ({"diffusion": {"beta_start": 0.1, "beta_end": 0.01}}, r"diffusion\.beta_end: 0\.01 must be larger than beta_start \(0\.1\)"),
        ({"format_version": 99}, r"format_version 99 is not supported"),
        (
            {"network": {"channel_mults": [1, 1, 1, 1, 1, 1]}, "train": {"patch_size": 48}},
            r"bad\.json: train\.patch_size: 48 does not suit network\.channel_mults \(6 levels.*multiple of 32",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path, data, match):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"base": "tiny", **data}))
    with pytest.raises(ConfigError, match=match):
        load_preset(f)


def test_a_bad_value_is_one_sentence_naming_the_key_as_the_file_spells_it(tmp_path, capsys):
    """The Presets panel said "Train.patch_size: patch_size must ..." after a stripped
    "preset: invalid preset:" (the GUI walk): the message is the file, the key and the problem,
    the same on the command line, and without a file (an edit) just the key and the problem."""
    from napari_emdiffuse.cli import main

    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"base": "tiny", "train": {"patch_size": 50}}))
    with pytest.raises(ConfigError) as err:
        load_preset(f)
    assert str(err.value) == f"{f}: train.patch_size: 50 is not a multiple of 16"
    capsys.readouterr()
    assert main(["presets", "--show", str(f)]) == 2
    assert capsys.readouterr().err.strip() == f"emdiffuse presets: error: {f}: train.patch_size: 50 is not a multiple of 16"
    with pytest.raises(ConfigError) as err:
        load_preset("tiny").with_overrides({"train": {"patch_size": 50}})
    assert str(err.value) == "train.patch_size: 50 is not a multiple of 16"


def test_broken_and_missing_files(tmp_path):
    f = tmp_path / "broken.json"
    f.write_text('{"train": {"iterations": 5,,}')
    with pytest.raises(ConfigError, match=r"not valid JSON \(line 1"):
        load_preset(f)
    with pytest.raises(ConfigError, match="no preset called"):
        load_preset(tmp_path / "nope.json")
    f.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        load_preset(f)
    f.write_text(json.dumps({"base": "nonexistent"}))
    with pytest.raises(ConfigError, match="is not a built-in preset"):
        load_preset(f)


def test_the_registry_checks_the_variant_and_its_options(tmp_path):
    """config knows no variant (it imports none): a preset names one, and the registry checks it."""
    from napari_emdiffuse.variants import resolve

    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"base": "tiny", "variant": "colourise"}))
    with pytest.raises(ConfigError, match=r"bad.json: variant: unknown variant 'colourise'"):
        resolve(load_preset(f), str(f))
    f.write_text(json.dumps({"base": "tiny", "variant_options": {"residul": True}}))
    with pytest.raises(ConfigError, match=r"preset 'tiny': variant_options: .*residul: unknown option; .* takes residual"):
        resolve(load_preset(f))
    variant, options = resolve(load_preset("emdiffuse-r-tiny", {"variant_options": {"factor": 3}}))
    assert variant.name == "superres" and options.factor == 3
