"""The resume key's hash of the input: the whole content, read in bounded pieces, independent of
how the input is chunked; an edit anywhere refuses a resume."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_emdiffuse.errors import InputError
from napari_emdiffuse.jobs import predict as predict_module
from napari_emdiffuse.jobs.predict import input_digest, run_predict


@pytest.fixture(scope="module")
def volume(isbi_path) -> np.ndarray:
    """Ten ssTEM slices of 160 x 160 px: more planes than the old digest sampled (8) and planes
    wider than its central square (128 px)."""
    import tifffile

    return tifffile.imread(isbi_path, key=range(10))[:, 200:360, 200:360]


def corner_edited(volume: np.ndarray, z: int) -> np.ndarray:
    """``volume`` with the 4 x 4 px top-left corner of plane ``z`` mirrored: the same pixel values
    (so the same intensity statistics), in other places."""
    edited = volume.copy()
    edited[z, :4, :4] = volume[z, :4, :4][::-1, ::-1]
    assert not np.array_equal(edited, volume)
    return edited


def test_resume_refuses_an_input_changed_only_in_a_corner_of_an_unsampled_plane(volume, tmp_path, random_model, fast, cancelled_early):
    """Plane 2 of 10 lies between the planes the old digest sampled (0, 1, 3, ...) and its corner
    outside their central squares: a store begun on the first input must not be finished on the second."""
    model = random_model("tiny")
    partial = cancelled_early(model, volume, tmp_path / "o.zarr")
    before = sorted(p.name for p in partial.rglob("*"))
    with pytest.raises(InputError, match=r"cannot resume: this run has another input \(its content differs"):
        run_predict(model, corner_edited(volume, 2), sample=fast, output=tmp_path / "o.zarr", resume=True)
    assert sorted(p.name for p in partial.rglob("*")) == before  # untouched


def test_a_store_of_the_sampling_digest_is_refused_with_the_reason(volume, tmp_path, random_model, fast, cancelled_early):
    """A store whose key holds a bare hash (an older version's, of central squares only) cannot
    tell whether this input is the one it was begun on: refused, saying so, not as "another input"."""
    model, small = random_model("tiny"), volume[:2, :48, :48]
    partial = cancelled_early(model, small, tmp_path / "o.zarr")
    group = zarr.open_group(str(partial), mode="r+")
    key = dict(group.attrs["resume_key"])
    assert key["input_content"].startswith(predict_module.DIGEST_SCHEME + ":")
    group.attrs["resume_key"] = {**key, "input_content": "0" * 64}
    with pytest.raises(InputError, match=r"made by a version of napari-emdiffuse that hashed only samples of its input's content, so it cannot be resumed safely; use --overwrite"):
        run_predict(model, small, sample=fast, output=tmp_path / "o.zarr", resume=True)
    group.attrs["resume_key"] = {k: v for k, v in key.items() if k != "input_content"}
    with pytest.raises(InputError, match="that did not record its input's content"):
        run_predict(model, small, sample=fast, output=tmp_path / "o.zarr", resume=True)
    group.attrs["resume_key"] = key  # its own key again: it resumes
    assert run_predict(model, small, sample=fast, output=tmp_path / "o.zarr", resume=True).complete


class Reads:
    """A lazy input that records how many bytes each read returns."""

    def __init__(self, a) -> None:
        self.a, self.shape, self.dtype, self.ndim = a, a.shape, a.dtype, a.ndim
        self.chunks = getattr(a, "chunks", None)
        self.sizes: list[int] = []

    def __getitem__(self, key):
        out = np.asarray(self.a[key])
        self.sizes.append(out.nbytes)
        return out


def test_the_digest_covers_every_pixel_in_bounded_reads_whatever_the_chunking(volume, tmp_path, monkeypatch):
    import dask.array as da

    monkeypatch.setattr(predict_module, "DIGEST_READ_BYTES", 8 * 160)  # a few rows at a time
    want = input_digest(volume)
    for z, y, x in [(0, 0, 0), (2, 0, 159), (9, 159, 0), (5, 80, 80)]:  # a pixel anywhere changes it
        edited = volume.copy()
        edited[z, y, x] ^= 1
        assert input_digest(edited) != want
    assert input_digest(volume.astype(np.uint16)) != want  # the dtype counts
    cubes = zarr.create_array(str(tmp_path / "c.zarr"), shape=volume.shape, dtype=volume.dtype, chunks=(4, 32, 64))
    cubes[:] = volume
    for lazy, largest in [
        (volume, 8 * 160),
        (da.from_array(volume, chunks=(3, 50, 160)), 3 * 50 * 160),  # one chunk deep, whole chunks high
        (cubes, 4 * 32 * 160),
    ]:
        reads = Reads(lazy)
        assert input_digest(reads) == want
        assert sum(reads.sizes) == volume.nbytes and max(reads.sizes) <= largest
    assert input_digest(volume[3]) != input_digest(volume[4])  # 2D


def test_a_cancel_while_hashing_writes_nothing(volume, tmp_path, random_model, fast, monkeypatch):
    """The digest reads the whole input before the first block: a cancel then stops it, and
    nothing is written (no store, no partial store)."""
    from napari_emdiffuse.jobs.events import Message, PredictResult, new_cancel_token
    from napari_emdiffuse.jobs.predict import predict

    monkeypatch.setattr(predict_module, "DIGEST_READ_BYTES", 160)
    token = new_cancel_token()
    token.set()  # nothing before the digest looks at it: the digest's first piece does
    events = list(predict(random_model("tiny"), volume, sample=fast, output=tmp_path / "o.zarr", cancel=token))
    result = events[-1]
    assert isinstance(result, PredictResult) and not result.complete and result.finished is None and result.written == ()
    assert any(isinstance(e, Message) and "cancelled while reading the input" in e.text for e in events)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
