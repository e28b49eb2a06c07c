"""Classify image files with a trained run, and write what each spatial transformer made of them."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .._io import require
from .._io import atomic_write
from .figures import prediction_figure, record_transformers
from .plots import save_figure

__all__ = ["load_image", "predict", "predict_files"]


def load_image(path: str | Path, shape: Sequence[int], invert: bool = False) -> torch.Tensor:
    """An image file (PNG, JPEG, anything Pillow reads) as the model's input: grey (C = 1) or
    RGB (C = 3), resized to shape (C, H, W), scaled to [0, 1] like the training data -> (C, H, W).
    invert: 1 - value, for dark ink on light paper (the digit datasets are light on dark)."""
    Image = require("PIL.Image", "reading images", "pillow")
    path = Path(path)
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise ValueError(f"this model takes inputs of shape {tuple(shape)}; predict reads 2D images for models "
                         f"with 1 (grey) or 3 (RGB) channels")
    C, H, W = shape
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # a huge image: refuse, not hang
            with Image.open(path) as im:
                im = im.convert("L" if C == 1 else "RGB").resize((W, H), Image.BILINEAR)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"{path}: too large to read safely ({e}); make a smaller copy of the image first") from None
    except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:  # SyntaxError: some broken PNGs
        raise ValueError(f"cannot read {path} as an image: {e}") from None
    x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(H, W, C)
    x = x.permute(2, 0, 1).float().div_(255)
    return 1 - x if invert else x


def predict(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x: (B, C, H, W) -> (class probabilities (B, K) or (B, L, K) for sequences, the outputs
    (B, C', H', W') of every transformer that warps the input itself, in call order)."""
    model.eval()
    logits, calls = record_transformers(model, x)
    return logits.float().softmax(-1), [out for _, inp, out, _ in calls if inp is x]


def _name(prefix: str, k: int, n: int) -> str:
    return f"{prefix}.st.png" if n == 1 else f"{prefix}.st{k + 1}.png"


def write_image(path: Path, x: torch.Tensor) -> Path:
    """x: (C, H, W) in [0, 1], C = 1 or 3 (other C: its first channel) -> an 8-bit PNG of exactly
    those pixels (grey or RGB), written whole then renamed."""
    import io

    Image = require("PIL.Image", "writing images", "pillow")
    pixels = (x.detach().float().cpu().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    pixels = pixels if pixels.shape[0] == 3 else pixels[:1]
    im = Image.fromarray(pixels.permute(1, 2, 0).squeeze(-1).numpy() if pixels.shape[0] == 1
                         else pixels.permute(1, 2, 0).numpy())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return atomic_write(path, buf.getvalue())


def predict_files(model: nn.Module, files: Sequence[str | Path], out: str | Path | None = None,
                  top: int = 3, invert: bool = False) -> list[dict]:
    """Classify image files and write, beside each input (or in out), each transformer's output
    at its own resolution (IMAGE.st.png, or IMAGE.st1.png, IMAGE.st2.png... for several
    transformers) and a figure (IMAGE.predict.png): the input and the outputs side by side,
    enlarged, with the top classes.
    -> one {"file", "top": [(class, probability)...], "warped": [paths], "figure": path} per file
    (sequence models: "top" holds the best class of each position)."""
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    x = torch.stack([load_image(f, model.in_shape, invert) for f in files])  # (N, C, H, W); every file checked first
    probs, warped = predict(model, x)
    results = []
    for i, f in enumerate(files):
        f = Path(f)
        folder = Path(out) if out is not None else f.parent
        p = probs[i]  # (K,) or (L, K)
        k = min(top, p.shape[-1])
        best = p.topk(k, dim=-1)
        if p.dim() == 1:
            top_k = list(zip(best.indices.tolist(), best.values.tolist()))
        else:  # a sequence: the best class of every position
            top_k = list(zip(best.indices[:, 0].tolist(), best.values[:, 0].tolist()))
        paths = [write_image(folder / _name(f.stem, j, len(warped)), w[i]) for j, w in enumerate(warped)]
        fig = prediction_figure(x[i], [w[i] for w in warped], top_k, p.dim() > 1, f.name)
        results.append({"file": f, "top": top_k, "warped": paths,
                        "figure": save_figure(fig, folder / f"{f.stem}.predict.png")})
    return results
