"""The command line as a user meets it: end to end on real EM, and one-line errors."""

import json
import re

import numpy as np
import pytest
import tifffile

from napari_emdiffuse.cli import main


@pytest.fixture(scope="module")
def stack(tmp_path_factory, isbi_pair):
    """A noisy 2-slice ssTEM crop as an ImageJ TIFF with its voxel size."""
    d = tmp_path_factory.mktemp("cli")
    noisy, clean = isbi_pair
    path = d / "noisy.tif"
    tifffile.imwrite(path, (np.clip(noisy[:2, :96, :96], 0, 1) * 255).astype(np.uint8), imagej=True, resolution=(250, 250), metadata={"spacing": 0.05, "unit": "um"})
    clean_path = d / "clean.tif"
    tifffile.imwrite(clean_path, (clean[:, :128, :128] * 255).astype(np.uint8), imagej=True, resolution=(250, 250), metadata={"spacing": 0.05, "unit": "um"})
    return path, clean_path


def test_train_then_predict(tmp_path, stack, capsys):
    noisy, clean = stack
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--clean", str(clean), "--out", str(run), "--iterations", "4", "-q"]) == 0
    assert "model saved" in capsys.readouterr().out
    assert main(["train", "--out", str(run), "--resume", "--clean", str(clean), "--iterations", "6", "-q"]) == 0
    assert json.loads((run / "model.json").read_text())["training"]["steps"] == 6
    capsys.readouterr()
    # a model one trained has no card: --show said only that; it shows what model.json records (a user's walk)
    assert main(["models", "--show", str(run)]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"{run}: no model card; what its model.json records:\ndenoise model, preset tiny\ntrained: 6 steps in ")
    assert re.search(r"\nvalidation \(step 6, \d+ held-out patches\): best -?\d+\.\d\d dB, noisy input -?\d+\.\d\d dB \([+-]\d+\.\d\d dB\)\n", shown), shown
    assert "\npixel size: 50 nm" not in shown and "\npixel size: " in shown and "\nerror bounds: " in shown
    out = tmp_path / "den.tif"
    assert main(["predict", "--model", str(run), "--input", str(noisy), "--output", str(out), "--steps", "2", "--samples", "2", "-q"]) == 0
    mean, unc = tifffile.TiffFile(out), tifffile.TiffFile(tmp_path / "den_uncertainty.tif")
    assert mean.series[0].shape == unc.series[0].shape == (2, 96, 96)
    assert mean.imagej_metadata["spacing"] == pytest.approx(0.05)
    assert mean.pages[0].tags["XResolution"].value[0] / mean.pages[0].tags["XResolution"].value[1] == pytest.approx(250)


