"""Long runs, deselected by default: `python -m pytest -m slow`."""
import json

import pytest

from stnkit.app.demo import demo


@pytest.mark.slow
def test_demo_st_cnn_beats_the_cnn_on_rts(tmp_path):
    """The paper's claim on the embedded default: about 2 minutes on 2 CPU cores."""
    out = demo(out=str(tmp_path))
    cnn = json.loads((out / "cnn" / "summary.json").read_text())
    st = json.loads((out / "st-cnn-affine" / "summary.json").read_text())
    assert st["test_err"] < cnn["test_err"]
    assert st["test_err"] < 12.0
    assert (out / "transformer.png").is_file() and (out / "report.md").is_file()
