"""A TIFF result of ``predict`` reopens in napari as the zarr store of the same run does: the same
layer names and values (the error map ``u`` shown as the bound ``q u`` its ``bounds`` record states,
"rough" where the bounds were widened past calibration); TIFFs written before ``bounds`` show
the error map itself, as such stores do."""

from __future__ import annotations

import numpy as np
import pytest

from napari_emdiffuse._reader import read_paths
from napari_emdiffuse.cli import main
from napari_emdiffuse.data.io import read_image, write_tiff

PARTS = {"mean": "", "uncertainty": "_uncertainty", "lower": "_lower", "upper": "_upper"}


def _layers(paths) -> dict[str, tuple[np.ndarray, dict]]:
    return {kw["name"]: (np.asarray(data), kw) for data, kw, _ in read_paths([str(p) for p in paths])}


def _assert_same(tiffs: dict, store: dict) -> None:
    """The same layers, value for value, coloured, contrasted and marked alike."""
    assert set(tiffs) == set(store)
    for name, (data, kw) in store.items():
        np.testing.assert_array_equal(tiffs[name][0], data, err_msg=name)
        for key in ("colormap", "contrast_limits", "scale", "translate"):
            assert tiffs[name][1].get(key) == pytest.approx(kw.get(key)), (name, key)
        assert tiffs[name][1]["metadata"]["emdiffuse"]["role"] == kw["metadata"]["emdiffuse"]["role"]


def test_a_tiff_result_reopens_as_the_store_of_the_same_run(calibrated_model, predict_cli, tmp_path):
    args = [*predict_cli(calibrated_model), "-q"]
    for output in ("out.tif", "out.zarr"):
        assert main([*args, "--output", str(tmp_path / output)]) == 0
    store = _layers([tmp_path / "out.zarr"])
    tiffs = _layers(tmp_path / f"out{tail}.tif" for tail in PARTS.values())
    _assert_same(tiffs, store)
    bound, u = tiffs["out: error bound (90 %) [grey values]"][0], read_image(tmp_path / "out_uncertainty.tif").data
    q = read_image(tmp_path / "out_uncertainty.tif").meta["provenance"]["bounds"]["scale"]
    assert q != 1.0 and u.max() > 0
    np.testing.assert_allclose(bound, np.asarray(u) * q, rtol=1e-6)


@pytest.mark.parametrize("complete", [True, False])
@pytest.mark.parametrize("record", ["calibrated", "rough", "before bounds"])
def test_tiff_and_store_with_the_same_record_reopen_alike(tmp_path, record, complete):
    """Bounds widened past calibration are rough in both; a record without ``bounds`` (written
    before it existed, or by an uncalibrated model) shows the error map."""
    import zarr

    from napari_emdiffuse.data.safe_output import CREATED_BY, SOFTWARE

    attrs = {"complete": complete, "finished": None, "voxel_size": [0.05, 0.004, 0.004]}
    if record != "before bounds":
        attrs["bounds"] = {"coverage": 0.9, "scale": 3.0, "settings": "same"}
    if record == "rough":
        attrs["bounds_rough"] = {"planes": [0], "note": "widened 1.5x for a noisier input"}
    values = {"mean": 100.0, "uncertainty": 2.0, "lower": 94.0, "upper": 106.0}
    partial = "" if complete else ".partial"
    group = zarr.open_group(str(tmp_path / f"o{partial}.zarr"), mode="w")
    group.attrs.update({CREATED_BY: SOFTWARE, **attrs})
    files = []
    for name, value in values.items():
        data = np.full((2, 8, 8), value, np.float32)
        group.create_array(name, data=data, chunks=(1, 8, 8))
        role = {"mean": None, "uncertainty": "uncertainty"}.get(name, f"{name} bound")
        files.append(write_tiff(tmp_path / f"o{PARTS[name]}{partial}.tif", data, attrs["voxel_size"], provenance={**attrs, **({"role": role} if role else {})}))
    store, tiffs = _layers([group.store.root]), _layers(files)
    _assert_same(tiffs, store)
    stem = "o" if complete else "o (partial)"
    error = {"calibrated": "error bound (90 %)", "rough": "rough error bound", "before bounds": "error map"}[record]
    assert f"{stem}: {error} [grey values]" in tiffs
    np.testing.assert_array_equal(tiffs[f"{stem}: {error} [grey values]"][0], 2.0 if record == "before bounds" else 6.0)
    assert (f"{stem}: rough lower bound" in tiffs) == (record == "rough")


RESULT = {"complete": True, "finished": [[0, 8], [0, 8]], "voxel_size": [1.0, 1.0], "model": "m", "settings": {"steps": 1}, "input": ["in.tif"]}


