"""Captioned folders: both caption layouts, preprocessing, and the lint report."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from diffgen.data import load_image, load_training_set, scan_folder, split_holdout
from diffgen.errors import InputError


def test_txt_captions_and_metadata_jsonl(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a red square\n\nred block\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    Image.new("RGB", (8, 8), "blue").save(sub / "b.jpg")
    (sub / "metadata.jsonl").write_text(json.dumps({"file_name": "b.jpg", "text": "a blue square"}) + "\n")
    report = scan_folder(tmp_path)
    assert {(i.path.name, i.captions) for i in report.items} == {
        ("a.png", ("a red square", "red block")), ("b.jpg", ("a blue square",))}
    assert report.skipped == []


def test_problems_are_named(tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "ok.png")
    (tmp_path / "ok.txt").write_text("fine")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "same.png")  # byte-identical to ok.png
    (tmp_path / "same.txt").write_text("duplicate")
    Image.new("RGB", (8, 8)).save(tmp_path / "nocaption.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "empty.png")
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "broken.txt").write_text("broken")
    Image.new("RGB", (64, 64), "green").save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:60])
    (tmp_path / "cut.txt").write_text("cut")
    Image.new("RGB", (8, 8), "white").save(tmp_path / "long.png")
    (tmp_path / "long.txt").write_text(" ".join(["word"] * 90))
    report = scan_folder(tmp_path)
    reasons = {p.name: r for p, r in report.skipped}
    assert set(reasons) == {"nocaption.png", "empty.png", "broken.png", "cut.png"}
    assert "no caption" in reasons["nocaption.png"] and "empty caption" in reasons["empty.png"]
    assert "unreadable" in reasons["broken.png"] and "unreadable" in reasons["cut.png"]
    assert [[p.name for p in g] for g in report.duplicates] == [["ok.png", "same.png"]]
    assert [(p.name, n) for p, n in report.long_captions] == [("long.png", 92)]
    text = "\n".join(report.summary_lines(32))
    assert "3 usable image-caption pairs" in text and "4 file(s) skipped" in text
    assert "smaller than 32 px" in text


def test_missing_folder():
    with pytest.raises(InputError, match="not found"):
        scan_folder("/nonexistent/diffgen/folder")


def test_preprocessing_composites_converts_resizes_and_crops(tmp_path):
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (10, 0, 20, 20))
    rgba.save(tmp_path / "rgba.png")
    image = load_image(tmp_path / "rgba.png", 8)
    assert image.size == (8, 8) and image.mode == "RGB"
    assert image.getpixel((0, 4)) == (255, 255, 255)  # transparent -> white, not red
    assert image.getpixel((7, 4)) == (0, 0, 255)
    wide = Image.new("RGB", (40, 20), "blue")
    wide.paste((255, 0, 0), (0, 0, 10, 20))  # the left quarter is cut by the centre crop
    wide.save(tmp_path / "wide.png")
    cropped = load_image(tmp_path / "wide.png", 8)
    assert cropped.size == (8, 8) and all(cropped.getpixel((x, 4))[0] < 30 for x in range(8))
    Image.new("L", (10, 10), 128).save(tmp_path / "gray.png")
    assert load_image(tmp_path / "gray.png", 4).getpixel((1, 1)) == (128, 128, 128)
    Image.new("P", (10, 10)).save(tmp_path / "pal.png")
    assert load_image(tmp_path / "pal.png", 4).mode == "RGB"


def test_training_set_and_holdout(shapes_folder):
    report = scan_folder(shapes_folder)
    data = load_training_set(report.items, 8)
    assert data.images.shape == (24, 3, 8, 8) and str(data.images.dtype) == "torch.uint8"
    train, held = split_holdout(len(data), seed=0)
    assert len(held) == 2 and not set(train) & set(held) and len(train) + len(held) == 24
    assert split_holdout(len(data), seed=0) == (train, held)
    assert split_holdout(10, seed=0) == (list(range(10)), [])


def test_a_deeply_nested_metadata_line_is_a_warning_not_a_crash(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8), "white").save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a white square")
    (tmp_path / "metadata.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    report = scan_folder(tmp_path)
    assert len(report.items) == 1 and any("metadata.jsonl:1: not an object" in w for w in report.warnings)
