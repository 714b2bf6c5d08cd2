"""Device and arithmetic choice: bf16 where the hardware computes it natively, float32 elsewhere."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from diffgen import devices, threads
from diffgen.config import Config, TrainConfig
from diffgen.errors import ConfigError, InputError


@pytest.mark.parametrize("precision, device, native, expected", [
    ("auto", "cuda", False, True),
    ("auto", "cpu", True, True),
    ("auto", "cpu", False, False),
    ("auto", "mps", True, False),
    ("float32", "cuda", True, False),
    ("float32", "cpu", True, False),
    ("bfloat16", "cpu", False, True),
])
def test_bf16_is_used_where_it_is_native_or_asked_for(monkeypatch, precision, device, native, expected):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    assert devices.uses_bf16(torch.device(device), precision) is expected


def test_cpu_autocast_computes_matrix_products_in_bf16(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    a = torch.randn(4, 4)
    with devices.autocast(torch.device("cpu"), "auto"):
        assert (a @ a).dtype == torch.bfloat16
    with devices.autocast(torch.device("cpu"), "float32"):
        assert (a @ a).dtype == torch.float32


def test_cpu_flags_are_read_from_cpuinfo(monkeypatch, tmp_path):
    devices.cpu_has_native_bf16.cache_clear()
    real = devices.Path
    try:
        for flags, expected in (("fpu avx2 avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True),
                                ("fpu avx2 avx512f", False)):
            info = tmp_path / "cpuinfo"
            info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
            monkeypatch.setattr(devices, "Path", lambda _p, info=info: real(info))
            devices.cpu_has_native_bf16.cache_clear()
            assert devices.cpu_has_native_bf16() is expected
    finally:
        monkeypatch.undo()
        devices.cpu_has_native_bf16.cache_clear()


def test_config_refuses_an_unknown_precision():
    with pytest.raises(ConfigError, match="train.precision"):
        Config(train=dataclasses.replace(TrainConfig(), precision="fp16"))


def test_threads_come_from_the_option_or_the_environment(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("DIFFGEN_THREADS", "1")
        assert threads.apply_threads(None) == 1 and torch.get_num_threads() == 1
        assert threads.apply_threads(2) == 2 and torch.get_num_threads() == 2  # the option wins
        monkeypatch.setenv("DIFFGEN_THREADS", "many")
        with pytest.raises(InputError, match="DIFFGEN_THREADS"):
            threads.apply_threads(None)
        with pytest.raises(InputError, match="at least 1"):
            threads.apply_threads(0)
    finally:
        torch.set_num_threads(before)
