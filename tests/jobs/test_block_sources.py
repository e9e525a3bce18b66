"""Each block declares the part of the input it needs (``Block.source``) and the runner reads
exactly that, once: a worker reads only its block's slices or rows, and the result is the
same as from the whole input in memory."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from napari_emdiffuse.data.normalise import fit_normaliser
from napari_emdiffuse.jobs.predict import run_predict
from napari_emdiffuse.jobs.blocks import BlockRunner
from napari_emdiffuse.variants import iso_a, model_options


@pytest.mark.parametrize(
    "preset, options, crop, context",
    [
        ("tiny", {}, np.s_[:3], None),
        ("tiny", {}, np.s_[0], None),
        ("emdiffuse-r-tiny", {"factor": 2}, np.s_[:2, :24, :28], None),
        ("vemdiffuse-i-tiny", {"factor": 2}, np.s_[:], lambda g, n: (max(g - 1, 0), min(g + 3, n))),
        ("vemdiffuse-i-tiny", {"factor": 2, "emdiffuse_original": True}, np.s_[:], lambda g, n: (g, g + 2)),
        ("vemdiffuse-a-tiny", {"factor": 2}, np.s_[:], None),
    ],
)
def test_each_block_reads_only_its_declared_source_and_results_are_unchanged(small_stack, monkeypatch, preset, options, crop, context, random_model, fast, recorded):
    monkeypatch.setattr(iso_a, "BUFFER_BYTES", 30_000)  # several row blocks for vEMDiffuse-a
    monkeypatch.setattr(iso_a, "VIEWS_BUFFER_BYTES", 30_000)
    model = random_model(preset, options)
    image = np.ascontiguousarray(small_stack[crop])
    norm = fit_normaliser(image)
    lazy = recorded(image)
    res = run_predict(model, lazy, sample=fast, normaliser=norm, keep_samples=True)
    ref = run_predict(model, image, sample=fast, normaliser=norm, keep_samples=True)
    blocks = BlockRunner(model, model_options(model), fast, norm, torch.device("cpu"), keep_samples=True).blocks(image.shape)
    assert len(blocks) > 1 or image.ndim == 2
    assert lazy.keys == [b.source for b in blocks]  # one read per block, of its source only
    for b in blocks:
        if context is not None:  # the vEM gaps read their neighbouring slices, not the volume
            assert (b.source[0].start, b.source[0].stop) == context(b.index, image.shape[0])
        elif preset == "vemdiffuse-a-tiny":  # rows of every slice: the block's, and those its yz tiles span
            rows, read = b.region[1], b.source[1]
            assert read.start <= rows.start < rows.stop <= read.stop and b.source[0] == slice(0, image.shape[0])
    for name in ("mean", "std", "samples"):
        np.testing.assert_array_equal(getattr(res, name), getattr(ref, name))
