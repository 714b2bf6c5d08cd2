"""The command line through Typer's CliRunner: results, reproducibility, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from diffgen import checkpoint, cli
from diffgen.checkpoint import save_model

from .helpers import pngs, run, sample

# --- speed of the front door -------------------------------------------------------------------

def test_help_does_not_import_torch():
    code = ("import sys, diffgen.cli, diffgen.sampling.prompts, diffgen.sampling.images; "
            "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "diffgen", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("diffgen ")


def test_sampler_and_schedule_names_match_the_registries():
    from diffgen.engine.samplers import SAMPLERS
    from diffgen.engine.schedule import SCHEDULES
    from diffgen.sampling.settings import A1111_SAMPLER_LABELS, SAMPLER_NAMES, SCHEDULE_NAMES

    assert SAMPLER_NAMES == tuple(SAMPLERS) and SCHEDULE_NAMES == tuple(SCHEDULES)
    assert set(A1111_SAMPLER_LABELS) == set(SAMPLER_NAMES)
    help_text = "".join(CliRunner().invoke(cli.app, ["sample", "--help"]).output.split())  # unwrapped
    assert all(name in help_text for name in SAMPLER_NAMES)


# --- sample ------------------------------------------------------------------------------------

def test_sample_writes_named_pngs_and_only_paths_on_stdout(tiny_checkpoint, tmp_path):
    result = sample(tiny_checkpoint, tmp_path, "a red apple", "a blue car", "-n", "2")
    assert result.exit_code == 0, result.output
    names = [p.name for p in pngs(tmp_path)]
    assert names == ["00000-7-a-red-apple.png", "00001-8-a-red-apple.png",
                     "00002-9-a-blue-car.png", "00003-10-a-blue-car.png"]
    assert result.stdout.split() == [str(tmp_path / n) for n in names]


def test_same_command_twice_gives_identical_bytes(tiny_checkpoint, tmp_path):
    for folder in ("a", "b"):
        assert sample(tiny_checkpoint, tmp_path / folder, "a cat", "-n", "2",
                      "--sampler", "dpmpp-2m-sde").exit_code == 0
    for a, b in zip(pngs(tmp_path / "a"), pngs(tmp_path / "b")):
        assert a.read_bytes() == b.read_bytes()


def test_batch_size_one_and_eight_agree(tiny_checkpoint, tmp_path):
    import numpy as np

    for folder, bs in (("one", "1"), ("eight", "8")):
        assert sample(tiny_checkpoint, tmp_path / folder, "a cat", "a dog", "-n", "3",
                      "--batch-size", bs, "--sampler", "euler-ancestral").exit_code == 0
    for a, b in zip(pngs(tmp_path / "one"), pngs(tmp_path / "eight")):
        diff = np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int))
        assert diff.max() <= 1


def test_png_metadata_and_replay_byte_for_byte(tiny_checkpoint, tmp_path):
    assert sample(tiny_checkpoint, tmp_path / "orig", "a red apple", "-n", "2", "--negative", "blurry",
                  "-g", "2.5", "--sampler", "heun").exit_code == 0
    original = pngs(tmp_path / "orig")[1]
    with Image.open(original) as image:
        params = image.info["parameters"].split("\n")
        recipe = json.loads(image.info["diffgen"])
    assert params[0] == "a red apple"
    assert params[1] == "Negative prompt: blurry"
    assert params[2].startswith("Steps: 3, Sampler: Heun, Schedule type: Karras, CFG scale: 2.5, "
                                "Seed: 8, Size: 8x8, Model hash: ")
    assert params[2].endswith(", Model: tiny, Version: diffgen 0.1.0")
    assert recipe["seed"] == 8 and recipe["negative"] == "blurry" and recipe["index"] == 1
    result = run("sample", "--replay", original, "-c", tiny_checkpoint, "-o", tmp_path / "replay", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "replay" / original.name).read_bytes() == original.read_bytes()


def test_a_layout_changes_the_image_is_recorded_and_replays_byte_for_byte(tiny_checkpoint, tmp_path):
    prompt, places = "a dog to the left of a cat", ["--place", "dog=0,0,0.5,1", "--place", "Cat=0.5,0,1,1"]
    assert sample(tiny_checkpoint, tmp_path / "plain", prompt, "-n", "2").exit_code == 0
    result = sample(tiny_checkpoint, tmp_path / "laid", prompt, "-n", "2", *places)
    assert result.exit_code == 0, result.output
    laid = pngs(tmp_path / "laid")
    assert all(a.read_bytes() != b.read_bytes() for a, b in zip(pngs(tmp_path / "plain"), laid))
    with Image.open(laid[1]) as image:
        recipe = json.loads(image.info["diffgen"])
    assert recipe["layout"] == {"places": [["dog", 0.0, 0.0, 0.5, 1.0], ["Cat", 0.5, 0.0, 1.0, 1.0]],
                                "strength": 6.0}
    result = run("sample", "--replay", laid[1], "-c", tiny_checkpoint, "-o", tmp_path / "replay", "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "replay" / laid[1].name).read_bytes() == laid[1].read_bytes()
    # a prompt file's line may carry its own layout: the same images
    lines = tmp_path / "laid.jsonl"
    lines.write_text(json.dumps({"prompt": prompt, "n": 2, "place": {"dog": [0, 0, 0.5, 1], "Cat": [0.5, 0, 1, 1]}})
                     + "\n" + json.dumps({"prompt": "a cat", "place": {"dog": [0, 0, 1, 1]}}) + "\n")
    bad = run("sample", "-c", tiny_checkpoint, "-o", tmp_path / "bad", "-f", lines, "-q")
    assert bad.exit_code == 2 and "'dog' is not in the prompt 'a cat'" in bad.output
    lines.write_text(lines.read_text().splitlines()[0] + "\n")
    assert sample(tiny_checkpoint, tmp_path / "file", "-f", lines).exit_code == 0
    assert [p.read_bytes() for p in pngs(tmp_path / "file")] == [p.read_bytes() for p in laid]
    # the same command again finds its images made by the same recipe and skips them
    again = sample(tiny_checkpoint, tmp_path / "laid", prompt, "-n", "2", *places)
    assert again.exit_code == 0 and again.stdout.strip() == ""
    # another strength is another picture: not mixed into the same folder
    other = sample(tiny_checkpoint, tmp_path / "laid", prompt, "-n", "2", *places, "--layout-strength", "2")
    assert other.exit_code == 2 and "other settings" in other.output


def test_replay_with_prompts_is_refused_not_dropped(tiny_checkpoint, tmp_path):
    assert sample(tiny_checkpoint, tmp_path / "orig", "a cat", "-n", "1").exit_code == 0
    result = run("sample", "a dog", "--replay", pngs(tmp_path / "orig")[0], "-c", tiny_checkpoint,
                 "-o", tmp_path / "replay")
    assert result.exit_code == 2 and "--replay regenerates the image's own prompt" in result.output
    assert not (tmp_path / "replay").exists()


def test_replay_warns_about_another_model(tiny_checkpoint, tiny_model, tmp_path):
    assert sample(tiny_checkpoint, tmp_path, "a cat", "-n", "1").exit_code == 0
    other = tmp_path / "other.safetensors"
    save_model(other, tiny_model)
    result = run("sample", "--replay", pngs(tmp_path)[0], "-c", other, "-o", tmp_path / "r")
    assert result.exit_code == 0
    assert "warning:" in result.stderr and "will differ" in result.stderr


def test_prompt_files_overrides_partial_batch_and_resume(tiny_checkpoint, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a cat", "n": 3}\n\n# a comment\n'
                       '{"prompt": "a dog", "seed": 100, "steps": 2, "guidance": 1, "sampler": "euler"}\n')
    out = tmp_path / "out"
    result = sample(tiny_checkpoint, out, "-f", prompts, "-n", "2", "--batch-size", "2", "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["prompt"], r["seed"], r["steps"], r["sampler"]) for r in lines] == [
        ("a cat", 7, 3, "dpmpp-2m"), ("a cat", 8, 3, "dpmpp-2m"), ("a cat", 9, 3, "dpmpp-2m"),
        ("a dog", 100, 2, "euler"), ("a dog", 101, 2, "euler")]
    assert all(not r["skipped"] and r["seconds"] > 0 for r in lines)
    first = pngs(out)[0]
    first.unlink()
    again = sample(tiny_checkpoint, out, "-f", prompts, "-n", "2", "--json")
    skipped = [json.loads(line)["skipped"] for line in again.stdout.splitlines()]
    assert skipped == [False, True, True, True, True]
    txt = tmp_path / "p.txt"
    txt.write_text("# header\n a cat \n\na dog\n")
    assert sample(tiny_checkpoint, tmp_path / "txt", "-f", txt, "-n", "1").exit_code == 0
    assert [p.name for p in pngs(tmp_path / "txt")] == ["00000-7-a-cat.png", "00001-8-a-dog.png"]


def test_grid_and_trajectory(tiny_checkpoint, tmp_path):
    assert sample(tiny_checkpoint, tmp_path, "a cat", "-n", "2", "--grid", "--trajectory").exit_code == 0
    assert (tmp_path / "grid-00000-7.png").exists()
    strip = Image.open(tmp_path / "00000-7-a-cat-trajectory.png")
    assert strip.width == 3 * strip.height  # one frame per step


def test_progress_goes_to_stderr(tiny_checkpoint, tmp_path):
    result = run("sample", "-c", tiny_checkpoint, "-o", tmp_path, "--steps", "2", "a cat", "-n", "1")
    assert result.exit_code == 0
    assert "seed:" in result.stderr and "sampling" in result.stderr
    assert result.stdout.strip() == str(pngs(tmp_path)[0])


@pytest.mark.parametrize("args, message", [
    (["--steps", "0", "x"], "--steps must be a whole number from 1 to 10000"),
    (["-g", "-1", "x"], "guidance must be a finite number"),
    (["-g", "nan", "x"], "guidance must be a finite number"),
    (["-n", "0", "x"], "num-images must be at least 1"),
    (["--sampler", "nope", "x"], "unknown sampler 'nope'"),
    (["--steps", "abc", "x"], "Invalid value for '--steps'"),
    ([], "no prompt given"),
    (["-f", "{missing}"], "prompt file not found"),
    (["-f", "{empty}"], "has no prompts"),
    (["-f", "{badjsonl}"], "bad.jsonl:2: not valid JSON"),
    (["--replay", "{plainpng}"], "no diffgen recipe"),
    (["--place", "dog", "a dog"], "expected NAME=X0,Y0,X1,Y1"),
    (["--place", "dog=0,0,0.5", "a dog"], "expected NAME=X0,Y0,X1,Y1"),
    (["--place", "dog=0.5,0,0.2,1", "a dog"], "0 <= x0 < x1 <= 1"),
    (["--place", "cat=0,0,0.5,1", "a dog"], "'cat' is not in the prompt"),
    (["--place", "dog=0,0,0.5,1", "--layout-strength", "-1", "a dog"], "layout strength must be"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_checkpoint, tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    paths = {"missing": tmp_path / "missing.txt", "empty": tmp_path / "empty.txt",
             "badjsonl": tmp_path / "bad.jsonl", "plainpng": tmp_path / "plain.png"}
    args = [a.format(**paths) for a in args]
    out = tmp_path / "out"
    result = run("sample", "-c", tiny_checkpoint, "-o", out, *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists()


@pytest.mark.parametrize("kind", ["missing", "corrupt", "not_safetensors"])
def test_bad_checkpoint_exit_2(tiny_checkpoint, tmp_path, kind):
    path = tmp_path / "model.safetensors"
    if kind == "corrupt":
        path.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    elif kind == "not_safetensors":
        path.write_text("hello")
    result = run("sample", "x", "-c", path, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_output_path_that_is_a_file(tiny_checkpoint, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    result = run("sample", "x", "-c", tiny_checkpoint, "-o", target)
    assert result.exit_code == 2 and "is a file" in result.output


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_output_folder_that_cannot_be_created(tiny_checkpoint):
    # /proc refuses new folders even to root, whom permission bits never stop.
    result = run("sample", "x", "-c", tiny_checkpoint, "-o", "/proc/diffgen-test/out")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot create output folder"), lines


def test_checking_a_new_output_folder_leaves_nothing(tiny_checkpoint, tmp_path):
    out = tmp_path / "new" / "deeper"
    result = run("sample", "-c", tiny_checkpoint, "-o", out)  # no prompt: fails after the check
    assert result.exit_code == 2 and "no prompt given" in result.output
    assert not (tmp_path / "new").exists()


def test_missing_default_model_says_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setattr(checkpoint, "DEFAULT_CHECKPOINT_CANDIDATES", [tmp_path / "none.safetensors"])
    monkeypatch.delenv("DIFFGEN_CHECKPOINT", raising=False)
    result = run("sample", "a cat", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert "no default model found" in result.output and "diffgen train" in result.output


def test_checkpoint_from_environment(tiny_checkpoint, tmp_path):
    result = run("sample", "a cat", "-n", "1", "--steps", "1", "--seed", "1", "-q", "-o", tmp_path,
                 env={"DIFFGEN_CHECKPOINT": str(tiny_checkpoint)})
    assert result.exit_code == 0, result.output
    assert len(pngs(tmp_path)) == 1


# --- encode and info ---------------------------------------------------------------------------

def test_encode_table_json_and_file(tiny_checkpoint, tmp_path):
    long_prompt = " ".join(["apple"] * 90)
    result = run("encode", "a red apple", "a green apple", long_prompt, "-c", tiny_checkpoint)
    assert result.exit_code == 0, result.output
    assert "truncated to 77" in result.stdout and "cosine similarity" in result.stdout
    out = tmp_path / "enc.safetensors"
    result = run("encode", "a red apple", "a green apple", "-c", tiny_checkpoint, "--json", "-o", out)
    data = json.loads(result.stdout)
    assert [p["num_tokens"] for p in data["prompts"]] == [5, 5]
    assert data["cosine"][0][0] == pytest.approx(1.0)
    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["prompts"]) == ["a red apple", "a green apple"]
        assert f.get_tensor("tokens").shape[:2] == (2, 77)
        assert f.get_tensor("pooled").shape[0] == 2


def test_info_shows_the_checkpoint(tiny_checkpoint):
    result = run("info", tiny_checkpoint)
    assert result.exit_code == 0, result.output
    assert "8 x 8 px" in result.stdout and "parameters: unet" in result.stdout


def test_debug_shows_the_traceback(tmp_path):
    result = run("info", tmp_path / "missing.safetensors", "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.output


def test_no_arguments_prints_help():
    result = run()
    assert result.exit_code == 0 and "sample" in result.output


def test_rerun_with_other_settings_refuses_to_mix(tiny_checkpoint, tmp_path):
    assert sample(tiny_checkpoint, tmp_path, "a cat", "-n", "1").exit_code == 0
    before = pngs(tmp_path)[0].read_bytes()
    result = sample(tiny_checkpoint, tmp_path, "a cat", "-n", "1", "-g", "5")
    assert result.exit_code == 2 and "other settings" in result.output
    assert pngs(tmp_path)[0].read_bytes() == before
    assert sample(tiny_checkpoint, tmp_path, "a cat", "-n", "1", "-g", "5", "--overwrite").exit_code == 0
    assert pngs(tmp_path)[0].read_bytes() != before


@pytest.mark.slow
def test_replay_is_byte_identical_for_an_image_made_in_a_batch(tmp_path):
    """With the 64 px default model (large enough for CPU kernels to block by batch size), images
    made in a batch of 4 are replayed alone; the recipe's batch placement makes them exact."""
    out = tmp_path / "orig"
    assert run("sample", "a cat", "a dog", "-n", "2", "--batch-size", "4", "--steps", "3", "--seed", "3",
               "-o", out, "-q").exit_code == 0
    for original in pngs(out):
        with Image.open(original) as image:
            recipe = json.loads(image.info["diffgen"])
        assert (recipe["batch_size"], recipe["batch_row"]) == (4, recipe["index"])
        result = run("sample", "--replay", original, "-o", tmp_path / "replay", "-q")
        assert result.exit_code == 0, result.output
        with Image.open(original) as a, Image.open(tmp_path / "replay" / original.name) as b:
            assert a.tobytes() == b.tobytes()


def test_new_run_numbers_on_after_the_images_already_in_the_folder(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    assert sample(tiny_checkpoint, out, "a cat", "-n", "2").exit_code == 0
    again = sample(tiny_checkpoint, out, "a cat", "-n", "2", "--steps", "2")
    assert again.exit_code == 2 and "--new-run" in again.output
    result = sample(tiny_checkpoint, out, "a cat", "-n", "2", "--steps", "2", "--new-run")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.glob("*.png"))
    assert [n[:5] for n in names] == ["00000", "00001", "00002", "00003"]
    recipes = [json.loads(Image.open(out / n).info["diffgen"]) for n in names]
    assert [(r["index"], r["seed"], r["steps"]) for r in recipes][2:] == [(2, 7, 2), (3, 8, 2)]  # seeds kept
