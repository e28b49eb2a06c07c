"""Co-localisation pieces: crop boxes, IoU, the triplet hinge loss, and one training epoch."""
import json

import pytest
import torch

from stnkit.coloc import coloc_transformer, crop_boxes, iou, random_patches, triplet_loss
from stnkit.cli import main


def test_crop_boxes_of_attention_params():
    boxes = crop_boxes(torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 0.5, -0.5]]), 84)
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0, 84, 84], [49.0, 7, 77, 35]]))


def test_iou_against_hand_values():
    a = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    torch.testing.assert_close(iou(a, b), torch.tensor([1.0, 50 / 150, 0.0]))


def test_triplet_loss_prefers_crops_that_agree():
    g = torch.Generator().manual_seed(0)
    same = torch.ones(4, 8) + 0.01 * torch.randn(4, 8, generator=g)
    far = -torch.ones(4, 8)
    assert float(triplet_loss(same, far)) == 0.0  # pairs close, random patches far: no loss
    assert float(triplet_loss(far * 0 + torch.randn(4, 8, generator=g), same)) > 1.0
    assert triplet_loss(same, same).item() == pytest.approx(1.0, abs=0.01)  # margin


def test_transformer_starts_with_a_digit_sized_centre_crop():
    st = coloc_transformer(84)
    st(torch.rand(2, 1, 84, 84))
    torch.testing.assert_close(st.last_params, torch.tensor([[1 / 3, 0.0, 0.0]] * 2), atol=1e-5, rtol=0)
    p = random_patches(torch.rand(5, 1, 84, 84), torch.Generator().manual_seed(0))
    assert p.shape == (5, 1, 28, 28)


def test_cli_trains_one_epoch_and_writes_its_score(tmp_path):
    assert main(["train", "coloc", "epochs=1", "steps_per_epoch=2", f"out={tmp_path}", "digit_class=7"]) == 0
    run = tmp_path / "coloc-class7-seed0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["digit_class"] == 7 and 0 <= summary["iou_over_half"] <= 100 and summary["test_n"] == 100
    assert (run / "transformers.png").is_file()
