import logging

import pytest
import torch

from napari_emdiffuse.engine.device import autocast, available_devices, select_device
from napari_emdiffuse.errors import DeviceError


def test_cpu_and_auto():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in ("cpu", "cuda", "mps")
    assert available_devices()[0] == "auto" and available_devices()[-1] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_gpu_falls_back_with_a_message(caplog):
    with caplog.at_level(logging.WARNING):
        assert select_device("cuda").type == "cpu"
    assert "CUDA is not available" in caplog.text and "CPU instead" in caplog.text
    with pytest.raises(DeviceError, match="CUDA is not available"):
        select_device("cuda:0", strict=True)


def test_unknown_device_name():
    with pytest.raises(DeviceError, match="unknown device"):
        select_device("tpu9")


def test_autocast_is_a_no_op_on_cpu():
    with autocast(torch.device("cpu")):
        assert torch.ones(2).dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_autocast_on_cuda():
    dev = select_device("cuda")
    with autocast(dev):
        y = torch.nn.Conv2d(1, 1, 3).to(dev)(torch.ones(1, 1, 8, 8, device=dev))
    assert y.dtype == torch.bfloat16
