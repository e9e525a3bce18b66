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
