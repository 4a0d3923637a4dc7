"""`edge-compress bench`: model files, artifact directories, targets, exit codes and output."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from edge_compress.cli import main
from tests.runners.models import make_onnx_model
from tests.sshd import SSHServer

FAST = ["--min-count", "10", "--min-duration", "0.02", "--warmup", "1"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_onnx_model(tmp_path_factory.mktemp("m") / "tiny.onnx", channels=4, size=8, layers=1)


def artifact_dir(tmp_path: Path, model: Path, *, corrupt: bool = False) -> Path:
    d = tmp_path / "artifact"
    d.mkdir()
    shutil.copy(model, d / "model.int8.onnx")
    (d / "model.tflite").write_bytes(b"not really tflite")
    data = (d / "model.int8.onnx").read_bytes()
    files = {
        "model.tflite": {
            "sha256": hashlib.sha256(b"x").hexdigest(),
            "bytes": 99,
            "format": "tflite",
            "variant": "w8",
        },
        "model.int8.onnx": {
            "sha256": hashlib.sha256(data + (b"!" if corrupt else b"")).hexdigest(),
            "bytes": len(data),
            "format": "onnx",
            "variant": "w8a8",
        },
    }
    (d / "manifest.json").write_text(json.dumps({"id": "abc123", "profile": "rpi5", "files": files}))
    return d


def test_bench_model_file_json(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", str(model), "--target", "local", "--json", *FAST]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["target"] == "local" and out["stats"]["count"] >= 10
    assert out["energy"]["measured"] is False


def test_bench_artifact_dir_table(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = artifact_dir(tmp_path, model)
    assert main(["bench", str(d), *FAST, "--threads", "1", "--core-mask", "1"]) == 0
    out = capsys.readouterr().out
    for needle in (
        "model.int8.onnx on local",
        "p50",
        "95% CI",
        "first inference",
        "peak RSS",
        "estimate",
        "throttled",
        "onnxruntime",
        "x86_64" if sys.platform == "linux" else "",
    ):
        assert needle in out


def test_bench_artifact_label_and_format(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = artifact_dir(tmp_path, model)
    assert main(["bench", str(d), "--json", *FAST]) == 0
    assert json.loads(capsys.readouterr().out)["model_path"].endswith("model.int8.onnx")
    assert main(["bench", str(d), "--format", "tflite", "--json", *FAST]) == 2  # size differs from manifest
    assert "manifest says 99" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--target", "nowhere"], "unknown target 'nowhere'"),
        (["--core-mask", "g1"], "not a hexadecimal CPU mask"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--inputs", "/no/such.npz"], "no such file"),
        (["--format", "pt"], "not one of onnx, tflite"),
    ],
)
def test_usage_errors_exit_2_in_one_line(
    model: Path, args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", str(model), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_sha_mismatch_is_a_usage_error(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", str(artifact_dir(tmp_path, model, corrupt=True))]) == 2
    assert "SHA-256 differs from the manifest" in capsys.readouterr().err


def test_failed_measurement_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    assert main(["bench", str(bad), *FAST]) == 1
    err = capsys.readouterr().err
    assert (
        "agent: onnxruntime could not load the model bad.onnx" in err and len(err.strip().splitlines()) == 1
    )
    assert main(["bench", str(bad), "--json", *FAST]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["error_kind"] == "agent"


@pytest.mark.ssh
def test_bench_over_ssh_with_inventory(
    model: Path, sshd: SSHServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = sshd.write_inventory(
        tmp_path / "inv.yaml", "board", python=sys.executable, workdir=str(tmp_path / "w")
    )
    assert main(["bench", str(model), "--target", "board", "--inventory", str(inv), "--json", *FAST]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["target"] == "board" and out["pushed_bytes"] > 0
