"""Hostile files and folders around the newer commands: the folder lock and every other write never
follow a planted link, a prompt file that can be read once is read once, `diffgen noise` checks its
input like every other image reader, images of extreme shape are refused by the one shared check,
and links that lead nowhere or absurd image indices are named instead of failing later. Each CLI
case gives one `error:` line and the documented exit code, and leaves nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from diffgen.cli import app
from diffgen.errors import InputError

from .helpers import one_error_line, png_claiming

FAST = ["--steps", "1", "--no-upscale", "-n", "1", "--seed", "1"]


def red(path: Path, size: tuple[int, int] = (8, 8)) -> Path:
    Image.new("RGB", size, "red").save(path)
    return path


# --- class 1: no file is written through a link, a folder or a FIFO --------------------------

def plant(folder: Path, kind: str, victim: Path) -> None:
    """A `.diffgen.lock` of the given kind in ``folder``."""
    folder.mkdir()
    lock = folder / ".diffgen.lock"
    if kind == "symlink":
        lock.symlink_to(victim)
    elif kind == "dangling":
        lock.symlink_to(victim.parent / "created-through-the-link")
    elif kind == "folder":
        lock.mkdir()
    elif kind == "fifo":
        os.mkfifo(lock)
    elif kind == "hardlink":
        os.link(victim, lock)
    elif kind == "foreign":
        lock.write_text("my notes\n")


@pytest.mark.parametrize("kind, words", [
    ("symlink", "a symbolic link"), ("dangling", "a symbolic link"), ("folder", "a folder"),
    ("fifo", "a FIFO"), ("hardlink", "a hard link"), ("foreign", "a file with other content"),
])
def test_a_planted_lock_file_is_refused_and_never_written(tmp_path, kind, words):
    from diffgen.fileio import folder_lock

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    plant(out, kind, victim)
    with pytest.raises(InputError, match=words), folder_lock(out, "diffgen sample"):
        pass
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "created-through-the-link").exists()
    assert [p.name for p in out.iterdir()] == [".diffgen.lock"]


def test_a_stale_lock_of_an_ended_process_is_taken_over(tmp_path):
    from diffgen.fileio import folder_lock

    (tmp_path / ".diffgen.lock").write_text("pid 1234567")
    with folder_lock(tmp_path, "diffgen sample"):
        assert (tmp_path / ".diffgen.lock").read_text() == f"pid {os.getpid()}"


@pytest.mark.parametrize("command", [["sample", "a cat", *FAST], ["upscale", "{good}"]])
def test_sample_and_upscale_refuse_a_symlinked_lock_and_leave_its_target_alone(tiny_checkpoint, tmp_path,
                                                                                command):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    plant(out, "symlink", victim)
    good = red(tmp_path / "good.png")
    args = [a.format(good=good) for a in command]
    result = CliRunner().invoke(app, [*args, "-c", str(tiny_checkpoint), "-o", str(out), "--device", "cpu"])
    one_error_line(result, 2, "is a symbolic link, not diffgen's lock file")
    assert victim.read_text() == "precious\n"
    assert [p.name for p in out.iterdir()] == [".diffgen.lock"]


def test_atomic_writes_replace_a_link_and_refuse_a_folder(tmp_path):
    from diffgen.fileio import atomic_write

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link = tmp_path / "out.txt"
    link.symlink_to(victim)
    atomic_write(link, lambda tmp: Path(tmp).write_text("new\n"))
    assert victim.read_text() == "precious\n" and not link.is_symlink() and link.read_text() == "new\n"
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        atomic_write(tmp_path / "folder.png", lambda tmp: Path(tmp).write_text("x"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.png", "out.txt", "victim.txt"]  # no .tmp


def test_the_training_log_is_never_appended_through_a_link(tmp_path):
    from diffgen.training.metrics import RunLog

    outside = tmp_path / "outside.jsonl"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").symlink_to(outside)  # dangling: "a" would create it
    log = RunLog(tmp_path / "run", enabled=True)
    log.write({"stage": "diffusion", "step": 1, "loss": 1.0})
    assert not outside.exists() and not log.path.is_symlink()
    assert json.loads(log.path.read_text())["step"] == 1


def test_the_emoji_builder_replaces_a_planted_image_link(tmp_path):
    from diffgen.emoji.dataset import build_emoji_dataset

    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    (tmp_path / "emoji" / "images").mkdir(parents=True)
    (tmp_path / "emoji" / "images" / "000000.png").symlink_to(victim)
    build_emoji_dataset(tmp_path / "emoji", count=1, size=32)
    assert victim.read_bytes() == b"precious"
    assert not (tmp_path / "emoji" / "images" / "000000.png").is_symlink()


# --- class 2: a prompt file that can be read only once ---------------------------------------

@pytest.fixture()
def pipe_path():
    """Makes a path (/dev/fd/N) to the read end of a pipe holding a text: it can be read once, and
    opening it again gives an empty read (as `-f /dev/stdin` and `<(...)` do)."""
    opened = []

    def make(text: str) -> str:
        read, write = os.pipe()
        opened.append(read)
        os.write(write, text.encode())
        os.close(write)
        return f"/dev/fd/{read}"

    yield make
    for fd in opened:
        os.close(fd)


def test_a_prompt_file_from_a_pipe_is_read_once_and_sampled(tiny_checkpoint, tmp_path, pipe_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sample", "-f", pipe_path("a cat\n# skipped\na dog\n"), *FAST, "-q",
                                      "-c", str(tiny_checkpoint), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["00000-1-a-cat.png", "00001-2-a-dog.png"]


def test_a_pipe_past_the_size_limit_is_refused_and_its_lines_still_checked(monkeypatch, tmp_path, pipe_path):
    from diffgen.sampling import prompts
    from diffgen.sampling.plan import plan_sample
    from diffgen.sampling.request import sample_request
    from diffgen.sampling.settings import DEFAULTS

    request = sample_request(DEFAULTS, 1)
    monkeypatch.setattr(prompts, "MAX_STREAM_CHARS", 20)
    with pytest.raises(InputError, match="pipe or device of more than 20 characters: save it to a file"):
        plan_sample([], Path(pipe_path("a cat\n" * 10)), None, 1, request)
    with pytest.raises(InputError, match=r"/dev/fd/\d+:1: line longer than 20,000 characters"):
        prompts.read_once(Path(pipe_path("x" * 20_001)))  # the line rule first, as for a file
    text = prompts.read_once(Path(pipe_path("a cat\r\na dog")))
    assert [s.prompt for s in prompts.iter_prompt_file(text, 1)] == ["a cat", "a dog"]
    regular = tmp_path / "p.txt"
    regular.write_text("a cat\n")
    assert prompts.read_once(regular) == regular  # a file is read again instead: constant memory


# --- class 3: `diffgen noise` checks what it reads and writes --------------------------------

def noise_input(tmp: Path, name: str) -> str:
    makers = {
        "good": lambda: red(tmp / "good.png"),
        "text": lambda: (tmp / "text.png").write_text("hello") and tmp / "text.png",
        "truncated": lambda: (tmp / "cut.png").write_bytes(red(tmp / "full.png", (64, 64)).read_bytes()[:60])
        and tmp / "cut.png",
        "bomb": lambda: png_claiming(tmp / "bomb.png", 30000, 30000),
        "over_limit": lambda: png_claiming(tmp / "big.png", 10000, 10000),  # 100 MP: Pillow only warns
        "tall": lambda: red(tmp / "tall.png", (2, 400)),
        "folder": lambda: (tmp / "dir.png").mkdir() or tmp / "dir.png",
        "proc": lambda: Path("/proc/self/mem"),  # a file that no read succeeds on
    }
    return str(makers[name]())


NOISE_CASES = [
    ("not_an_image", "text", [], "unreadable image"),
    ("truncated_png", "truncated", [], "unreadable image"),
    ("decompression_bomb", "bomb", [], "image too large (over 89 megapixels)"),
    ("past_the_megapixel_limit", "over_limit", [], "image too large (over 89 megapixels)"),
    ("unreadable_file", "proc", [], "unreadable image"),
    ("image_is_a_folder", "folder", [], "is a folder, not an image"),
    ("extreme_shape", "tall", [], "image too elongated (2 x 400"),
    ("seed_past_2_64", "good", ["--seed", str(2**64)], "--seed must be a whole number in [0, 2^63)"),
    ("seed_negative", "good", ["--seed", "-1"], "--seed must be a whole number in [0, 2^63)"),
    ("sigmas_too_many", "good", ["--sigmas", ",".join(["1"] * 20_000)], "at most 64 noise levels, got 20,000"),
    ("sigma_overflows", "good", ["--sigmas", "1e300"], "--sigmas must be from 0.0001 to 10000"),
    ("output_is_a_folder", "good", ["-o", "{tmp}/outdir"], "is a folder; give a .png file name"),
]


@pytest.mark.parametrize("name, image, extra, message", NOISE_CASES, ids=[c[0] for c in NOISE_CASES])
def test_noise_refuses_bad_input_with_one_line(tmp_path, name, image, extra, message):
    (tmp_path / "outdir").mkdir()
    extra = [a.format(tmp=tmp_path) for a in extra]
    out = [] if "-o" in extra else ["-o", str(tmp_path / "strip.png")]
    result = CliRunner().invoke(app, ["noise", noise_input(tmp_path, image), *extra, *out])
    one_error_line(result, 2, message)
    assert not (tmp_path / "strip.png").exists() and not any((tmp_path / "outdir").iterdir())
    assert not list(tmp_path.glob(".*.tmp"))


def test_noise_takes_the_largest_allowed_number_of_levels(tmp_path):
    from diffgen.sampling.forward import MAX_SIGMAS

    out = tmp_path / "strip.png"
    result = CliRunner().invoke(app, ["noise", noise_input(tmp_path, "good"), "--sigmas",
                                      ",".join(["1"] * MAX_SIGMAS), "-o", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as strip:
        assert strip.width > MAX_SIGMAS * 96


# --- class 4: images of extreme shape, one rule for every reader -----------------------------

def test_the_shape_rule_is_one_check_that_data_check_and_loading_share(tmp_path):
    from diffgen.data import MAX_ASPECT_RATIO, check_image, load_image

    assert check_image(red(tmp_path / "edge.png", (1, MAX_ASPECT_RATIO))) == (1, MAX_ASPECT_RATIO)
    assert load_image(tmp_path / "edge.png", 8).size == (8, 8)
    too = red(tmp_path / "too.png", (MAX_ASPECT_RATIO + 1, 1))
    assert "image too elongated" in check_image(too)
    with pytest.raises(InputError, match="too elongated"):
        load_image(too, 8)  # a file that changed after its check is refused, never scaled into gigabytes


def test_an_elongated_image_in_a_data_folder_is_named_and_skipped(tmp_path):
    from diffgen.data import load_training_set, scan_folder

    folder = tmp_path / "data"
    folder.mkdir()
    red(folder / "ok.png")
    (folder / "ok.txt").write_text("a red square\n")
    red(folder / "strip.png", (1, 2000))
    (folder / "strip.txt").write_text("a red strip\n")
    report = scan_folder(folder, check_tokens=False)
    assert [p.name for p in (i.path for i in report.items)] == ["ok.png"]
    assert [(p.name, "too elongated" in r) for p, r in report.skipped] == [("strip.png", True)]
    assert load_training_set(report.items, 8).images.shape == (1, 3, 8, 8)  # training loads what check kept


def test_an_elongated_init_image_or_recipe_input_is_refused_before_the_run(tiny_checkpoint, tmp_path):
    tall = red(tmp_path / "tall.png", (2, 400))
    out = tmp_path / "out"
    base = ["sample", "-c", str(tiny_checkpoint), "-o", str(out)]
    one_error_line(CliRunner().invoke(app, [*base, "a cat", *FAST, "--init-image", str(tall)]), 2,
                   "init image " + str(tall) + ": image too elongated")
    one_error_line(CliRunner().invoke(app, [*base, "a cat", *FAST, "--init-image", str(red(tmp_path / "i.png")),
                                            "--mask", str(tall)]), 2, "image too elongated")
    assert not out.exists()
    made = CliRunner().invoke(app, [*base, "a cat", *FAST, "-q", "--init-image", str(tmp_path / "i.png")])
    assert made.exit_code == 0, made.output
    with Image.open(out / "00000-1-a-cat.png") as image:
        recipe = json.loads(image.info["diffgen"])
    recipe["edit"].update(init_image=str(tall), init_sha256=hashlib.sha256(tall.read_bytes()).hexdigest())
    info = PngImagePlugin.PngInfo()
    info.add_text("diffgen", json.dumps(recipe))
    Image.new("RGB", (8, 8)).save(tmp_path / "replay.png", pnginfo=info)
    again = tmp_path / "again"
    one_error_line(CliRunner().invoke(app, ["sample", "--replay", str(tmp_path / "replay.png"), "-c",
                                            str(tiny_checkpoint), "-o", str(again)]), 2,
                   "missing, unreadable or changed since the recipe was made")  # no reason: the author would learn it
    assert not again.exists()


# --- class 10: links that lead nowhere, absurd image indices ---------------------------------

def test_links_that_do_not_resolve_are_named_not_dropped(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    red(folder / "ok.png")
    (folder / "ok.txt").write_text("a red square\n")
    (folder / "dangling.png").symlink_to(folder / "nowhere.png")
    (folder / "dangling.txt").write_text("a lost image\n")
    (folder / "loop1.png").symlink_to(folder / "loop2.png")
    (folder / "loop2.png").symlink_to(folder / "loop1.png")
    (folder / "lost.png").symlink_to(folder / "ok.png")
    (folder / "lost.txt").symlink_to(folder / "nowhere.txt")
    (folder / "metadata.jsonl").symlink_to(folder / "nowhere.jsonl")
    (folder / "sub" / "metadata.jsonl").mkdir(parents=True)  # was a raw IsADirectoryError
    os.mkfifo(folder / "sub" / "pipe.png")
    result = CliRunner().invoke(app, ["data", "check", str(folder)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "1 usable image-caption pairs" in out
    for name in ("dangling.png", "loop1.png", "loop2.png"):
        assert f"{name}: a link that does not resolve (dangling, or a loop of links)" in out
    assert "lost.png: its caption lost.txt is a link that does not resolve" in out
    assert "pipe.png: not a regular file" in out
    assert "metadata.jsonl: a link that does not resolve" in out and "metadata.jsonl: a folder; ignored" in out


def test_an_absurd_index_is_ignored_by_new_run_and_refused_in_a_recipe(tiny_checkpoint, tmp_path):
    from diffgen.sampling.tasks import MAX_INDEX

    out = tmp_path / "out"
    out.mkdir()
    red(out / ("9" * 240 + "-1-a-cat.png"))  # not diffgen's: a name it could never write
    red(out / "00003-1-a-cat.png")
    base = ["sample", "-c", str(tiny_checkpoint), "-o", str(out)]
    for _ in range(2):  # every later run too
        result = CliRunner().invoke(app, [*base, "a cat", *FAST, "-q", "--new-run"])
        assert result.exit_code == 0, result.output
    assert sorted(p.name[:5] for p in out.glob("0*.png")) == ["00003", "00004", "00005"]
    full = tmp_path / "full"
    full.mkdir()
    red(full / f"{MAX_INDEX}-1-a-cat.png")
    one_error_line(CliRunner().invoke(app, ["sample", "-c", str(tiny_checkpoint), "-o", str(full), "a cat",
                                            *FAST, "--new-run"]), 2, "past the largest index (999,999,999)")
    with Image.open(out / "00004-1-a-cat.png") as image:
        recipe = json.loads(image.info["diffgen"])
    info = PngImagePlugin.PngInfo()
    info.add_text("diffgen", json.dumps({**recipe, "index": 10**250}))
    Image.new("RGB", (8, 8)).save(tmp_path / "replay.png", pnginfo=info)
    again = tmp_path / "again"
    one_error_line(CliRunner().invoke(app, ["sample", "--replay", str(tmp_path / "replay.png"), "-c",
                                            str(tiny_checkpoint), "-o", str(again)]), 2, "index must be")
    assert not again.exists()


def test_train_prints_what_data_check_warns_of_the_folders_metadata(shapes_folder, shared_config, tmp_path):
    (shapes_folder / "metadata.jsonl").write_text('["not", "an", "object"]\n')
    result = CliRunner().invoke(app, ["train", str(shapes_folder), "-o", str(tmp_path / "run"), "--config",
                                      str(shared_config), "--steps", "1", "--clip-steps", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "warning: " in result.output and "metadata.jsonl:1: not an object with file_name and text" in result.output
