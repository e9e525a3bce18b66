"""Helpers for the block-wise prediction tests: untrained tiny models (deterministic and quick,
all that bit-identity and bookkeeping need) and a store's results as numpy."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import tifffile
import torch

from napari_emdiffuse.config import SampleConfig, load_preset
from napari_emdiffuse.jobs import blocks as blocks_module
from napari_emdiffuse.model_file import Model, ModelInfo, build_network
from napari_emdiffuse.variants import base, complete, get_variant


@pytest.fixture(scope="session")
def fast() -> SampleConfig:
    return SampleConfig(sampler="dpmpp_2m", steps=2, samples=2, tile_size=32, overlap=8, tile_batch=4, seed=5)


@pytest.fixture(scope="session")
def random_model(fast) -> Callable[..., Model]:
    """``random_model(preset, options)``: an untrained network of that preset, its options written
    out as a trained model's are (so that it can be saved)."""

    def make(preset: str, options: dict | None = None) -> Model:
        p = complete(load_preset(preset, {"variant_options": options or {}, "sample": fast.model_dump()}))
        v = get_variant(p.variant)
        oc, cc = v.channels(v.options(p.variant_options))
        torch.manual_seed(0)
        return Model(p, ModelInfo(out_channels=oc, cond_channels=cc), network=build_network(p.network, oc, cc))

    return make


@pytest.fixture
def calibrated_model(random_model, fast) -> Model:
    """A "tiny" random model calibrated at alpha 0.1 for ``fast``'s sampling settings (scale
    1 + i at the i-th level of :data:`..uncertainty.ALPHAS`): its runs write lower/upper."""
    from napari_emdiffuse import uncertainty

    model = random_model("tiny")
    model.info.metrics["calibration"] = {
        "alpha": 0.1, "alphas": list(uncertainty.ALPHAS), "q": [1.0 + i for i in range(len(uncertainty.ALPHAS))],
        "samples": fast.samples, "steps": fast.steps, "sampler": fast.sampler,
    }
    return model


@pytest.fixture
def predict_cli(small_stack, tmp_path) -> Callable[[Model], list[str]]:
    """``predict_cli(model)``: the ``emdiffuse predict`` arguments (without ``--output``) for
    ``model``, saved, on ``small_stack`` written as a TIFF, on the CPU."""

    def args(model: Model) -> list[str]:
        model.save(tmp_path / "m")
        tifffile.imwrite(tmp_path / "in.tif", small_stack)
        return ["predict", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "in.tif"), "--device", "cpu"]

    return args


@pytest.fixture
def cli_args(predict_cli, random_model) -> list[str]:
    """Quiet ``emdiffuse predict`` arguments for an untrained "tiny" model (see :func:`predict_cli`)."""
    return [*predict_cli(random_model("tiny")), "-q"]


@pytest.fixture(scope="session")
def store_results() -> Callable[[Path], dict[str, np.ndarray]]:
    """The images of a prediction store (``mean``, ``uncertainty``, ``samples``) as numpy."""
    import zarr

    def read(path: Path) -> dict[str, np.ndarray]:
        group = zarr.open_group(str(path), mode="r")
        return {name: np.asarray(group[f"{name}/0"]) for name in ("mean", "uncertainty", "samples") if name in group}

    return read


@pytest.fixture(scope="session")
def small_stack(isbi_path) -> np.ndarray:
    """Four ssTEM slices of 48 x 56 px: several blocks, each several tiles."""
    return tifffile.imread(isbi_path, key=range(4))[:, 100:148, 100:156]


@pytest.fixture
def lively(random_model):
    """``lively(preset, options)``: an untrained network whose output layers are not zero, so its
    estimate and samples depend on every tile (a zero-initialised one returns its baseline)."""

    def make(preset: str, options: dict | None = None):
        model = random_model(preset, options)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.network.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        return model

    return make


@pytest.fixture
def small_blocks(monkeypatch) -> None:
    """Planes above 40 px cut into blocks of about 40 px, on multiples of 8 px."""
    monkeypatch.setattr(base, "BLOCK_PX", 40)
    monkeypatch.setattr(base, "CHUNK_PX", 8)


@pytest.fixture(scope="session")
def plane(isbi_path) -> np.ndarray:
    """One ssTEM slice of 97 x 111 px (odd sizes, 4 x 5 tiles of 32 px): several plane blocks with :func:`small_blocks`."""
    return tifffile.imread(isbi_path, key=0)[60:157, 40:151]


class Recording:
    """A lazy input that records every index it is read with."""

    def __init__(self, a: np.ndarray) -> None:
        self.a, self.shape, self.dtype, self.ndim = a, a.shape, a.dtype, a.ndim
        self.keys: list[Any] = []

    def __getitem__(self, key: Any) -> np.ndarray:
        self.keys.append(key)
        return self.a[key]


@pytest.fixture
def recorded() -> Callable[[np.ndarray], Recording]:
    """Wraps an array as a lazy input that records the indices it is read with."""
    return Recording


@pytest.fixture
def ran_blocks(monkeypatch) -> list[int]:
    """The indices of the blocks ``BlockRunner.run`` computes during the test, in order."""
    ran: list[int] = []
    original = blocks_module.BlockRunner.run

    def counting(self, image, block, *args, **kwargs):
        out = original(self, image, block, *args, **kwargs)
        ran.append(block.index)
        return out

    monkeypatch.setattr(blocks_module.BlockRunner, "run", counting)
    return ran


@pytest.fixture
def cancelled_early(fast) -> Callable[..., Path]:
    """``cancelled_early(model, image, output, blocks=1, **options)``: a prediction into ``output``
    (with ``options``: ``resume=True``) cancelled as soon as it has finished ``blocks`` blocks (a
    run stopped before its first leaves nothing); returns the partial store it leaves (asserted
    to be there)."""
    from unittest import mock

    from napari_emdiffuse.jobs.events import new_cancel_token
    from napari_emdiffuse.jobs.predict import predict
    from napari_emdiffuse.jobs.predict_output import PredictionOutput

    def run(model: Model, image: np.ndarray, output: Path, blocks: int = 1, **options: Any) -> Path:
        token, mark, marked = new_cancel_token(), PredictionOutput.mark_done, []

        def mark_done(self: PredictionOutput, block: Any) -> None:
            mark(self, block)
            marked.append(block)
            if len(marked) == blocks:
                token.set()

        with mock.patch.object(PredictionOutput, "mark_done", mark_done):
            for _ in predict(model, image, sample=fast, output=output, cancel=token, **options):
                pass
        partial = output.with_name(f"{output.stem}.partial.zarr")
        assert partial.is_dir()
        return partial

    return run
