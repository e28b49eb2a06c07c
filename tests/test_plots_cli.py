"""PNG writing (decoded by an independent reader) and `stnkit data show|list`."""
import subprocess
import sys

import pytest
import torch

from stnkit.app.cli import main
import numpy as np

from stnkit.app.plots import figure_pixels, image_axes, new_figure, save_figure, to_rgb

import PIL.Image

PIL = PIL.Image


def test_save_figure_writes_the_figure_as_drawn(tmp_path):
    fig = new_figure(2, 1, dpi=50)
    a = fig.add_subplot(gid="only")
    image_axes(a, np.ones((4, 6, 3)) * [1.0, 0.0, 0.0], "red")
    path = save_figure(fig, tmp_path / "a.png")
    back = np.array(PIL.open(path).convert("RGBA"))
    assert back.shape == (50, 100, 4)
    assert np.array_equal(back, figure_pixels(fig))  # the file holds exactly what Agg drew
    assert (back[..., 0] == 255).sum() > 100 and not list(tmp_path.glob("*.tmp*"))


def test_to_rgb_channels_and_volumes():
    assert to_rgb(torch.rand(2, 2, 5, 6)).shape == (2, 5, 12, 3)  # two channels side by side
    assert to_rgb(torch.rand(2, 3, 5, 6)).shape == (2, 5, 6, 3)
    vol = torch.zeros(1, 1, 4, 5, 6)
    vol[0, 0, 2, 1, 1] = 1
    assert to_rgb(vol)[0, 1, 1].tolist() == [1.0, 1.0, 1.0]  # max over depth
    assert to_rgb(torch.full((1, 1, 2, 2), 3.0)).max() == 1.0  # clipped to [0, 1]


def test_cli_data_show_writes_a_png(tmp_path, capsys):
    out = tmp_path / "tc.png"
    assert main(["data", "show", "tc", "--out", str(out), "-n", "8"]) == 0
    assert PIL.open(out).size == (8 * 120, 175)  # 8 tiles of 1.2 in; a row of 1.35 in + 0.4 in of title; 100 dpi
    assert "labels" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "show", "nope", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stnkit: error: unknown dataset 'nope'")


def test_cli_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "stnkit", "data", "list"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "rts" in r.stdout
