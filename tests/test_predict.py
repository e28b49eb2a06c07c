"""`stnkit predict`: image files are read like the training data (grey, resized, [0, 1]), classified
exactly as the model does, and every transformer's output is written as a PNG; missing or
unreadable files stop with an error naming the file."""
import numpy as np
import pytest
import torch
from PIL import Image

import stnkit
from stnkit.train import engine
from stnkit.app.cli import main
from stnkit.train.config import build
from stnkit.models import create_model, transformers
from stnkit.app.predict import load_image, predict_files
from stnkit.train.runs import load_run

FAST = dict(experiment="r", model="st-fcn-affine", batch_size=32, steps_per_epoch=4, epochs=1,
            eval_batch_size=1000, progress=False, lr=0.05)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return engine.train(build({**FAST, "out": str(tmp_path_factory.mktemp("runs"))}))


def digits(n: int) -> torch.Tensor:
    """n test digits as uint8 (n, 28, 28): what a PNG of them holds."""
    x = next(stnkit.data.make_dataset("r", "test").batches(n, shuffle=False)).x
    return (x[:, 0] * 255).round().to(torch.uint8)


def save(path, pixels: torch.Tensor):
    Image.fromarray(pixels.numpy()).save(path)
    return path


def test_cli_prints_the_models_classes_and_writes_the_transformer_output(run, tmp_path, capsys):
    imgs = digits(2)
    files = [save(tmp_path / "a.png", imgs[0]), save(tmp_path / "b.png", imgs[1])]
    assert main(["predict", str(run), *map(str, files), "--top", "2"]) == 0
    out = capsys.readouterr().out

    _, model, _ = load_run(run)
    x = imgs[:, None].float() / 255  # exactly what the files hold
    with torch.no_grad():
        probs = model(x).softmax(1)
    st = transformers(model)[0]
    for i, f in enumerate(files):
        p, c = probs[i].topk(2)
        assert f"{f}: {c[0]} ({p[0]:.3f}), {c[1]} ({p[1]:.3f})" in out
        warped = Image.open(tmp_path / f"{f.stem}.st.png")
        assert warped.mode == "L"  # grey, at the transformer's own resolution
        with torch.no_grad():
            expect = (st(x[i:i + 1])[0, 0].clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        assert torch.equal(torch.from_numpy(np.array(warped)), expect)
        assert f"transformer output: {tmp_path / f'{f.stem}.st.png'}" in out
        assert f"figure: {tmp_path / f'{f.stem}.predict.png'}" in out
        assert Image.open(tmp_path / f"{f.stem}.predict.png").size[0] > 400  # enlarged, beside the top classes


def test_images_are_read_grey_resized_and_scaled_like_the_training_data(tmp_path):
    red = torch.zeros(56, 40, 3, dtype=torch.uint8)
    red[..., 0] = 255
    x = load_image(save(tmp_path / "red.png", red), (1, 28, 28))
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x, torch.full_like(x, 76 / 255))  # ITU-R 601 luma of pure red: 0.299 * 255
    Image.fromarray(red.numpy()).save(tmp_path / "red.jpg", quality=95)
    rgb = load_image(tmp_path / "red.jpg", (3, 14, 14))
    assert rgb.shape == (3, 14, 14) and rgb[0].min() > 0.95 and rgb[1:].max() < 0.05
    with pytest.raises(ValueError, match=r"1 \(grey\) or 3 \(RGB\) channels"):
        load_image(tmp_path / "red.png", (2, 42, 42))
    inverted = load_image(tmp_path / "red.png", (1, 28, 28), invert=True)  # dark ink on paper
    assert torch.allclose(inverted, 1 - x)


def test_invert_classifies_a_paper_scan_like_the_dataset_image(run, tmp_path, capsys):
    img = digits(1)[0]
    save(tmp_path / "light.png", img)
    save(tmp_path / "paper.png", 255 - img)  # the same digit, dark on light
    assert main(["predict", str(run), str(tmp_path / "light.png"), "--top", "1"]) == 0
    light = capsys.readouterr().out.split(": ", 1)[1].splitlines()[0]  # "5 (0.109)"
    assert main(["predict", str(run), str(tmp_path / "paper.png"), "--top", "1", "--invert"]) == 0
    assert capsys.readouterr().out.split(": ", 1)[1].splitlines()[0] == light


def test_several_transformers_write_one_png_each_in_out(tmp_path):
    model = create_model("2xst-fcn-affine", in_shape=(1, 28, 28)).eval()
    f = save(tmp_path / "d.png", digits(1)[0])
    [r] = predict_files(model, [f], out=tmp_path / "warped", top=3)
    assert [p.name for p in r["warped"]] == ["d.st1.png", "d.st2.png"]
    assert all(p.parent == tmp_path / "warped" and p.is_file() for p in r["warped"])
    probs = [p for _, p in r["top"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6


def test_missing_or_unreadable_images_are_named(run, tmp_path, capsys):
    good = save(tmp_path / "ok.png", digits(1)[0])
    assert main(["predict", str(run), str(good), str(tmp_path / "missing.png")]) == 2
    assert f"image {tmp_path / 'missing.png'} not found" in capsys.readouterr().err
    (tmp_path / "text.png").write_text("not a picture")
    assert main(["predict", str(run), str(tmp_path / "text.png")]) == 2
    assert f"cannot read {tmp_path / 'text.png'} as an image" in capsys.readouterr().err
    assert not (tmp_path / "ok.st.png").exists()  # every file is read before anything is written
