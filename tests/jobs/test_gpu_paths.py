"""The CUDA paths (channels last, bf16 autocast, TF32), run wherever a GPU is lent:
``benchmarks/gpu_check.sh`` runs these first. They skip on machines without CUDA."""

import numpy as np
import pytest
import torch

from napari_emdiffuse.config import SampleConfig, load_preset
from napari_emdiffuse.jobs.predict import run_predict
from napari_emdiffuse.jobs.train import train
from napari_emdiffuse.metrics import psnr
from napari_emdiffuse.model_file import Model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

FAST = SampleConfig(sampler="dpmpp_2m", steps=3, samples=2, tile_size=64, overlap=16, tile_batch=8, seed=0)


def test_cuda_predict_matches_the_cpu(tiny_model_dir, isbi_pair, monkeypatch):
    """float32 on the GPU (channels last, TF32 convolutions) gives the CPU's result; bf16 stays close."""
    img = isbi_pair[0][0, :96, :80].copy()
    cpu = run_predict(Model.load(tiny_model_dir), img, sample=FAST, device="cpu").mean
    monkeypatch.setenv("EMDIFFUSE_BF16", "0")
    fp32 = run_predict(Model.load(tiny_model_dir), img, sample=FAST, device="cuda").mean
    monkeypatch.delenv("EMDIFFUSE_BF16")
    bf16 = run_predict(Model.load(tiny_model_dir), img, sample=FAST, device="cuda").mean
    span = float(np.ptp(cpu))
    assert psnr(fp32, cpu, data_range=span) > 40
    assert psnr(bf16, cpu, data_range=span) > 30


def test_cuda_training_runs_and_saves(tmp_path, isbi_pair):
    noisy, clean = isbi_pair
    preset = load_preset("tiny", {"train": {"iterations": 4, "val_every": 2, "checkpoint_every": 2}})
    events = list(train(preset, {"input": noisy[:4], "target": clean[:4]}, tmp_path / "run", device="cuda"))
    assert events[-1].steps == 4 and Model.load(tmp_path / "run").info.training["device"].startswith("cuda")
