"""`diffgen train`: it learns, resumes exactly after SIGKILL, runs DDP on two CPU processes, and
refuses bad input with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffgen.checkpoint import load_model
from diffgen.engine.denoiser import Conditioning
from diffgen.state import load_latest_state, state_files

from .helpers import (
    TRAIN_CONFIG,
    cli,
    diffusion_metrics,
    free_port,
    kill_when,
    max_difference,
    metrics,
    train_args,
    train_config,
    weights,
)


@pytest.fixture()
def config_file(tmp_path) -> Path:
    path = tmp_path / "train.toml"
    path.write_text(TRAIN_CONFIG)
    return path


def test_a_short_run_lowers_the_loss_and_writes_the_run_folder(trained_run, tmp_path):
    """The session's shared run (conftest.trained_run): 6 CLIP steps, then 40 diffusion steps."""
    summary = json.loads((trained_run.parent / "stdout.txt").read_text().strip().splitlines()[-1])
    rows = metrics(trained_run)
    diffusion = [r["loss"] for r in rows if r["stage"] == "diffusion"]
    assert len(diffusion) == 40 and len([r for r in rows if r["stage"] == "clip"]) == 6
    assert sum(diffusion[-10:]) / 10 < 0.8 * sum(diffusion[:10]) / 10
    assert {"step", "loss", "lr", "images_per_s"} <= rows[-1].keys()
    for name in ("config.toml", "loss.png", "model.safetensors", "summary.json"):
        assert (trained_run / name).exists(), name
    assert list((trained_run / "samples").glob("step-*.png"))
    retrieval = summary["clip_retrieval"]
    assert retrieval["images"] == summary["held_out_images"] == 2 and retrieval["held_out"]
    assert 0 <= retrieval["top1"] <= retrieval["top5"] <= 1 and summary["global_batch_size"] == 8
    sampled = cli("sample", "a red square", "-n", "1", "--steps", "2", "--seed", "0", "-q",
                  "-c", str(trained_run / "model.safetensors"), "-o", str(tmp_path / "img"))
    assert sampled.exit_code == 0, sampled.output


@pytest.mark.slow
@pytest.mark.parametrize("stage, pattern, extra_delay", [
    ("clip", "state-clip-*.json", 0.0), ("diffusion", "state-diffusion-*.json", 0.3)])
def test_sigkill_then_resume_gives_the_same_weights(shared_shapes, shared_config, trained_run, tmp_path, stage,
                                                    pattern, extra_delay):
    """Killed in the CLIP stage or mid-step in the diffusion stage, then resumed: the weights of
    the uninterrupted run (conftest.trained_run, the same data, config and steps)."""
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "diffgen",
                             *train_args(shared_shapes, out, shared_config, steps=40)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, out / "state", pattern, extra_delay)
    state = load_latest_state(out / "state")
    assert state is not None and state.stage == stage
    # whatever survived is complete: each state JSON vouches for tensors whose hash it records
    assert all(p.with_suffix(".safetensors").exists() for p in state_files(out / "state"))
    resumed = cli(*train_args(shared_shapes, out, shared_config, steps=40), "--resume")
    assert resumed.exit_code == 0, resumed.output
    ref, got = weights(trained_run / "model.safetensors"), weights(out / "model.safetensors")
    assert ref.keys() == got.keys()
    assert max_difference(ref, got) < 1e-5
    assert [r["step"] for r in diffusion_metrics(out)] == list(range(1, 41))


@pytest.mark.slow
def test_two_process_ddp_with_gloo(shapes_folder, tmp_path, config_file):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "diffgen",
           *train_args(shapes_folder, out, config_file, steps=8, clip_steps=4)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # only rank 0 prints and writes
    summary = summaries[0]
    assert summary["world_size"] == 2 and summary["ranks_identical"] is True
    assert summary["global_batch_size"] == 2 * 8
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["stage"] == "diffusion"] == list(range(1, 9))
    assert len(state_files(out / "state")) == 2


@pytest.mark.parametrize("case", ["missing", "no_captions", "all_corrupt", "bad_key", "bad_value",
                                  "resume_without_state", "resume_other_config", "existing_run",
                                  "resume_changed_data", "text_encoder_without_tag"])
