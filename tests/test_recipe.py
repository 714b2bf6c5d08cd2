"""The config `diffgen train` chooses without --config: sized by the folder, shaped for the machine."""

from __future__ import annotations

import pytest

from diffgen.config import Config, config_to_toml, load_config
from diffgen.training.recipe import auto_config, folder_config, image_size_for

from .helpers import cli


@pytest.mark.parametrize(("sizes", "expected"), [
    ([(32, 32)] * 5, 32),
    ([(8, 8), (12, 12), (100, 100)], 16),  # the median decides, and nothing is made smaller than 16 px
    ([(640, 480), (500, 375), (48, 48)], 64),  # photos train at 64 px at most
    ([(40, 90)] * 3, 32),  # the shorter side
    ([], Config().image_size),
])
def test_the_image_size_comes_from_the_folder(sizes, expected):
    assert image_size_for(sizes) == expected


@pytest.mark.parametrize("side", [16, 32, 64])
@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_every_chosen_config_is_a_valid_model_with_a_16_token_image_tower(side, device_type):
    cfg = auto_config([(side, side)], device_type)  # Config() validates it
    assert cfg.image_size == side
    assert (side // cfg.text.vision_patch_size) ** 2 == 16
    assert side // 2 ** (len(cfg.unet.channel_mult) - 1) in (4, 8)  # the lowest level at 8 px (4 px at 16)


def test_a_cpu_gets_the_narrow_unet_and_a_gpu_the_built_in_one():
    cpu, gpu = auto_config([(32, 32)], "cpu"), auto_config([(32, 32)], "cuda")
    assert cpu.unet.num_res_blocks == 1 and cpu.unet.attention_resolutions == (8,)
    assert cpu.unet.base_channels < gpu.unet.base_channels and cpu.train.lr > gpu.train.lr
    assert gpu.unet == Config().unet


def test_a_resumed_run_keeps_its_own_config(tmp_path, shared_shapes):
    own = Config(image_size=16)
    (tmp_path / "config.toml").write_text(config_to_toml(own))
    cfg, how = folder_config(shared_shapes, tmp_path, resume=True, device_type="cpu")
    assert cfg == load_config(tmp_path / "config.toml") and "the run's own" in how
    fresh, how = folder_config(shared_shapes, tmp_path / "new", resume=False, device_type="cpu")
    assert fresh == auto_config([(16, 16)], "cpu") and how.startswith("config: chosen for this folder and CPU: 16 px")


def test_train_without_a_config_says_what_it_chose(shared_shapes, tmp_path):
    result = cli("train", str(shared_shapes), "-o", str(tmp_path / "run"), "--plan", "--device", "cpu",
                 "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "config: chosen for this folder and CPU: 16 px" in result.output
    assert "model: U-Net 0.82 M parameters" in result.output  # the narrow U-Net at 16 px
