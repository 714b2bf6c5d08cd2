"""Faults from outside: SIGTERM ends sample and train like Ctrl-C (train saves its state first),
a second writer into the same output folder is refused, and temporaries left by a killed run are
removed by the next run in that folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from diffgen.cli import app
from diffgen.fileio import atomic_write
from diffgen.state import load_latest_state

from .helpers import train_args, wait_for


def png_count(folder: Path) -> int:
    """PNGs in ``folder``, 0 while it does not exist: `sample` makes its output folder once to
    check that it can, removes it, and makes it again when the first image is written."""
    try:
        return len(list(folder.glob("*.png")))
    except FileNotFoundError:  # removed between glob's is_dir check and its scandir
        return 0


def test_sigterm_ends_sample_with_one_line_and_no_temporaries(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "diffgen", "sample", "a cat", "-n", "5000", "--seed", "0", "-c",
                             str(tiny_checkpoint), "-o", str(out), "-q"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: png_count(out) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert stderr.strip().splitlines() == ["terminated"]
    assert not list(out.glob(".*.tmp"))


class Stop(Exception):
    pass


def test_a_signal_during_an_atomic_write_waits_for_the_file(tmp_path):
    """SIGTERM that arrives mid-write (here: from the writer itself) takes effect after the rename:
    the file is whole, no temporary is left, and the handler's exception still ends the caller."""
    def raise_stop(signum, frame):
        raise Stop

    def write(tmp: str) -> None:
        Path(tmp).write_text("half")
        os.kill(os.getpid(), signal.SIGTERM)
        Path(tmp).write_text("whole")

    previous = signal.signal(signal.SIGTERM, raise_stop)
    try:
        with pytest.raises(Stop):
            atomic_write(tmp_path / "a.txt", write)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (tmp_path / "a.txt").read_text() == "whole"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