def test_bad_input_is_one_line_exit_2(case, shapes_folder, tmp_path, config_file):
    data, out, config = shapes_folder, tmp_path / "run", config_file
    extra: list[str] = []
    if case == "missing":
        data = tmp_path / "nope"
    elif case == "no_captions":
        for txt in shapes_folder.glob("*.txt"):
            txt.unlink()
    elif case == "all_corrupt":
        for png in shapes_folder.glob("*.png"):
            png.write_bytes(b"garbage")
    elif case == "bad_key":
        config.write_text(TRAIN_CONFIG + "\n[extra]\nfoo = 1\n")
    elif case == "bad_value":
        config.write_text(TRAIN_CONFIG.replace("\nbatch_size = 8\n", '\nbatch_size = "eight"\n'))
    elif case == "resume_without_state":
        extra = ["--resume"]
    elif case == "text_encoder_without_tag":
        extra = ["--text-encoder", "ViT-B-32"]
    elif case in ("resume_other_config", "existing_run", "resume_changed_data"):
        assert cli(*train_args(data, out, config, steps=4, clip_steps=2)).exit_code == 0
        if case == "resume_changed_data":
            next(data.glob("*.txt")).unlink()
            extra = ["--resume"]
        if case == "resume_other_config":
            config.write_text(train_config(unet={"base_channels": 8}))
            extra = ["--resume"]
    result = cli(*train_args(data, out, config, steps=4, clip_steps=2), *extra)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output


def test_data_check_command(shapes_folder):
    (shapes_folder / "orphan.png").write_bytes((shapes_folder / "img000.png").read_bytes())
    result = cli("data", "check", str(shapes_folder))
    assert result.exit_code == 0
    assert "24 usable image-caption pairs" in result.stdout
    assert "orphan.png: no caption" in result.stdout


def test_time_limit_stops_with_a_saved_resumable_state(shapes_folder, tmp_path, config_file):
    out = tmp_path / "limited"
    # 0.001 minutes have passed before the first diffusion step ends: the run stops after it
    result = cli(*train_args(shapes_folder, out, config_file, steps=40), "--time-limit", "0.001")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 1 and summary["configured_steps"] == 40
    state = load_latest_state(out / "state")
    assert state is not None and (state.stage, state.step) == ("diffusion", 1)
    assert (out / "model.safetensors").exists() and (out / "samples" / "step-00000001.png").exists()
    resumed = cli(*train_args(shapes_folder, out, config_file, steps=5), "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["steps"] == 5
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["stage"] == "diffusion"] == list(range(1, 6))


def test_float16_weights_halve_the_file_and_load_as_float32(shapes_folder, tmp_path, config_file):
    runs = {}
    for dtype in ("float32", "float16"):
        out = tmp_path / dtype
        result = cli(*train_args(shapes_folder, out, config_file, steps=4, clip_steps=2),
                     "--weights-dtype", dtype)
        assert result.exit_code == 0, result.output
        runs[dtype] = out / "model.safetensors"
    assert runs["float16"].stat().st_size < 0.55 * runs["float32"].stat().st_size
    from diffgen.checkpoint import load_model

    full, half = load_model(runs["float32"]), load_model(runs["float16"])
    for (name, a), b in zip(full.state_dict().items(), half.state_dict().values()):
        assert b.dtype == a.dtype, name
        assert torch.equal(a.half().float() if a.is_floating_point() else a, b), name


