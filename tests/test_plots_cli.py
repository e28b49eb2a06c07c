"""PNG writing (decoded by an independent reader) and `stnkit data show|list`."""
import subprocess
import sys

import pytest
import torch

from stnkit.app.cli import main
from stnkit.app.plots import draw_box, grid_image, to_rgb, write_png

import PIL.Image

PIL = PIL.Image


def test_png_round_trip(tmp_path):
    img = torch.randint(0, 256, (7, 11, 3), dtype=torch.uint8)
    write_png(tmp_path / "a.png", img)
    back = torch.from_numpy(__import__("numpy").array(PIL.open(tmp_path / "a.png")))
    assert torch.equal(back, img)
    grey = torch.randint(0, 256, (5, 4), dtype=torch.uint8)
    write_png(tmp_path / "g.png", grey)
    assert torch.equal(torch.from_numpy(__import__("numpy").array(PIL.open(tmp_path / "g.png"))), grey)
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "bad.png", torch.zeros(3, 3))


def test_to_rgb_channels_and_volumes():
    assert to_rgb(torch.rand(2, 2, 5, 6)).shape == (2, 5, 12, 3)  # two channels side by side
    assert to_rgb(torch.rand(2, 3, 5, 6)).shape == (2, 5, 6, 3)
    vol = torch.zeros(1, 1, 4, 5, 6)
    vol[0, 0, 2, 1, 1] = 1
    assert to_rgb(vol)[0, 1, 1].tolist() == [255, 255, 255]  # max over depth


def test_draw_box_outline_and_clipping():
    img = torch.zeros(10, 10, 3, dtype=torch.uint8)
    draw_box(img, (2, 3, 6, 8), torch.tensor([255, 0, 0], dtype=torch.uint8))
    red = img[..., 0] > 0
    assert red[3, 2:6].all() and red[7, 2:6].all() and red[3:8, 2].all() and red[3:8, 5].all()
    assert not red[4:7, 3:5].any()
    draw_box(img, (-5, -5, 30, 30), torch.tensor([0, 255, 0], dtype=torch.uint8))  # no crash
    assert grid_image(torch.zeros(5, 4, 4, 3, dtype=torch.uint8), ncol=2, pad=1).shape == (16, 11, 3)


def test_cli_data_show_writes_a_png(tmp_path, capsys):
    out = tmp_path / "tc.png"
    assert main(["data", "show", "tc", "--out", str(out), "-n", "8"]) == 0
    assert PIL.open(out).size[0] > 0
    assert "labels" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "show", "nope", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stnkit: error: unknown dataset 'nope'")


def test_cli_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "stnkit", "data", "list"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "rts" in r.stdout
