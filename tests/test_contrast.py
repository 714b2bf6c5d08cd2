"""Caption contrast (train.negative_weight): negative captions from metadata.jsonl, the rows of a
batch that take part, the logistic loss on the denoising-loss gap. A training run that uses it and
resumes exactly: test_resume.py ("contrast")."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from diffgen.data import TrainingSet, scan_folder
from diffgen.engine.denoiser import Conditioning, Denoiser, contrast_loss, denoising_loss, noised
from diffgen.training.batches import pick_negatives

from .helpers import cli, make_shapes_folder, randomize_zero_params, train_args, train_config, with_negatives


def test_metadata_negative_text_is_read_and_a_bad_one_is_named(tmp_path):
    folder = make_shapes_folder(tmp_path / "shapes", count=4)
    with_negatives(folder)
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    rows[1]["negative_text"] = ["a", " ", "b", rows[1]["text"][0]]  # its own caption is dropped
    rows[2]["negative_text"] = 7
    del rows[3]["negative_text"]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = scan_folder(folder, check_tokens=False)
    by_name = {item.path.name: item for item in report.items}
    assert by_name["img000.png"].negatives == (rows[0]["negative_text"],)
    assert by_name["img001.png"].negatives == ("a", "b")
    assert by_name["img002.png"].negatives == () and by_name["img002.png"].captions  # captions kept
    assert by_name["img003.png"].negatives == ()
    assert [w for w in report.warnings if "negative_text" in w and ":3:" in w]
    assert "2 image(s) with negative captions (for train.negative_weight)" in report.summary_lines()


def test_the_contrast_is_the_logistic_loss_of_the_denoising_gap():
    true = torch.tensor([0.30, 0.30, 0.30], requires_grad=True)
    negative = torch.tensor([0.30, 0.50, 0.10], requires_grad=True)  # gap 0, +0.2, -0.2
    k = 100.0
    loss = contrast_loss(true, negative, k)
    assert loss[0].item() == pytest.approx(math.log(2) / k)
    assert loss[1].item() == pytest.approx(math.log1p(math.exp(-20)) / k)
    assert loss[2].item() == pytest.approx(0.2, rel=1e-6)  # ~ -gap once the wrong caption wins
    loss.sum().backward()
    # d/d true = sigmoid(-k gap), d/d negative = -sigmoid(-k gap)
    assert true.grad.tolist() == pytest.approx([0.5, 1 / (1 + math.exp(20)), 1 / (1 + math.exp(-20))])
    assert (negative.grad + true.grad).abs().max().item() < 1e-7


def test_a_step_on_the_contrast_widens_the_gap_between_the_true_and_the_negative_caption(tiny_config):
    """The sign: a gradient step makes the true caption denoise better than the negative one."""
    from diffgen.engine.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config)
    randomize_zero_params(model.denoiser)
    denoiser = Denoiser.from_config(model.denoiser.net, tiny_config)
    x0 = torch.rand(4, 3, tiny_config.image_size, tiny_config.image_size) * 2 - 1
    noisy, sigma = noised(x0, 0.0, 0.5, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    true = Conditioning(torch.randn(4, 77, tiny_config.text.width, generator=gen),
                        torch.randn(4, tiny_config.text.embed_dim, generator=gen))
    negative = Conditioning(torch.randn(4, 77, tiny_config.text.width, generator=gen),
                            torch.randn(4, tiny_config.text.embed_dim, generator=gen))

    def gap() -> torch.Tensor:
        both = denoising_loss(denoiser, torch.cat([noisy, noisy]), torch.cat([sigma, sigma]),
                              torch.cat([x0, x0]), Conditioning.cat([true, negative]))
        return both[4:] - both[:4]

    before = gap().detach()
    optimizer = torch.optim.SGD(model.denoiser.parameters(), lr=0.05)
    both = denoising_loss(denoiser, torch.cat([noisy, noisy]), torch.cat([sigma, sigma]),
                          torch.cat([x0, x0]), Conditioning.cat([true, negative]))
    contrast_loss(both[:4], both[4:], 100.0).sum().backward()
    optimizer.step()
    assert (gap().detach() - before).mean().item() > 0


def test_contrast_rows_are_those_with_negatives_a_kept_caption_and_enough_noise():
    data = TrainingSet(torch.zeros(4, 3, 4, 4, dtype=torch.uint8), [("a",), ("b",), ("c",), ("d",)],
                       [Path(f"{i}.png") for i in range(4)], [("not a", "also not a"), (), ("not c",), ("not d",)])
    captions = ["a", "b", "", "d"]  # image 2's caption was dropped
    sigma = torch.tensor([1.0, 1.0, 1.0, 0.2])  # image 3 is barely noised
    rows, negatives = pick_negatives(data, [0, 1, 2, 3], captions, sigma, 0.5, torch.Generator().manual_seed(0))
    assert rows == [0] and negatives[0] in ("not a", "also not a")
    picks = {pick_negatives(data, [0], ["a"], sigma, 0.5, torch.Generator().manual_seed(s))[1][0] for s in range(20)}
    assert picks == {"not a", "also not a"}
    plain = TrainingSet(data.images, data.captions, data.paths)
    assert pick_negatives(plain, [0, 1], ["a", "b"], sigma, 0.5, torch.Generator()) == ([], [])


def test_the_contrast_on_data_without_negatives_is_one_line_exit_2(tmp_path):
    folder = make_shapes_folder(tmp_path / "shapes")
    config = tmp_path / "contrast.toml"
    config.write_text(train_config(train={"negative_weight": 1.0}))
    result = cli(*train_args(folder, tmp_path / "run", config, steps=2, clip_steps=1))
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "negative captions" in errors[0]
