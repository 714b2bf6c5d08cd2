"""A1111's prompt-weight syntax: the parser against a table, the encoding's weighting, and weight 1
giving exactly the plain prompt's images."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffgen.checkpoint import load_model
from diffgen.cli import app
from diffgen.engine.prompt_weights import parse_weights

R = 1.1


@pytest.mark.parametrize("prompt, expected", [
    ("a red apple", [("a red apple", 1.0)]),
    ("", [("", 1.0)]),
    ("a (red) apple", [("a ", 1.0), ("red", R), (" apple", 1.0)]),
    ("a ((red)) apple", [("a ", 1.0), ("red", R * R), (" apple", 1.0)]),
    ("a [red] apple", [("a ", 1.0), ("red", 1 / R), (" apple", 1.0)]),
    ("a (red:1.4) apple", [("a ", 1.0), ("red", 1.4), (" apple", 1.0)]),
    ("(a (red:1.5) apple:0.5)", [("a ", 0.5), ("red", 0.75), (" apple", 0.5)]),
    ("a \\(red\\) apple", [("a (red) apple", 1.0)]),
    ("a \\\\ b", [("a \\ b", 1.0)]),
    ("(unclosed red", [("unclosed red", R)]),
    ("stray) bracket", [("stray) bracket", 1.0)]),
    ("ratio 16:9", [("ratio 16:9", 1.0)]),
    ("x:1.2) y", [("x:1.2) y", 1.0)]),
    ("(red:1)", [("red", 1.0)]),
])
def test_parser_table(prompt, expected):
    got = parse_weights(prompt)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_weights_scale_their_tokens_and_keep_the_mean(tiny_checkpoint):
    encoder = load_model(tiny_checkpoint).text_encoder
    with torch.inference_mode():
        plain = encoder.encode(["a red apple"], weighted=True)
        heavy = encoder.encode(["a (red:2) apple"], weighted=True)
    assert torch.equal(plain.ids, heavy.ids) and heavy.num_tokens == plain.num_tokens == [5]
    assert heavy.weights[0, :6].tolist() == [1.0, 1.0, 2.0, 1.0, 1.0, 1.0]  # sot a red apple eot pad
    ratio = (heavy.tokens[0] / plain.tokens[0]).mean(dim=1)
    assert ratio[2] == pytest.approx(2 * ratio[1].item(), rel=1e-4)  # "red" twice the others
    assert heavy.tokens.mean().item() == pytest.approx(plain.tokens.mean().item(), rel=1e-4, abs=1e-6)
    assert torch.equal(heavy.pooled, plain.pooled)


def test_weight_one_gives_the_plain_prompts_images_byte_for_byte(tiny_checkpoint, tmp_path):
    def make(prompt: str, folder: str) -> list[bytes]:
        out = tmp_path / folder
        result = CliRunner().invoke(app, ["sample", prompt, "-n", "2", "--seed", "1", "--steps", "3",
                                          "-c", str(tiny_checkpoint), "-o", str(out), "-q"])
        assert result.exit_code == 0, result.output
        return [Image.open(p).tobytes() for p in sorted(out.glob("*.png"))]

    plain = make("a red square", "plain")
    assert make("(a red square:1.0)", "one") == plain
    assert make("a (red:1.6) square", "heavy") != plain