@pytest.mark.parametrize(
    "record",
    [{"role": 3}, {"role": ["x"]}, {"role": "uncertainty", "bounds": "90%"}, {"role": "uncertainty", "bounds": {"coverage": 0.9}}, {"role": "lower bound", "bounds": {"scale": 2.0}}],
    ids=["role int", "role list", "bounds text", "bounds without scale", "bounds without coverage"],
)
def test_a_tiff_result_with_a_malformed_record_opens_as_a_plain_image(tmp_path, caplog, record):
    """It raised (AttributeError, TypeError, KeyError) in napari: the file could not be opened."""
    path = write_tiff(tmp_path / "o_part.tif", np.full((8, 8), 2.0, np.float32), (1.0, 1.0), provenance={**RESULT, **record})
    ((data, kw, _),) = read_paths(str(path))
    assert kw["name"] == "o_part" and "metadata" not in kw and "colormap" not in kw
    np.testing.assert_array_equal(np.asarray(data), 2.0)
    (said,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert str(path) in said and "unreadable" in said and "\n" not in said


def test_a_store_with_a_malformed_record_opens_as_plain_images(tmp_path, caplog):
    import zarr

    from napari_emdiffuse.data.safe_output import CREATED_BY, SOFTWARE

    group = zarr.open_group(str(tmp_path / "o.zarr"), mode="w")
    group.attrs.update({CREATED_BY: SOFTWARE, **RESULT, "bounds": {"coverage": 0.9}})
    for name in ("mean", "uncertainty"):
        group.create_array(name, data=np.full((8, 8), 2.0, np.float32))
    layers = _layers([tmp_path / "o.zarr"])
    assert set(layers) == {"o mean", "o uncertainty"} and not any("metadata" in kw for _, kw in layers.values())
    (said,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert str(tmp_path / "o.zarr") in said and "unreadable" in said


@pytest.mark.parametrize("sampling", ["12", "0.5", {"y": 0.5}])
def test_a_sampling_that_is_no_list_of_numbers_is_unreadable(tmp_path, caplog, sampling):
    """A string of digits was read digit by digit: "12" placed the result at 1 and 2 pixels."""
    path = write_tiff(tmp_path / "o.tif", np.zeros((8, 8), np.float32), (1.0, 1.0), provenance={**RESULT, "sampling": sampling})
    ((_, kw, _),) = read_paths(str(path))
    assert kw["name"] == "o: estimate" and "scale" not in kw
    assert any(str(path) in r.getMessage() and "sampling" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


@pytest.mark.parametrize("suffix", [".btf", ".tiff", ".ome.tif"])
def test_a_tiff_result_under_any_tiff_suffix_the_reader_takes_reopens(tmp_path, suffix):
    """A result renamed to .btf (a suffix the reader claims) failed with "cannot write results as '.btf'"."""
    write_tiff(tmp_path / "o.tif", np.zeros((8, 8), np.float32), (1.0, 1.0), provenance={**RESULT, "role": "uncertainty"})
    (tmp_path / "o.tif").rename(tmp_path / f"o_uncertainty{suffix}")
    assert set(_layers([tmp_path / f"o_uncertainty{suffix}"])) == {"o: error map [grey values]"}


def test_a_result_asked_for_as_ome_tif_is_an_ome_tiff_and_reopens_as_the_imagej_one(small_stack, tmp_path, random_model, fast):
    """predict --output OUT.ome.tif wrote an ImageJ TIFF under that name, without OME-XML: tools that
    choose their reader by the name (Bio-Formats, OMERO, QuPath) found none (a user's walk)."""
    import tifffile

    from napari_emdiffuse.jobs.predict import run_predict

    model, image = random_model("tiny"), small_stack[:2]
    for name in ("o.tif", "o.ome.tif"):
        run_predict(model, image, sample=fast, output=tmp_path / name, voxel=(0.05, 0.004, 0.004), origin=(0.1, 0.2, 0.3))
    with tifffile.TiffFile(tmp_path / "o.ome.tif") as tf:
        assert tf.is_ome and not tf.is_imagej
    (imagej, kw), (ome, kw_ome) = (next(iter(_layers([tmp_path / n]).values())) for n in ("o.tif", "o.ome.tif"))
    np.testing.assert_array_equal(imagej, ome)
    assert kw["scale"] == pytest.approx(kw_ome["scale"]) and kw["translate"] == pytest.approx(kw_ome["translate"]) == (0.1, 0.2, 0.3)


def test_a_dotted_name_is_kept_whole_by_tiff_and_store_alike(tmp_path):
    """``my.run.tif`` reopened as ``my.run: estimate``, ``my.run.zarr`` as ``my: estimate``."""
    import zarr

    from napari_emdiffuse.data.safe_output import CREATED_BY, SOFTWARE

    write_tiff(tmp_path / "my.run.tif", np.zeros((8, 8), np.float32), (1.0, 1.0), provenance=RESULT)
    group = zarr.open_group(str(tmp_path / "my.run.zarr"), mode="w")
    group.attrs.update({CREATED_BY: SOFTWARE, **RESULT})
    group.create_array("mean", data=np.zeros((8, 8), np.float32))
    assert set(_layers([tmp_path / "my.run.tif"])) == set(_layers([tmp_path / "my.run.zarr"])) == {"my.run: estimate"}
    write_tiff(tmp_path / "plain.v2.tif", np.zeros((8, 8), np.float32), (1.0, 1.0))
    assert set(_layers([tmp_path / "plain.v2.tif"])) == {"plain.v2"}  # any file: its name less its format's suffix
    from napari_emdiffuse._widgets.enhance import default_file_output

    assert default_file_output(tmp_path / "my.run.tif") == tmp_path / "my.run_enhanced.zarr"  # Enhance from the file names alike


@pytest.mark.parametrize("partial", ["", ".partial"])
def test_a_part_that_records_no_role_is_known_by_its_name_beside_its_estimate(tmp_path, partial):
    """An error map without ``role`` reopened as ``OUT: estimate``, grey, marked as the result.
    Its name says what it is where the estimate of the same run lies beside it; an estimate
    whose own name ends so (``cells_lower.tif``) stays the estimate."""
    record = {**RESULT, "complete": not partial}
    data = np.ones((8, 8), np.float32)
    for tail in ("", "_uncertainty", "_lower", "_sample2"):
        write_tiff(tmp_path / f"o{tail}{partial}.tif", data, (1.0, 1.0), provenance=record)
    layers = {kw["name"]: kw["metadata"]["emdiffuse"]["role"] for _, kw, _ in read_paths([str(tmp_path / f"o{t}{partial}.tif") for t in ("", "_uncertainty", "_lower", "_sample2")])}
    stem = "o (partial)" if partial else "o"
    assert layers == {f"{stem}: estimate": "enhanced", f"{stem}: error map [grey values]": "uncertainty", f"{stem}: lower bound": "bounds", f"{stem}: sample 2": "samples"}
    write_tiff(tmp_path / "cells_lower.tif", data, (1.0, 1.0), provenance=RESULT)
    write_tiff(tmp_path / "other_lower.tif", data, (1.0, 1.0), provenance=RESULT)
    write_tiff(tmp_path / "other.tif", data, (1.0, 1.0), provenance={**RESULT, "model": "another"})  # not of the same run
    assert set(_layers([tmp_path / "cells_lower.tif", tmp_path / "other_lower.tif"])) == {"cells_lower: estimate", "other_lower: estimate"}


@pytest.mark.parametrize("partial", ["", ".partial"])
def test_an_estimate_named_like_a_zero_padded_sample_stays_the_estimate(tmp_path, partial):
    """``scan_sample03.tif``, an estimate: predict writes ``_sample3``, never ``_sample03``, so
    its name is no sample's tail, and the estimate "beside it" was the file itself, of the same
    run as itself: it reopened as "scan_sample03: sample 3" (review s16 N6). A part is never
    matched with itself; a real ``_sample3`` beside its estimate is still known."""
    record = {**RESULT, "complete": not partial}
    data = np.ones((8, 8), np.float32)
    stem = "scan_sample03 (partial)" if partial else "scan_sample03"
    for name in ("scan_sample03", "scan_sample003"):
        write_tiff(tmp_path / f"{name}{partial}.tif", data, (1.0, 1.0), provenance=record)
    assert set(_layers([tmp_path / f"{n}{partial}.tif" for n in ("scan_sample03", "scan_sample003")])) == {
        f"{stem}: estimate",
        stem.replace("03", "003") + ": estimate",
    }
    write_tiff(tmp_path / f"scan_sample03_sample3{partial}.tif", data, (1.0, 1.0), provenance=record)
    assert set(_layers([tmp_path / f"scan_sample03_sample3{partial}.tif"])) == {f"{stem}: sample 3"}
    # a zero-padded tail beside an estimate of the same run is not predict's either
    write_tiff(tmp_path / f"scan{partial}.tif", data, (1.0, 1.0), provenance=record)
    assert set(_layers([tmp_path / f"scan_sample03{partial}.tif"])) == {f"{stem}: estimate"}
