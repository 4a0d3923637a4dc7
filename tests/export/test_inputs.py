"""Existing model files as input: an ONNX model quantized with a measured mixed plan, and the
clear one-line errors for corrupt, truncated or incomplete files (no artifact left behind)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_compress.cli import main
from edge_compress.compiler import compile_model
from edge_compress.errors import UserError
from edge_compress.export.onnx import export_float_onnx, inspect_qdq
from edge_compress.modelspec import resolve_model
from edge_compress.quant.fakequant import fold_batchnorm


@pytest.fixture(scope="module")
def lenet_onnx(tmp_path_factory: pytest.TempPathFactory, lenet) -> Path:
    path = tmp_path_factory.mktemp("in") / "lenet_float.onnx"
    export_float_onnx(fold_batchnorm(lenet.model), lenet.example_input(1), path)
    return path


def _no_artifact(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_existing_onnx_is_quantized_with_a_mixed_plan(lenet_onnx, host, tmp_path):
    spec = resolve_model(str(lenet_onnx), data="digits")
    art = compile_model(spec, host, method="noise", alpha=0.4, formats=("onnx",), out_dir=tmp_path)
    m = art.manifest
    bits = {d["weight_bits"] for d in m["layers"]["lenet_float.qdq.onnx"].values()}
    assert bits == {4, 8}, bits
    assert set(m["sensitivity"]["gains"]) == {"c1", "c3", "f5", "f6", "out"}
    assert all(g > 0 for g in m["sensitivity"]["gains"].values())
    rep = m["parity"]["lenet_float.qdq.onnx"]
    assert rep["agreement"] >= 0.99
    assert m["accuracy"]["runtime"]["lenet_float.qdq.onnx"] > 0.9
    found = inspect_qdq(
        onnx.load(str(art.path / "lenet_float.qdq.onnx")), list(m["layers"]["lenet_float.qdq.onnx"])
    )
    assert {f["weight_dtype"] for f in found.values() if f["weight_bits"]} == {"int4", "uint8"}
    assert m["files"]["lenet_float.qdq.onnx"]["bytes"] < 0.8 * m["predicted"]["int8_bytes"]


def _run(args: list[str], capsys) -> tuple[int, str]:
    rc = main(args)
    err = capsys.readouterr().err.strip()
    return rc, err


def test_truncated_and_corrupt_onnx_fail_cleanly(lenet_onnx, tmp_path, capsys):
    data = lenet_onnx.read_bytes()
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(data[: len(data) // 3])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a model" * 10)
    out = tmp_path / "out"
    for f in (trunc, garbage):
        rc, err = _run(
            ["compile", str(f), "--profile", "host", "--data", "digits", "--out", str(out)], capsys
        )
        assert rc == 2
        assert err.startswith("error:") and len(err.splitlines()) == 1 and f.name in err, err
        assert "truncated or corrupt" in err
    assert _no_artifact(out)


def test_onnx_with_missing_external_data(lenet_onnx, tmp_path, capsys):
    model = onnx.load(str(lenet_onnx))
    d = tmp_path / "ext"
    d.mkdir()
    onnx.save(model, str(d / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    (d / "m.data").unlink()
    out = tmp_path / "out"
    rc, err = _run(
        ["compile", str(d / "m.onnx"), "--profile", "host", "--data", "digits", "--out", str(out)], capsys
    )
    assert rc == 2 and len(err.splitlines()) == 1
    assert "external file 'm.data'" in err and "missing" in err
    assert _no_artifact(out)


def test_unsupported_op_names_op_node_and_option(tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("FancyOp", ["x"], ["y"], name="fancy1", domain="acme.ops")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("acme.ops", 1)])
    p = tmp_path / "custom.onnx"
    onnx.save(m, str(p))
    spec = resolve_model(str(p), data="digits")
    from edge_compress.profiles import load_profile

    with pytest.raises(UserError) as e:
        compile_model(spec, load_profile("host"), formats=("onnx",), out_dir=tmp_path / "out")
    msg = str(e.value)
    assert "'FancyOp'" in msg and "'fancy1'" in msg and "--keep-float" in msg
    assert _no_artifact(tmp_path / "out")


def test_truncated_tflite_fails_cleanly(art_int8, tmp_path, capsys):
    data = art_int8.file("tflite", "int8").read_bytes()
    bad = tmp_path / "cut.tflite"
    bad.write_bytes(data[: len(data) // 4])
    notfl = tmp_path / "text.tflite"
    notfl.write_text("hello world, not a flatbuffer")
    out = tmp_path / "out"
    for f in (bad, notfl):
        rc, err = _run(
            ["compile", str(f), "--profile", "host", "--data", "digits", "--out", str(out)], capsys
        )
        assert rc == 2 and len(err.splitlines()) == 1 and f.name in err, err
    assert _no_artifact(out)


def test_model_argument_mistakes(tmp_path):
    with pytest.raises(UserError, match="not a zoo model"):
        resolve_model("nosuchmodel")
    with pytest.raises(UserError, match="needs --data"):
        resolve_model("tests.export.factories:tiny_net")
    with pytest.raises(UserError, match="cannot import module"):
        resolve_model("no_such_module_xyz:make", data="digits")
    with pytest.raises(UserError, match="no callable"):
        resolve_model("tests.export.factories:missing", data="digits")
    with pytest.raises(UserError, match="no such file"):
        resolve_model("tests.export.factories:tiny_net", data="digits", weights=str(tmp_path / "w.pt"))
    with pytest.raises(UserError, match="missing array"):
        np.savez(tmp_path / "d.npz", x_train=np.zeros((4, 1, 32, 32), np.float32))
        resolve_model("tests.export.factories:tiny_net", data=str(tmp_path / "d.npz"))
    spec = resolve_model("tests.export.factories:tiny_net", data="digits")
    assert spec.kind == "torch" and spec.dataset.name == "digits"
    with pytest.raises(UserError, match="fails on data"):
        resolve_model("tests.export.factories:tiny_net", data="mnist1d")
