import logging

import pytest
import torch

from napari_emdiffuse.engine import device as device_mod
from napari_emdiffuse.engine.device import autocast, available_devices, prepare_network, select_device, uses_bf16
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
    for name in ("tpu9", "xpu", "hpu", "meta"):  # torch knows the last three; this tool does not run on them
        with pytest.raises(DeviceError, match="unknown device"):
            select_device(name)


def test_autocast_is_a_no_op_for_cpu_training():
    cpu = torch.device("cpu")
    with autocast(cpu):
        assert torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.float32


@pytest.mark.parametrize("native", [False, True])
def test_cpu_bf16_for_inference_follows_the_hardware(monkeypatch, native):
    """bf16 inference only where the CPU multiplies bf16 natively (emulated it is ~10x slower)."""
    monkeypatch.delenv("EMDIFFUSE_BF16", raising=False)
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert uses_bf16(cpu, inference=True) is native and uses_bf16(cpu) is False
    with torch.inference_mode(), autocast(cpu, inference=True):
        y = torch.nn.Conv2d(1, 1, 3)(torch.ones(1, 1, 8, 8))
    assert y.dtype == (torch.bfloat16 if native else torch.float32)


def test_cpu_bf16_environment_override(monkeypatch):
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv("EMDIFFUSE_BF16", "0")
    assert not uses_bf16(torch.device("cpu"), inference=True)
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setenv("EMDIFFUSE_BF16", "1")
    assert uses_bf16(torch.device("cpu"), inference=True)


def test_native_bf16_detection_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(device_mod, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not device_mod.cpu_has_native_bf16()  # AVX-512 without its BF16 extension emulates bf16
    monkeypatch.setattr(device_mod, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert device_mod.cpu_has_native_bf16()


def test_prepare_network_puts_convolutions_channels_last_on_cpu():
    net = prepare_network(torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3)), torch.device("cpu"))
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_autocast_on_cuda():
    dev = select_device("cuda")
    with autocast(dev):
        y = torch.nn.Conv2d(1, 1, 3).to(dev)(torch.ones(1, 1, 8, 8, device=dev))
    assert y.dtype == torch.bfloat16


def test_prepare_network_compiles_only_when_asked(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda net, **kw: compiled.append(net) or net)
    net = torch.nn.Conv2d(1, 1, 3)
    prepare_network(net, torch.device("cpu"))
    assert compiled == []
    assert prepare_network(net, torch.device("cpu"), compile=True) is net and compiled == [net]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_requested_gpu_that_gives_way_to_the_cpu_is_said_where_the_widgets_show_it(tmp_path):
    """The widgets show a job's messages, not the log: a training or prediction asked for a GPU
    that is not usable says so, with the reason, as its first message."""
    import numpy as np

    from napari_emdiffuse.config import load_preset
    from napari_emdiffuse.jobs.events import Message
    from napari_emdiffuse.jobs.train import train

    assert device_mod.fallback_note("auto", torch.device("cpu")) is None
    assert device_mod.fallback_note("cpu", torch.device("cpu")) is None
    note = device_mod.fallback_note("cuda", torch.device("cpu"))
    assert "CUDA is not available" in note and note.endswith("running on the CPU (slower)")
    image = np.zeros((64, 64), np.float32)
    first = next(iter(train(load_preset("tiny"), {"input": image, "target": image}, tmp_path / "run", device="cuda")))
    assert isinstance(first, Message) and first.level == "warning" and first.text == note
