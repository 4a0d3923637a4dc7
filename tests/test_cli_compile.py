"""`edge-compress compile` / `inspect` on the command line: JSON output and exit codes."""

from __future__ import annotations

import json

import pytest

from edge_compress.cli import main

pytestmark = [pytest.mark.slow]


def test_compile_json_then_cached_then_inspect(tmp_path, capsys):
    from edge_compress.graph import extract_graph
    from edge_compress.modelspec import resolve_model
    from edge_compress.plan import CompressionPlan

    spec = resolve_model("lenet5")
    plan = CompressionPlan.uniform(extract_graph(spec.model, spec.example_input(2)), "lenet5", "host", 8, 8)
    plan.save(tmp_path / "plan.json")
    args = [
        "compile",
        "lenet5",
        "--profile",
        "host",
        "--plan",
        str(tmp_path / "plan.json"),
        "--format",
        "onnx",
        "--out",
        str(tmp_path / "arts"),
        "--json",
    ]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["cached"] is False
    assert list(first["manifest"]["files"]) == ["lenet5.qdq.onnx"]
    assert first["manifest"]["parity"]["lenet5.qdq.onnx"]["agreement"] >= 0.99
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["cached"] is True and second["id"] == first["id"] and second["stages_s"] == {}
    assert main(["inspect", first["artifact"], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == first["id"] and shown["files"] == first["manifest"]["files"]
    assert main(["inspect", first["artifact"]]) == 0
    assert "lenet5.qdq.onnx" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["compile", "lenet5", "--profile", "nope"], "unknown profile"),
        (["compile", "lenet5", "--profile", "host", "--method", "magic"], "unknown method"),
        (["compile", "lenet5", "--profile", "host", "--format", "coreml"], "--format"),
        (["compile", "lenet5", "--profile", "host", "--budget", "bytes=lots"], "budget"),
        (["compile", "nosuch.onnx", "--profile", "host", "--data", "digits"], "no such model file"),
        (["compile", "lenet5", "--profile", "host", "--weights", "w.pt"], "--weights applies"),
        (["inspect", "/nonexistent/artifact"], "no such artifact"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, needle, capsys, tmp_path):
    rc = main([*args, "--out", str(tmp_path)] if args[0] == "compile" else args)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert needle in err and len(err.splitlines()) == 1, err
