"""Every expected error is one line on stderr, exit status 2, no traceback, nothing written: bad
YAML (naming file and line), huge, unreadable or non-image files, a missing optional package
(one error type, one message: what to pip install), a run folder of the wrong kind."""
import struct
import subprocess
import sys
import zlib

import pytest

import stnkit
from stnkit._io import MissingDependency, require
from stnkit.app.cli import main


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_bad_yaml_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nlr: [0.1\nbatch_size: 8\n")
    assert main(["train", "r", "--config", str(bad), f"out={tmp_path}"]) == 2
    err = one_line(capsys)
    assert f"{bad}, line 3" in err and "not valid YAML" in err
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    assert main(["train", "r", "--config", str(tmp_path / "list.yaml"), f"out={tmp_path}"]) == 2
    assert "must be a mapping" in one_line(capsys)
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00\x81")
    assert main(["train", "r", "--config", str(tmp_path / "bin.yaml"), f"out={tmp_path}"]) == 2
    assert "not a text file" in one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "bin.yaml", "list.yaml"]  # nothing written


def png_header_only(path, width, height):
    """A PNG that claims width x height pixels (Pillow reads the size before any pixel)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "r", "--model", "fcn", "epochs=1", "steps_per_epoch=2", f"out={out}", "name=r"]) == 0
    return out / "r"


@pytest.mark.parametrize("size", [(20000, 20000), (12000, 12000)])  # past Pillow's error and warning limits
def test_predict_refuses_a_huge_image_in_one_line(run, tmp_path, capsys, size):
    big = png_header_only(tmp_path / "big.png", *size)
    capsys.readouterr()
    assert main(["predict", str(run), str(big)]) == 2
    err = one_line(capsys)
    assert f"{big}: too large to read safely" in err and "smaller copy" in err
    assert not (tmp_path / "big.st.png").exists()


def test_a_missing_optional_package_is_one_error_type_and_says_what_to_install(run, monkeypatch, capsys):
    with pytest.raises(MissingDependency, match=r"^reading SVHN needs nope: pip install 'stnkit\[data\]'$"):
        require("nope.sub", "reading SVHN", "'stnkit[data]'")
    assert issubclass(MissingDependency, ImportError)
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    capsys.readouterr()
    assert main(["export", str(run), "--format", "onnx"]) == 2
    err = one_line(capsys)
    assert "needs onnx: pip install 'stnkit[export]'" in err
    assert not (run / "model.onnx").exists()
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    assert main(["predict", str(run), str(run / "config.yaml")]) == 2
    assert "reading images needs PIL: pip install pillow" in one_line(capsys)


def test_version_and_the_traceback_switch(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"stnkit {stnkit.__version__}"
    monkeypatch.setenv("STNKIT_TRACEBACK", "1")  # for a bug report: the full traceback instead of one line
    with pytest.raises(ValueError, match="unknown dataset"):
        main(["data", "show", "nope", "--out", str(tmp_path / "x.png")])


def test_a_run_folder_of_the_wrong_kind_is_one_line(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "config.yaml").write_text("colour: blue\n")
    for cmd in (["eval"], ["show"], ["export", "--format", "onnx"], ["train", "--resume"]):
        assert main([*cmd[:1], str(tmp_path / "notes"), *cmd[1:]]) == 2
        err = one_line(capsys)
        assert "does not describe a run this stnkit can continue" in err and "colour" in err


def test_the_installed_command_prints_no_traceback_for_an_expected_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "stnkit", "eval", str(tmp_path / "none")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("stnkit: error: run folder") and "Traceback" not in r.stderr
