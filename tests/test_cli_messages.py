"""What the command line tells a user: warnings marked as such, error bounds that no longer hold
called a rough guide (in the terminal, in the files and in `emdiffuse info`), and a voxel size
that is only partly known."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
import zarr

from napari_emdiffuse import uncertainty
from napari_emdiffuse.cli import main
from napari_emdiffuse.data.io import read_image


@pytest.fixture(scope="module")
def noisy(tmp_path_factory, isbi_pair):
    """Two noisy ssTEM slices of 96 x 96 px as an ImageJ TIFF with its voxel size."""
    path = tmp_path_factory.mktemp("messages") / "noisy.tif"
    data = (np.clip(isbi_pair[0][:2, :96, :96], 0, 1) * 255).astype(np.uint8)
    tifffile.imwrite(path, data, imagej=True, resolution=(250, 250), metadata={"spacing": 0.05, "unit": "um"})
    return path


def _calibrated(model_dir, folder, input_noise: float | None):
    """A copy of the model calibrated (scale 2 at every alpha, for 2 samples of 1 step) on data
    whose input noise was ``input_noise`` (None: calibrated in training, no noise recorded)."""
    shutil.copytree(model_dir, folder)
    meta = json.loads((folder / "model.json").read_text())
    meta.setdefault("metrics", {})["calibration"] = {
        "alpha": 0.1, "alphas": list(uncertainty.ALPHAS), "q": [2.0] * len(uncertainty.ALPHAS),
        "samples": 2, "steps": 1, "sampler": "dpmpp_2m",
        **({"input_noise": input_noise} if input_noise is not None else {}),
    }  # fmt: skip
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def _predict(model, noisy, out, capsys):
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--input", str(noisy), "--output", str(out), "--steps", "1", "--samples", "2", "--device", "cpu", "-q"]) == 0
    return capsys.readouterr()


ROUGH = "a rough guide, not a calibrated 90 % interval: the input is much noisier than the calibration data"


def test_bounds_widened_past_what_calibration_covers_are_called_a_rough_guide_everywhere(tmp_path, noisy, tiny_model_dir, capsys):
    """An input 20 times noisier than the calibration data: a denoiser's bounds widen by its
    fourth root, 2.1x, past the 1.25x measured to keep the 90 % coverage. The warning, both TIFF
    bounds, the store and `emdiffuse info` say that they are a rough guide; an input like the
    calibration data has none of it."""
    measured = float(np.median(uncertainty.input_noise(read_image(noisy).data)))
    rough_model = _calibrated(tiny_model_dir, tmp_path / "rough", measured / 20)
    said = _predict(rough_model, noisy, tmp_path / "o.tif", capsys)
    [line] = [t for t in said.err.splitlines() if "noisier" in t]
    assert line.startswith("warning: 2 of 2 input planes (0, 1) are up to 2") and "x noisier than the data the error bounds were calibrated on" in line
    assert f"The error bounds of 2 of 2 input planes (0, 1) are {ROUGH}" in line and "emdiffuse calibrate" in line
    for name in ("o_lower.tif", "o_upper.tif"):
        record = read_image(tmp_path / name).meta["provenance"]["bounds_rough"]
        assert record["planes"] == [True, True] and record["note"].startswith(f"the error bounds of 2 of 2 input planes (0, 1) are {ROUGH}")
    capsys.readouterr()
    assert main(["info", str(tmp_path / "o_upper.tif")]) == 0
    assert f"bounds:   the error bounds of 2 of 2 input planes (0, 1) are {ROUGH}" in capsys.readouterr().out

    said = _predict(rough_model, noisy, tmp_path / "o.zarr", capsys)
    assert zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["bounds_rough"]["planes"] == [True, True]
    capsys.readouterr()
    assert main(["info", str(tmp_path / "o.zarr")]) == 0
    assert f"bounds:   the error bounds of 2 of 2 input planes (0, 1) are {ROUGH}" in capsys.readouterr().out

    plain = _calibrated(tiny_model_dir, tmp_path / "plain", measured)
    said = _predict(plain, noisy, tmp_path / "p.tif", capsys)
    assert "noisier" not in said.err + said.out and "rough" not in said.err + said.out
    assert "bounds_rough" not in read_image(tmp_path / "p_upper.tif").meta["provenance"]
    assert main(["info", str(tmp_path / "p_upper.tif")]) == 0
    [bounds] = [t for t in capsys.readouterr().out.splitlines() if t.startswith("bounds:")]  # what interval, nothing rough
    assert bounds.startswith("bounds:   lower/upper hold the truth at ") and "rough" not in bounds and "widened" not in bounds


def test_a_denoiser_widened_within_what_calibration_covers_is_warned_of_but_not_called_rough(tmp_path, noisy, tiny_model_dir, capsys):
    """Twice the calibration noise widens a denoiser's bounds by 2 ** 0.25 = 1.19x: measured to
    keep the coverage (90.6 % at 1.15-1.24x), so the warning says they widened, not that they are rough."""
    measured = float(np.median(uncertainty.input_noise(read_image(noisy).data)))
    said = _predict(_calibrated(tiny_model_dir, tmp_path / "m", measured / 2), noisy, tmp_path / "o.tif", capsys)
    [line] = [t for t in said.err.splitlines() if "noisier" in t]
    assert line.startswith("warning: 2 of 2 input planes (0, 1) are up to 2.") and "widened (up to 1.2" in line and "rough" not in line
    assert "bounds_rough" not in read_image(tmp_path / "o_upper.tif").meta["provenance"]


def test_warnings_are_marked_and_information_is_plain(tmp_path, noisy, tiny_model_dir, capsys):
    """In a terminal stderr and stdout read alike: a job's warning starts with 'warning: ', its
    information does not (a model worse than its baseline warns; one without calibration informs)."""
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    meta = json.loads((model / "model.json").read_text())
    meta["metrics"] = {"val_psnr": 15.0, "val_baseline_psnr": 18.0, "val_baseline": "noisy input"}  # and no calibration
    (model / "model.json").write_text(json.dumps(meta))
    said = _predict(model, noisy, tmp_path / "o.tif", capsys)
    [warning] = [t for t in said.err.splitlines() if "worse than noisy input" in t]
    assert warning.startswith("warning: this model is worse than noisy input"), warning
    [info] = [t for t in said.out.splitlines() if "no calibration" in t]
    assert info.startswith("the model has no calibration")


def test_a_job_message_is_shown_by_its_level():
    import sys

    from napari_emdiffuse.cli_jobs import say

    assert say("the input is noisier", "warning") == ("warning: the input is noisier", sys.stderr)
    assert say("resuming", "info") == ("resuming", sys.stdout)


def test_a_job_shows_no_bar_before_its_first_progress_and_a_named_bar_for_a_later_phase(capsys):
    """The terminal drew an empty "0step" bar before a job's notes, and training's calibration
    went on in the training bar ("2/4 step", the last loss beside it: the CLI walks)."""
    from napari_emdiffuse.cli_jobs import drive
    from napari_emdiffuse.jobs.events import Loss, Message, Progress

    events = [
        Message("a note before any progress"),
        Progress(1, 2, "training"),
        Loss(2, 0.5, 1e-4),
        Progress(2, 2, "training"),
        Progress(0, 16, "calibrating the uncertainty", "patch"),
        Progress(16, 16, "calibrating the uncertainty", "patch"),
    ]
    drive(iter(events), quiet=False)
    out, err = capsys.readouterr()
    assert out.startswith("a note before any progress\n")
    bars = [line.strip() for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert not any(line.startswith("0step") or line.startswith("0it") for line in bars)
    assert any("2/2" in line and "step" in line and "loss=0.5000" in line for line in bars)
    calibration = [line for line in bars if line.startswith("calibrating the uncertainty")]
    assert calibration and "16/16" in calibration[-1] and "patch" in calibration[-1] and "loss" not in calibration[-1]


def test_info_says_when_only_the_slice_spacing_is_unknown(tmp_path, capsys):
    """A stack whose pixels are 4 nm but whose slice spacing is not recorded read '1 x 0.004 x 0.004 µm'."""
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((3, 32, 32), np.uint8), imagej=True, resolution=(250, 250), metadata={"unit": "um"})
    assert read_image(path).voxel == pytest.approx((1.0, 0.004, 0.004))
    assert main(["info", str(path)]) == 0
    assert "voxel:    ? x 4 x 4 nm (z unknown)\n" in capsys.readouterr().out


def test_info_shows_the_sampling_the_napari_writer_records_and_an_unreadable_one_in_a_line(tmp_path, capsys):
    """A layer scaled (5, 1, 1) without units, saved by napari's writer, records no pixel size but
    its ``sampling``, which ``emdiffuse info`` shows; a malformed one is said in a line, not a traceback."""
    from napari_emdiffuse import _writer
    from napari_emdiffuse.data.tiff import write_tiff

    data = np.zeros((3, 8, 8), np.uint8)
    _writer.write_tiff(str(tmp_path / "layer.tif"), data, {"scale": [5.0, 1.0, 1.0]})
    _writer.write_ome_zarr(str(tmp_path / "layer.ome.zarr"), data, {"scale": [5.0, 1.0, 1.0]})
    for name in ("layer.tif", "layer.ome.zarr"):
        capsys.readouterr()
        assert main(["info", str(tmp_path / name)]) == 0
        said = capsys.readouterr().out
        assert "voxel:    unknown (not recorded in the file: 1 per pixel)\n" in said, name
        assert "\nsampling: 5 x 1 x 1 of napari's world pixels per pixel (no pixel size is recorded; napari places it by this)\n" in said, name
    write_tiff(tmp_path / "odd.tif", data, (1.0, 1.0, 1.0), provenance={"sampling": "12"})
    assert main(["info", str(tmp_path / "odd.tif")]) == 0
    assert "\nsampling: '12', unreadable: napari shows it in its own pixels\n" in capsys.readouterr().out


def test_info_judges_a_sampling_by_the_axes_the_napari_reader_shows(tmp_path, capsys):
    """``emdiffuse info`` showed a sampling of 4 numbers for a 3D file, which the reader refuses
    (napari shows it in its own pixels); a single slice saved as a stack (3 numbers for its 2D
    pixels) is one the reader keeps as a stack of one, and reads."""
    from napari_emdiffuse import _writer
    from napari_emdiffuse.data.tiff import write_tiff

    write_tiff(tmp_path / "long.tif", np.zeros((3, 8, 8), np.uint8), (1.0, 1.0, 1.0), provenance={"sampling": [1, 1, 1, 1]})
    assert main(["info", str(tmp_path / "long.tif")]) == 0
    assert "\nsampling: [1, 1, 1, 1], unreadable: napari shows it in its own pixels\n" in capsys.readouterr().out
    for name, dtype in (("slice.tif", np.uint8), ("slice_int16.tif", np.int16)):  # ImageJ, OME-TIFF
        _writer.write_tiff(str(tmp_path / name), np.zeros((1, 8, 8), dtype), {"scale": [1.0, 0.5, 0.5]})
        assert main(["info", str(tmp_path / name)]) == 0
        assert "\nsampling: 1 x 0.5 x 0.5 " in capsys.readouterr().out, name


def test_a_gpu_out_of_memory_is_the_users_to_fix_and_says_what_to_lower(tmp_path, noisy, tiny_model_dir, monkeypatch, capsys):
    """Training or calibration that runs out of GPU memory was an "internal error" (exit 1, as for
    a bug of ours): now exit 2 and one line naming only options the command has (calibrate samples
    with the model's own tiles: no --tile-size to lower)."""
    import torch

    from napari_emdiffuse.jobs import calibrate as calibrate_job
    from napari_emdiffuse.jobs import train as train_job

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    monkeypatch.setattr(train_job, "train", oom)
    monkeypatch.setattr(calibrate_job, "calibrate", oom)
    capsys.readouterr()
    assert main(["train", "--preset", "tiny", "--clean", str(noisy), "--out", str(tmp_path / "run"), "--device", "cpu", "-q"]) == 2
    assert capsys.readouterr().err.strip() == (
        "emdiffuse train: error: the GPU ran out of memory: try a smaller --batch-size (or a --config with a smaller "
        "train.patch_size), or --device cpu (CUDA out of memory. Tried to allocate 1.00 GiB)"
    )
    argv = ["calibrate", "--model", str(tiny_model_dir), "--input", str(noisy), "--truth", str(noisy), "--out", str(tmp_path / "cal"), "--device", "cpu", "-q"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == "emdiffuse calibrate: error: the GPU ran out of memory: try --device cpu (CUDA out of memory. Tried to allocate 1.00 GiB)"


def test_info_of_a_stopped_runs_store_says_resume_continues_it_and_outputs_name_their_model_in_full(tmp_path, monkeypatch):
    """A store stopped with a finished range read 'NO: only z 0:2 of 8 is finished (the run was
    stopped)' where the other unfinished cases add how to go on; and an output recorded its model
    as typed (a relative folder) beside its input's full path (a user's walk)."""
    from napari_emdiffuse.models import model_record
    from napari_emdiffuse.data.cli_commands import _provenance_lines

    lines = _provenance_lines({"shape": [8, 16, 16], "finished": [[0, 2], [0, 16], [0, 16]], "complete": False})
    assert lines[0].startswith("complete: NO: only ") and lines[0].endswith("is finished (the run was stopped; --resume continues it)")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "denoise").mkdir(parents=True)
    assert model_record("emdiffuse-n") == "emdiffuse-n" and model_record("runs/denoise") == str(tmp_path / "runs" / "denoise")