def test_resuming_to_more_steps_lifts_the_first_runs_time_limit(tmp_path, stack, capsys):
    """The README's 'train --resume --iterations 6000' after a '--minutes 10' run kept the 10
    minutes, unsaid, and stopped by time short of the steps asked for (a user's walk). Asked for
    steps and no minutes, the resumed run drops the limit and says so; --minutes sets one."""
    from napari_emdiffuse.jobs.train import checkpoint_state

    _, clean = stack
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--clean", str(clean), "--out", str(run), "--iterations", "2", "--minutes", "30", "-q"]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--clean", str(clean), "--iterations", "3", "-q"]) == 0
    assert "resuming to 3 steps without the first run's time limit (30 minutes); give --minutes to set one" in capsys.readouterr().out
    saved = json.loads((run / "model.json").read_text())
    assert saved["training"]["steps"] == 3 and checkpoint_state(run)["preset"]["train"]["minutes"] is None  # the rule it ran by
    assert main(["train", "--out", str(run), "--resume", "--clean", str(clean), "--iterations", "4", "--minutes", "20", "-q"]) == 0
    assert "first run's time limit" not in capsys.readouterr().out and checkpoint_state(run)["preset"]["train"]["minutes"] == 20
    # there already: said at once, before the data is read (a file that is gone is no error), nothing else
    assert main(["train", "--out", str(run), "--resume", "--clean", str(tmp_path / "gone.tif"), "--iterations", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"nothing left to train: the run in {run} has trained 4 steps (asked: 4)") and out.count("\n") == 1


def test_predict_says_when_a_model_is_worse_than_its_baseline(tmp_path, stack, capsys, tiny_model_dir):
    import shutil

    noisy, _ = stack
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    meta = json.loads((model / "model.json").read_text())
    meta["metrics"] = {"val_psnr": 15.0, "val_baseline_psnr": 18.0, "val_baseline": "noisy input"}
    (model / "model.json").write_text(json.dumps(meta))
    out = tmp_path / "den.tif"
    assert main(["predict", "--model", str(model), "--input", str(noisy), "--output", str(out), "--steps", "1", "--samples", "2", "-q"]) == 0
    said = capsys.readouterr()
    assert "worse than noisy input on its validation patches (15.00 dB against 18.00 dB): train longer" in said.out + said.err
    assert not (tmp_path / "den_lower.tif").exists()  # the CLI writes no interval files yet
    assert main(["models", "--show", str(model)]) == 0
    assert "worse than noisy input" in capsys.readouterr().out


def test_a_model_records_its_pixel_size_and_predict_warns_on_a_very_different_one(tmp_path, stack, capsys):
    """Trained on 4 nm pixels (the clean file's), the model warns on a 10 nm input and on none of
    4 nm; of an input of unknown pixel size (a TIFF without a resolution) it says what it expects."""
    noisy, clean = stack
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--clean", str(clean), "--out", str(run), "--iterations", "2", "-q"]) == 0
    assert json.loads((run / "model.json").read_text())["training"]["pixel_size_um"] == pytest.approx(0.004)
    data = tifffile.imread(noisy)
    coarse, bare = tmp_path / "coarse.tif", tmp_path / "bare.tif"
    tifffile.imwrite(coarse, data, imagej=True, resolution=(100, 100), metadata={"spacing": 0.05, "unit": "um"})
    tifffile.imwrite(bare, data)
    said = {}
    for name, path in (("same", noisy), ("coarse", coarse), ("unknown", bare)):
        capsys.readouterr()
        out = tmp_path / f"{name}_out.tif"
        assert main(["predict", "--model", str(run), "--input", str(path), "--output", str(out), "--steps", "1", "--samples", "2"]) == 0
        captured = capsys.readouterr()
        said[name] = captured.out + captured.err
    assert "learnt from inputs with 4 nm pixels, and the input's are 10 nm (2.5 times larger)" in said["coarse"]
    line = next(t for t in said["coarse"].splitlines() if "nm pixels" in t)  # one line, with what to do
    assert "Resample the input to about 4 nm pixels, or fine-tune" in line
    assert "nm pixels" not in said["same"] and "learnt from inputs with" not in said["unknown"]
    assert "the input has no pixel size, so it cannot be compared with the 4 nm pixels this model learnt from" in said["unknown"]
    assert "no pixel size" not in said["same"] + said["coarse"]


def test_a_reader_that_closes_the_output_early_is_no_error():
    """`emdiffuse models | head -1`: the pipe closes before everything is written; the command
    stops quietly (status 141, as the shell's tools do), with nothing on stderr."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # a reader gone before the first line
    try:
        done = subprocess.run([sys.executable, "-m", "napari_emdiffuse.cli", "presets"], stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == ""


def test_presets_command(capsys):
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out
    assert "emdiffuse-n" in listed
    # each preset's first sentence: a decimal point ends none ("about 1.6 M parameters" read "about 1")
    assert re.search(r"emdiffuse-n-cpu .*about 1\.\d M parameters", listed), listed
    assert main(["presets", "--show", "tiny"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "tiny"


def test_models_command_says_what_each_model_does_in_words(capsys):
    """The listing printed raw options (" residual=True", "factor=4.0 emdiffuse_original=False
    both_views=True"); it says what they make each model do, and so does the card --show prints."""
    assert main(["models"]) == 0
    lines = {t.split()[0]: t for t in capsys.readouterr().out.splitlines() if t.startswith(("emdiffuse-", "vemdiffuse-"))}
    z4 = "4x finer in z (k = 4): 3 new slices between each two input slices"
    assert "  2x super-resolution (pixels 2 times finer in x and y)  EMDiffuse-r" in lines["emdiffuse-r"]
    assert f"  {z4}  vEMDiffuse-i" in lines["vemdiffuse-i"]
    assert f"  {z4}; averages its xz and yz views  vEMDiffuse-a" in lines["vemdiffuse-a"]
    assert "inputs 4 nm  EMDiffuse-n" in lines["emdiffuse-n"]  # a residual denoiser, as every new one: nothing to add
    assert not any(raw in line for line in lines.values() for raw in ("=True", "=False", "residual", "emdiffuse_original", "both_views", "factor"))
    assert main(["models", "--show", "vemdiffuse-a"]) == 0
    card = capsys.readouterr().out  # the card says it in the same words (the raw values stay in model.json)
    assert f"{z4}, averages its xz and yz views, 3000 training steps" in card and "emdiffuse_original" not in card


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_user_errors_are_one_line(tmp_path, stack, capsys, tiny_model_dir):
    noisy, clean = stack
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00garbage" * 10)
    bad_preset = tmp_path / "p.json"
    bad_preset.write_text('{"base": "tiny", "train": {"bacth_size": 2}}')
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, np.zeros((2, 50, 50), np.uint8))
    out = str(tmp_path / "o.tif")
    assert "no such file" in _error(capsys, ["predict", "--model", str(tiny_model_dir), "--input", str(tmp_path / "nope.tif"), "--output", out])
    assert "not a readable TIFF" in _error(capsys, ["predict", "--model", str(tiny_model_dir), "--input", str(corrupt), "--output", out])
    assert "not a model folder" in _error(capsys, ["predict", "--model", str(tmp_path), "--input", str(noisy), "--output", out])
    assert "no training data" in _error(capsys, ["train", "--preset", "tiny", "--out", str(tmp_path / "r")])
    assert "unknown key" in _error(capsys, ["train", "--config", str(bad_preset), "--clean", str(clean), "--out", str(tmp_path / "r")])
    assert "differ in shape" in _error(capsys, ["train", "--preset", "tiny", "--input", str(other), "--target", str(clean), "--out", str(tmp_path / "r")])
    assert "overwrite the input" in _error(capsys, ["predict", "--model", str(tiny_model_dir), "--input", str(noisy), "--output", str(noisy)])
    assert "nothing to resume" in _error(capsys, ["train", "--preset", "tiny", "--out", str(tmp_path / "empty"), "--resume"])
    txt = tmp_path / "x.txt"
    txt.write_text("hello")
    assert "unsupported" in _error(capsys, ["predict", "--model", str(tiny_model_dir), "--input", str(txt), "--output", out])


@pytest.mark.slow  # the CPU preset's final validation and calibration
def test_fine_tune_a_bundled_model_by_name(tmp_path, stack, capsys):
    _, clean = stack
    run = tmp_path / "tuned"
    argv = ["train", "--from-model", "emdiffuse-n", "--clean", str(clean), "--out", str(run), "--iterations", "1", "-q"]
    assert main(argv) == 0, capsys.readouterr().err
    from napari_emdiffuse.models import resolve_model

    bundled = resolve_model("emdiffuse-n").info.training["steps"]
    assert json.loads((run / "model.json").read_text())["training"]["fine_tuned_from"]["steps"] == bundled


def test_a_bad_option_value_is_named_by_its_option_not_its_preset_key(tmp_path, stack, capsys):
    """``--tile-size 7`` said "preset: invalid preset: sample.tile_size" (the CLI walk of 2026-12-07)."""
    noisy, clean = stack
    capsys.readouterr()
    assert main(["predict", "--model", "emdiffuse-n", "--input", str(noisy), "--output", str(tmp_path / "o.tif"), "--tile-size", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "emdiffuse predict: error: --tile-size: Input should be greater than or equal to 32"
    assert main(["train", "--preset", "tiny", "--clean", str(clean), "--out", str(tmp_path / "r"), "--batch-size", "0"]) == 2
    assert "error: --batch-size: " in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_a_roi_outside_the_image_or_empty_is_refused_before_training(tmp_path, stack, capsys):
    """``--roi`` was clipped to the image without a word (training on another region than the one
    asked for); now a region not wholly inside the image, or an empty one, is one line naming the
    option, the image's size and its file, and nothing is trained or written."""
    noisy, clean = stack
    target = tmp_path / "target.tif"
    tifffile.imwrite(target, tifffile.imread(clean)[:2, :96, :96])
    run = tmp_path / "r"
    pair = ["train", "--preset", "tiny", "--input", str(noisy), "--target", str(target), "--out", str(run), "--iterations", "1", "-q"]
    for roi, where in (("0:900,0:64", "reaches past the edge of"), ("-8:40,0:64", "reaches past the edge of"), ("0:64,90:97", "reaches past the edge of"), ("200:300,200:300", "lies outside")):
        err = _error(capsys, [*pair, f"--roi={roi}"]).strip()
        assert err == f"emdiffuse train: error: --roi {roi}: {where} the image {noisy} (96 x 96 px); give Y0:Y1,X0:X1 within it"
    for roi in ("-10:64,0:64", "-8:-2,0:64"):  # as "--roi VALUE": argparse took the value for an option ("expected one argument")
        where = "reaches past the edge of" if roi.startswith("-10") else "lies outside"
        err = _error(capsys, [*pair, "--roi", roi]).strip()
        assert err == f"emdiffuse train: error: --roi {roi}: {where} the image {noisy} (96 x 96 px); give Y0:Y1,X0:X1 within it"
    assert "expected one argument" in _error(capsys, [*pair, "--roi", "--device", "cpu"])  # a missing value is still missing
    err = _error(capsys, ["train", "--preset", "tiny", "--clean", str(clean), "--out", str(run), "--roi", "0:64,100:129"]).strip()
    assert err == f"emdiffuse train: error: --roi 0:64,100:129: reaches past the edge of the image simulated from {clean} (128 x 128 px); give Y0:Y1,X0:X1 within it"
    for roi in ("40:40,0:64", "0:64,64:10"):
        assert f"--roi {roi}: empty; Y0 must be less than Y1" in _error(capsys, [*pair, "--roi", roi])
    assert not run.exists()
    assert main([*pair, "--roi", "0:96,32:96"]) == 0  # the whole height: inside, trained


def test_a_device_named_but_not_here_is_an_error_for_every_command_that_takes_one(tmp_path, stack, capsys, tiny_model_dir):
    """``--device cuda`` on a machine without CUDA ran on the CPU with a warning and status 0 (an
    overnight job taking weeks); a device named on the command line must be there. ``auto`` and
    ``cpu`` stay as they were."""
    import argparse
    import subprocess
    import sys

    import torch

    from napari_emdiffuse.cli import build_parser

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("a GPU is here: cuda or mps is usable")
    noisy, clean = stack
    commands = {
        "predict": ["predict", "--model", str(tiny_model_dir), "--input", str(noisy), "--output", str(tmp_path / "o.tif")],
        "train": ["train", "--preset", "tiny", "--clean", str(clean), "--out", str(tmp_path / "r"), "--iterations", "1"],
        "calibrate": ["calibrate", "--model", str(tiny_model_dir), "--clean", str(clean), "--out", str(tmp_path / "cal")],
    }
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {name for name, p in sub.choices.items() if "--device" in p._option_string_actions} == set(commands)  # every one
    reasons = {"cuda": "CUDA is not available", "cuda:1": "CUDA is not available", "mps": "Apple MPS is not available on this machine"}
    for name, argv in commands.items():
        for device, reason in reasons.items():
            err = _error(capsys, [*argv, "--device", device]).strip()
            assert err.startswith(f"emdiffuse {name}: error: --device {device}: {reason}"), err
            assert err.endswith("; use --device auto (the best found here) or cpu"), err
    assert sorted(tmp_path.iterdir()) == []  # nothing started, nothing written
    done = subprocess.run([sys.executable, "-m", "napari_emdiffuse.cli", *commands["predict"], "--device", "cuda"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("emdiffuse predict: error: --device cuda: CUDA is not available")
    assert main([*commands["predict"], "--device", "cpu", "--steps", "1", "--samples", "2", "-q"]) == 0  # a device that is here