def test_unknown_weights_dtype_and_bad_time_limit_are_input_errors(shapes_folder, tmp_path, config_file):
    for extra in (["--weights-dtype", "int8"], ["--time-limit", "0"], ["--time-limit", "-1"]):
        result = cli(*train_args(shapes_folder, tmp_path / "x", config_file, steps=2, clip_steps=1), *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert not (tmp_path / "x" / "model.safetensors").exists()


def test_pending_losses_are_read_back_in_batches():
    from diffgen.training.metrics import PendingLosses

    pending = PendingLosses(every=3)
    for step in range(1, 3):
        pending.add(step, 0.1 * step, torch.tensor(float(step)))
        assert not pending.due()
    pending.add(3, 0.3, torch.tensor(3.0))
    assert pending.due()
    assert pending.flush(lambda v: v * 2) == [(1, 0.1, 2.0, {}), (2, 0.2, 4.0, {}), (3, 0.3, 6.0, {})]
    assert pending.flush(lambda v: v) == [] and not pending.due()
    # named parts of a loss come back with it, through the same reduction
    pending.add(4, 0.4, torch.tensor(5.0), {"denoising": torch.tensor(4.0), "contrast": torch.tensor(0.5)})
    assert pending.flush(lambda v: v * 2) == [(4, 0.4, 10.0, {"denoising": 8.0, "contrast": 1.0})]


def test_init_starts_from_a_checkpoint_and_skips_the_clip_stage(shared_shapes, shared_config, trained_run, tmp_path):
    first = trained_run  # 40 steps on shared_shapes with shared_config
    fresh = tmp_path / "fresh"
    assert cli(*train_args(shared_shapes, fresh, shared_config, steps=3, clip_steps=2)).exit_code == 0
    tuned = tmp_path / "tuned"
    result = cli(*train_args(shared_shapes, tuned, shared_config, steps=3, clip_steps=2),
                 "--init", str(first / "model.safetensors"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert "clip_retrieval" not in summary and summary["init"]["path"].endswith("model.safetensors")
    # continued with --resume, the run still names its starting checkpoint and trains no CLIP stage
    resumed = cli(*train_args(shared_shapes, tuned, shared_config, steps=5, clip_steps=2), "--resume")
    assert resumed.exit_code == 0, resumed.output
    again = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert again["init"] == summary["init"] and "clip_retrieval" not in again and again["clip_steps"] == 0
    assert not [r for r in metrics(tuned) if r["stage"] == "clip"]
    base, after, scratch = (weights(run / "model.safetensors") for run in (first, tuned, fresh))
    assert all(torch.equal(after[k], base[k]) for k in base if k.startswith("text_encoder."))

    def unet_distance(a, b):
        return max((a[k] - b[k]).abs().max().item() for k in a if k.startswith("denoiser."))

    # three small steps away from the checkpoint, not a fresh start
    assert unet_distance(after, base) < 0.1 * unet_distance(scratch, base)


def test_init_with_another_model_config_is_an_input_error(shapes_folder, tmp_path, config_file, trained_run):
    first = trained_run
    other = tmp_path / "other.toml"
    other.write_text(train_config(unet={"base_channels": 8}))
    for extra in (["--config", str(other)], ["--resume"], ["--text-encoder", str(first / "model.safetensors")]):
        args = train_args(shapes_folder, tmp_path / "x", config_file, steps=2, clip_steps=1)
        if extra[0] == "--config":
            args[args.index("--config") + 1] = str(other)
            extra = []
        result = cli(*args, "--init", str(first / "model.safetensors"), *extra)
        assert result.exit_code == 2, result.output
        assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1


def test_a_model_differs_in_what_it_computes_not_in_how_it_was_trained():
    """--init and --resume compare models: the training noise distribution is not part of one."""
    import dataclasses

    from diffgen.config import Config
    from diffgen.training.starting_weights import model_differences

    base = Config()

    def denoiser(**changes):
        return dataclasses.replace(base, denoiser=dataclasses.replace(base.denoiser, **changes))

    assert model_differences(denoiser(p_mean=0.4, p_std=1.0), base) == []
    assert model_differences(denoiser(high_noise_share=0.25, high_noise_min_sigma=5.0), base) == []
    assert model_differences(denoiser(sigma_data=0.4), base) == ["denoiser"]


def test_init_at_another_image_size_continues_the_same_layers(shapes_folder, tmp_path, trained_run):
    """The resolution curriculum: train at 8 px, go on at 16 px with attention at the same level."""
    first = trained_run
    bigger, shifted = tmp_path / "bigger.toml", tmp_path / "shifted.toml"
    frozen = {"lr": 1e-12, "ema_decay": 0.0}  # the step moves each weight by about 1e-12
    bigger.write_text(train_config(top={"image_size": 16}, unet={"attention_resolutions": (8,)}, train=frozen))
    shifted.write_text(train_config(top={"image_size": 16}, unet={"attention_resolutions": (16,)}))
    second = tmp_path / "second"
    loud = [a for a in train_args(shapes_folder, second, bigger, steps=1, clip_steps=2) if a != "-q"]
    result = cli(*loud, "--init", str(first / "model.safetensors"))
    assert result.exit_code == 0, result.output
    assert "trained at 8 px; its U-Net continues at 16 px" in result.output
    base, after = (weights(run / "model.safetensors") for run in (first, second))
    assert all(torch.allclose(after[k], base[k], rtol=0, atol=1e-9) for k in base if k.startswith("denoiser."))
    assert all(torch.equal(after[k], base[k]) for k in base
               if k.startswith("text_encoder.") and ".visual." not in k)
    args = train_args(shapes_folder, tmp_path / "third", shifted, steps=1, clip_steps=2)
    result = cli(*args, "--init", str(first / "model.safetensors"))  # attention one level higher: refused
    assert result.exit_code == 2 and "attention at the same levels" in result.output


@pytest.mark.parametrize("growth", [{"position_embedding": True},
                                    {"attention_resolutions": (8, 4), "position_embedding": True},
                                    {"text_mixer_layers": 1}])
def test_init_grows_a_model_that_starts_as_the_checkpoint(shapes_folder, tmp_path, config_file, growth,
                                                        trained_run):
    """Added layers (the position embedding, transformer blocks at another level, the text mixer)
    start as the identity: the grown model denoises exactly as the checkpoint it starts from."""
    first = trained_run
    grown = tmp_path / "grown.toml"
    grown.write_text(train_config(unet=growth, train={"lr": 1e-12, "ema_decay": 0.0}))
    second = tmp_path / "second"
    loud = [a for a in train_args(shapes_folder, second, grown, steps=1, clip_steps=2) if a != "-q"]
    result = cli(*loud, "--init", str(first / "model.safetensors"))
    assert result.exit_code == 0, result.output
    assert "starting as the identity" in result.output
    assert ("the position embedding" in result.output) == ("position_embedding" in growth)
    assert ("transformer blocks at 8 px" in result.output) == ("attention_resolutions" in growth)
    assert ("1 text mixer layer" in result.output) == ("text_mixer_layers" in growth)
    base, after = (weights(run / "model.safetensors") for run in (first, second))
    assert len(after) > len(base) and all(k in after for k in base)
    assert all(torch.allclose(after[k], base[k], rtol=0, atol=1e-9) for k in base)
    models = [load_model(run / "model.safetensors") for run in (first, second)]
    gen = torch.Generator().manual_seed(0)
    x, tokens = torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 77, 32, generator=gen)
    cond = Conditioning(tokens, torch.randn(2, 32, generator=gen))
    old, new = (m.denoiser(x, torch.tensor([0.5, 3.0]), cond) for m in models)
    assert torch.allclose(new, old, rtol=0, atol=1e-6)
    # the other way round, layers would be thrown away: refused
    result = cli(*train_args(shapes_folder, tmp_path / "third", config_file, steps=1, clip_steps=2),
                 "--init", str(second / "model.safetensors"))
    assert result.exit_code == 2 and "unet.text_mixer_layers" in result.output


def test_text_encoder_of_another_image_size_gives_its_text_tower_only(shapes_folder, tmp_path, trained_run):
    first = trained_run
    bigger = tmp_path / "bigger.toml"
    bigger.write_text(train_config(top={"image_size": 16}, unet={"attention_resolutions": (8,)}))
    second = tmp_path / "second"
    loud = [a for a in train_args(shapes_folder, second, bigger, steps=2, clip_steps=3) if a != "-q"]
    result = cli(*loud, "--text-encoder", str(first / "model.safetensors"))
    assert result.exit_code == 0, result.output
    assert "the CLIP image tower" in result.output and "stays untrained" in result.output
    base, after = (weights(run / "model.safetensors") for run in (first, second))
    text_keys = [k for k in base if k.startswith("text_encoder.") and ".visual." not in k]
    assert text_keys and all(torch.equal(after[k], base[k]) for k in text_keys)
    assert after["text_encoder.clip.visual.positional_embedding"].shape != \
        base["text_encoder.clip.visual.positional_embedding"].shape


def test_an_edited_state_json_is_named_and_the_previous_state_is_used(shared_shapes, shared_config, straight_run,
                                                                      tmp_path):
    out = tmp_path / "edited"
    assert cli(*train_args(shared_shapes, out, shared_config, steps=8, clip_steps=2)).exit_code == 0
    newest = out / "state" / "state-diffusion-00000008.json"
    info = json.loads(newest.read_text())
    info["step"] = 7  # tensors untouched: only the JSON says otherwise
    newest.write_text(json.dumps(info))
    (out / "model.safetensors").unlink()  # what the resumed run ships is its own
    loud = [a for a in train_args(shared_shapes, out, shared_config, steps=8, clip_steps=2) if a != "-q"]
    resumed = cli(*loud, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "warning: skipped the training state" in resumed.output and newest.name in resumed.output
    # steps 5 to 8 again from the state at step 4: the uninterrupted run's weights
    assert [r["step"] for r in diffusion_metrics(out)] == list(range(1, 9))
    ref, got = weights(straight_run / "model.safetensors"), weights(out / "model.safetensors")
    assert max_difference(ref, got) < 1e-5


def test_a_state_json_without_its_hash_is_refused_like_an_edited_one(shared_shapes, shared_config, tmp_path):
    out = tmp_path / "unhashed"
    assert cli(*train_args(shared_shapes, out, shared_config, steps=4, clip_steps=2)).exit_code == 0
    for path in (out / "state").glob("*.json"):  # the hash deleted, the data position edited
        info = json.loads(path.read_text())
        del info["info_hash"]
        info["data_position"] = 0
        path.write_text(json.dumps(info))
    loud = [a for a in train_args(shared_shapes, out, shared_config, steps=8, clip_steps=2) if a != "-q"]
    resumed = cli(*loud, "--resume")
    assert resumed.exit_code == 2, resumed.output
    assert "no recorded hash" in resumed.output and "no usable training state" in resumed.output


def test_without_ema_warmup_a_fine_tune_keeps_the_checkpoints_average(shapes_folder, tmp_path, trained_run):
    first = trained_run
    distances = {}
    for warmup in (True, False):
        config = tmp_path / f"warmup-{warmup}.toml"
        config.write_text(train_config(train={"ema_warmup": warmup}))
        out = tmp_path / f"tuned-{warmup}"
        result = cli(*train_args(shapes_folder, out, config, steps=1), "--init", str(first / "model.safetensors"))
        assert result.exit_code == 0, result.output
        base, tuned = weights(first / "model.safetensors"), weights(out / "model.safetensors")
        distances[warmup] = max((tuned[k] - base[k]).abs().max().item() for k in base if k.startswith("denoiser."))
    # one step: with the warm-up the EMA is 90% the new weights, without it 0.5% (ema_decay 0.995)
    assert 0 < distances[False] < 0.05 * distances[True]


def test_a_trained_model_is_named_and_hashed_as_a1111_names_models(straight_run, tmp_path):
    import hashlib

    from PIL import Image

    checkpoint = straight_run / "model.safetensors"  # a run in a folder named "straight"
    result = cli("sample", "a red square", "-n", "1", "--steps", "2", "-c", str(checkpoint), "-o",
                 str(tmp_path / "imgs"), "-q")
    assert result.exit_code == 0, result.output
    with Image.open(next((tmp_path / "imgs").glob("*.png"))) as image:
        parameters, recipe = image.info["parameters"], json.loads(image.info["diffgen"])
    file_hash = hashlib.sha256(checkpoint.read_bytes()).hexdigest()  # what sha256sum prints
    assert f"Model hash: {file_hash[:10]}" in parameters and "Model: straight" in parameters
    assert recipe["model_file_sha256"] == file_hash and len(recipe["model_hash"]) == 64  # content hash kept


def test_a_training_state_can_be_sampled_with_its_ema_weights(straight_run, tmp_path):
    out = straight_run  # 2 CLIP steps, 8 diffusion steps, a state every 4
    state = out / "state" / "state-diffusion-00000008.safetensors"
    from_state, shipped = load_model(state), load_model(out / "model.safetensors")
    ema = {k: v for k, v in from_state.state_dict().items()}
    assert all(torch.equal(ema[k], v) for k, v in shipped.state_dict().items())  # the run shipped its EMA
    result = cli("sample", "a red square", "-n", "1", "--steps", "2", "-c", str(state), "-o", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    for clip_state in (out / "state").glob("state-clip-*.safetensors"):
        assert cli("sample", "a cat", "-c", str(clip_state), "-o", str(tmp_path / "c")).exit_code == 2


@pytest.mark.parametrize("values, key", [
    ({"high_noise_share": 1.5}, "high_noise_share"),
    ({"high_noise_share": 0.25, "high_noise_min_sigma": 80.0}, "high_noise_min_sigma"),
    ({"high_noise_share": 0.25, "high_noise_min_sigma": 0.0}, "high_noise_min_sigma")])
def test_a_high_noise_share_is_checked(values, key):
    from diffgen.errors import ConfigError
    with pytest.raises(ConfigError, match=key):
        train_config(denoiser=values)
