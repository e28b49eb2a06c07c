"""Export a trained model for inference: ONNX (for onnxruntime) and TorchScript.

The whole model is exported, its spatial transformers included (localisation net, regression,
grid, sampler), with a dynamic batch axis; the other input axes are fixed by the example.
ONNX uses the torch.export-based exporter (`dynamo=True`, opset 20: GridSample on volumes needs
20, on images 16); `dynamo=False` selects the older TorchScript-based one (no 3D warps).
TorchScript is `torch.jit.trace`.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .._io import require
from ..deform import onnx_translations
from ..models import transformers

__all__ = ["OPSET", "SUFFIX", "export_onnx", "export_torchscript", "runner", "max_abs_diff", "export_run"]

OPSET = 20
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


def _need(*modules: str) -> None:
    for m in modules:
        require(m, "ONNX export and checking", "'stnkit[export]'")


def _prepare(model: nn.Module, example: torch.Tensor) -> list:
    """Eval mode, and one eager forward: the TPS grid matrices of this size are built and cached
    now, so that the exporter reads them as constants instead of tracing their construction.
    -> the transformers' `last_params`, to put back after tracing."""
    model.eval()
    with torch.no_grad():
        model(example)
    return [st.last_params for st in transformers(model)]


def _restore(model: nn.Module, saved: list) -> None:
    for st, p in zip(transformers(model), saved):
        st.last_params = p


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, *, opset: int = OPSET,
                dynamo: bool = True, output: str = "logits") -> Path:
    """Write `model` as one ONNX file at path: input "x" (batch, *example.shape[1:]), output
    `output` (batch, ...). example: (B, C, H, W) or (B, C, D, H, W), a few real inputs."""
    _need("onnx", *(["onnxscript"] if dynamo else []))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = _prepare(model, example)
    log = logging.getLogger("torch.onnx")
    level = log.level
    try:
        log.setLevel(logging.ERROR)  # "torchvision is not installed" and similar notes
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer, deprecation and side-effect notes: the check below is what counts
            if dynamo:
                torch.onnx.export(
                    model, (example,), str(path), dynamo=True, input_names=["x"], output_names=[output],
                    dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, opset_version=opset,
                    external_data=False, verbose=False, custom_translation_table=onnx_translations(),
                )
            else:
                torch.onnx.export(
                    model, (example,), str(path), dynamo=False, input_names=["x"], output_names=[output],
                    dynamic_axes={"x": {0: "batch"}, output: {0: "batch"}}, opset_version=opset,
                )
    except Exception as e:
        raise RuntimeError(f"ONNX export of {type(model).__name__} failed: {type(e).__name__}: {e}") from e
    finally:
        log.setLevel(level)
        _restore(model, saved)
    return path


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Trace `model` on example (B, C, H, W) and save it with torch.jit.save; reload it with
    torch.jit.load(path). Any batch size runs; the other input axes are fixed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = _prepare(model, example)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings of shape checks: constant per model
            traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))
    finally:
        _restore(model, saved)
    return path


def runner(path: str | Path, fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function x -> outputs running the exported file (onnxruntime on CPU, or torch.jit.load)."""
    if fmt == "torchscript":
        module = torch.jit.load(str(path))
        return lambda x: module(x)
    _need("onnxruntime")
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.detach().cpu().float().numpy()})[0])


def max_abs_diff(model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 batch_size: int = 250) -> float:
    """Largest |model(x) - run(x)| over inputs x (N, ...), in batches."""
    model.eval()
    worst = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            worst = max(worst, float((model(xb).float() - run(xb).float()).abs().max()))
    return worst


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, *, check: int = 256,
               dynamo: bool = True) -> dict:
    """Export the newest good weights of a run folder to out (default RUN/model.onnx or
    RUN/model.pt), then compare the file with PyTorch on the first `check` test images (0: skip).
    -> {"path", "model", "format", "input", "checked", "max_abs_diff"} (the last None if unchecked)."""
    from ..train.objectives import objective_for
    from ..train.runs import load_run

    if fmt not in SUFFIX:
        raise ValueError(f"format must be one of {list(SUFFIX)}, got {fmt!r}")
    cfg, model, test = load_run(run_dir)
    x = next(test.batches(max(check, 2), shuffle=False)).x  # (N, C, H, W): the first test images
    path = Path(out) if out else Path(run_dir) / f"model{SUFFIX[fmt]}"
    if fmt == "onnx":
        # a co-localisation model outputs the kept transformer's crops, not class scores
        export_onnx(model, x[:2], path, dynamo=dynamo, output="logits" if objective_for(cfg).classifies else "crops")
    else:
        export_torchscript(model, x[:2], path)
    diff = max_abs_diff(model, runner(path, fmt), x[:check]) if check > 0 else None
    return {"path": path, "model": cfg.model, "format": fmt, "input": tuple(x.shape[1:]),
            "checked": min(check, len(x)), "max_abs_diff": diff}