@pytest.mark.slow
def test_sigterm_saves_the_training_state_and_resume_is_exact(shared_shapes, shared_config, trained_run, tmp_path):
    """Resumed after SIGTERM: the weights of the uninterrupted run (conftest.trained_run, the same
    data, config and steps)."""
    reference = trained_run
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "diffgen",
                             *train_args(shared_shapes, out, shared_config, steps=40)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: bool(list((out / "state").glob("state-diffusion-*.json"))), proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and stderr.strip().splitlines()[-1] == "terminated", stderr
    state = load_latest_state(out / "state")
    assert state is not None and state.stage == "diffusion" and state.step < 40
    resumed = CliRunner().invoke(app, [*train_args(shared_shapes, out, shared_config, steps=40), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    ref, got = load_file(str(reference / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert max((ref[k].float() - got[k].float()).abs().max().item() for k in ref) < 1e-5


def test_a_second_writer_into_the_same_folder_is_refused(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "diffgen", "sample", "a cat", "-n", "5000", "--seed", "0", "-c",
                              str(tiny_checkpoint), "-o", str(out), "-q"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: png_count(out) > 0, first)
        for args in (["a dog", "-n", "1", "--seed", "7"], ["a cat", "-n", "5000", "--seed", "0"]):  # other / same
            second = CliRunner().invoke(app, ["sample", *args, "-c", str(tiny_checkpoint), "-o", str(out), "-q"])
            assert second.exit_code == 2 and "is in use by another diffgen sample (pid" in second.output
        assert not list(out.glob("*a-dog*"))
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)


def test_temporaries_of_a_killed_run_are_removed_by_the_next_run(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".00000-0-a-cat.png.k3j4h5g6.tmp"
    stale.write_bytes(b"half a png")
    other = out / "notes.tmp"  # not diffgen's pattern: left alone
    other.write_text("mine")
    result = CliRunner().invoke(app, ["sample", "a cat", "-n", "1", "--seed", "0", "-c", str(tiny_checkpoint),
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and other.exists() and "left by an interrupted run" in result.output
    assert Path(out / "00000-0-a-cat.png").exists()


def test_a_temporary_newer_than_the_run_is_left_to_its_writer(tmp_path):
    """Under torchrun the first process cleans the folder while the others may already be writing."""
    import os

    from diffgen.fileio import remove_stale_temporaries

    old, fresh = tmp_path / ".00000-0-a.png.aaaaaaaa.tmp", tmp_path / ".00001-1-a.png.bbbbbbbb.tmp"
    old.write_bytes(b"left by a killed run")
    fresh.write_bytes(b"being written")
    started = time.time()
    os.utime(old, (started - 60, started - 60))
    os.utime(fresh, (started + 1, started + 1))
    assert remove_stale_temporaries(tmp_path, before=started) == [old]
    assert fresh.exists() and not old.exists()


def test_an_output_folder_made_meanwhile_by_another_process_is_kept(tmp_path, monkeypatch):
    import os

    from diffgen.cli.common import check_output_dir

    out = tmp_path / "a" / "out"

    def racing_mkdir(self, *args, **kwargs):  # another rank creates the folder first
        os.makedirs(self)
        raise FileExistsError(str(self))

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    check_output_dir(out)
    assert out.is_dir()


def peak_rss_mb(args: list[str], tmp: Path, images: int) -> float:
    """Peak resident memory (VmHWM, Linux) of a `diffgen sample` process once it has written
    ``images`` images, in MB; the process is then stopped."""
    out = tmp / "out"
    proc = subprocess.Popen([sys.executable, "-m", "diffgen", "sample", *args, "-o", str(out), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: png_count(out) >= images, proc, seconds=300)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.mark.slow
def test_memory_does_not_grow_with_the_number_of_images_or_prompts(tiny_checkpoint, tmp_path):
    small = peak_rss_mb(["a cat", "-n", "4", "--seed", "0", "-c", str(tiny_checkpoint)], tmp_path / "a", 1)
    huge_n = peak_rss_mb(["a cat", "-n", "1000000000", "--seed", "0", "-c", str(tiny_checkpoint)], tmp_path / "b", 4)
    jsonl = tmp_path / "huge.jsonl"
    jsonl.write_text(json.dumps({"prompt": "a dog", "n": 1_000_000_000}) + "\n")
    huge_jsonl = peak_rss_mb(["-f", str(jsonl), "-c", str(tiny_checkpoint)], tmp_path / "c", 4)
    many = tmp_path / "many.txt"
    with many.open("w") as handle:  # a million prompts, 31 MB
        for i in range(1_000_000):
            handle.write(f"a cat number {i:09d} on a mat\n")
    many_prompts = peak_rss_mb(["-f", str(many), "-c", str(tiny_checkpoint)], tmp_path / "d", 4)
    # a billion planned tasks would be ~100 GB, a million prompts ~0.3 GB
    print(f"peak RSS MB: -n 4 {small:.0f}, -n 1e9 {huge_n:.0f}, jsonl n 1e9 {huge_jsonl:.0f}, "
          f"1e6 prompts {many_prompts:.0f}")
    assert max(huge_n, huge_jsonl, many_prompts) < small + 60, (small, huge_n, huge_jsonl, many_prompts)


def test_huge_step_counts_are_refused_before_memory_is_spent(tiny_checkpoint, tmp_path):
    """--steps 1e9 (command line or a replayed recipe) would be a 8 GB sigma table: it is refused
    by the settings check, before the model loads. Peak RSS of the refused process, measured."""
    probe = ("import json, resource, subprocess, sys\n"
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
             "print(json.dumps([r.returncode, r.stderr, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))\n")
    code, stderr, max_kb = json.loads(subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-m", "diffgen", "sample", "a cat", "--steps", "1000000000",
         "-c", str(tiny_checkpoint), "-o", str(tmp_path / "out")], capture_output=True, text=True, check=True).stdout)
    assert code == 2 and "from 1 to 10000" in stderr
    assert max_kb / 1024 < 400  # the CLI without a model; a sigma table alone would be 8,000 MB
