"""`edge-compress compile` / `inspect` on the command line: JSON output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

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
        "--predicted-compute",
    ]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["cached"] is False
    assert list(first["manifest"]["files"]) == ["lenet5.weight-only.onnx"]
    assert first["manifest"]["parity"]["lenet5.weight-only.onnx"]["agreement"] >= 0.99
    # host: int8 kernels lose to float ones there (the profile's measured kernel model), predicted only
    assert first["manifest"]["compute"]["onnx"]["compute"] == "float"
    assert first["manifest"]["compute"]["onnx"]["measured_ms"] is None
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["cached"] is True and second["id"] == first["id"] and second["stages_s"] == {}
    # without bias correction: another artifact, its plan says so, and the file's biases differ
    assert main([*args, "--no-bias-correction"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["cached"] is False and plain["id"] != first["id"]
    saved = {
        k: json.loads((Path(a["artifact"]) / "plan.json").read_text())
        for k, a in (("on", first), ("off", plain))
    }
    assert saved["on"]["bias_correction"] is True and saved["off"]["bias_correction"] is False
    on_file, off_file = (Path(a["artifact"]) / "lenet5.weight-only.onnx" for a in (first, plain))
    assert on_file.read_bytes() != off_file.read_bytes()
    assert plain["manifest"]["parity"]["lenet5.weight-only.onnx"]["agreement"] >= 0.99
    # rounded to nearest instead of GPTQ: another artifact with other weights; a bad value is one line
    assert saved["on"]["weight_rounding"] == "gptq"
    assert main([*args, "--rounding", "nearest"]) == 0
    near = json.loads(capsys.readouterr().out)
    assert near["cached"] is False and near["id"] not in (first["id"], plain["id"])
    assert json.loads((Path(near["artifact"]) / "plan.json").read_text())["weight_rounding"] == "nearest"
    assert near["manifest"]["quantizer"]["weight_rounding"] == "nearest"
    assert first["manifest"]["quantizer"] == {
        "weight_rounding": "gptq",
        "bias_correction": True,
        "activation_calibration": "mse",
    }
    assert (Path(near["artifact"]) / "lenet5.weight-only.onnx").read_bytes() != on_file.read_bytes()
    assert main([*args, "--rounding", "stochastic"]) == 2
    assert "unknown weight rounding 'stochastic'" in capsys.readouterr().err
    assert first["manifest"]["versions"]["edge_compress_code"]
    # code that changed since (a fix in the exporter, same version number) is not a cache hit
    import edge_compress.artifact as artifact_mod

    real = artifact_mod.code_fingerprint
    monkey = pytest.MonkeyPatch()
    monkey.setattr(artifact_mod, "code_fingerprint", lambda: "0" * 16)
    try:
        assert main(args) == 0
        newer = json.loads(capsys.readouterr().out)
    finally:
        monkey.undo()
    assert artifact_mod.code_fingerprint is real
    assert newer["cached"] is False and newer["id"] != first["id"]
    assert main(["inspect", first["artifact"], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["id"] == first["id"] and shown["files"] == first["manifest"]["files"]
    assert main(["inspect", first["artifact"]]) == 0
    shown = capsys.readouterr().out
    assert "lenet5.weight-only.onnx" in shown and "weights rounded by gptq, bias correction on" in shown


@pytest.mark.parametrize(
    "args, needle",
    [
        (["compile", "lenet5", "--profile", "nope"], "unknown profile"),
        (["compile", "lenet5", "--profile", "host", "--method", "magic"], "unknown method"),
        (["compile", "lenet5", "--profile", "host", "--format", "coreml"], "--format"),
        (["compile", "lenet5", "--profile", "host", "--budget", "bytes=lots"], "budget"),
        (["compile", "lenet5", "--profile", "host", "--compute", "fast"], "--compute"),
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


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--prune", "flops=2"], r"in (0, 1]"),
        (["--prune", "method=l1"], "needs a FLOPs budget"),
        (["--flops", "0.5", "--prune", "flops=0.4"], "disagree"),
        (["--factorize", "energy=0.9,params=0.5"], "exactly one of"),
        (["--flops", "0.001", "--prune", "method=l1,finetune=0"], "ask for at least"),
    ],
)
def test_prune_and_factorize_usage_errors(args, needle, capsys, tmp_path):
    rc = main(["compile", "lenet5", "--profile", "host", *args, "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert needle in err and len(err.splitlines()) == 1, err


def _uniform_plan(path, model) -> str:
    from edge_compress.graph import extract_graph
    from edge_compress.modelspec import resolve_model
    from edge_compress.plan import CompressionPlan

    spec = resolve_model("lenet5")
    g = extract_graph(model if model is not None else spec.model, spec.example_input(2))
    CompressionPlan.uniform(g, "lenet5", "host", 8, 8).save(path)
    return str(path)


def _compile(capsys, *args: str) -> dict:
    # the cost model's compute choice (not timed here): the files compared keep one name on any CPU
    assert main(["compile", "lenet5", "--format", "onnx", "--json", "--predicted-compute", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_compile_with_pruning_shrinks_the_file_and_records_it(tmp_path, capsys):
    import yaml

    from edge_compress.plan import CompressionPlan

    plan = _uniform_plan(tmp_path / "plan.json", None)  # pruning keeps the layer names
    out = str(tmp_path / "arts")
    base = _compile(capsys, "--profile", "host", "--plan", plan, "--out", out)
    # a user profile whose budget asks for half the FLOPs: compiling for it prunes
    (tmp_path / "profiles").mkdir()
    lean = {"extends": "host", "description": "host with a FLOPs budget", "budgets": {"flops_ratio": 0.5}}
    (tmp_path / "profiles" / "lean.yaml").write_text(yaml.safe_dump(lean))
    common = ["--profile", "lean", "--profiles-dir", str(tmp_path / "profiles"), "--plan", plan, "--out", out]
    first = _compile(capsys, *common, "--prune", "method=l1,finetune=1")
    m = first["manifest"]
    assert first["cached"] is False and m["transforms"] == ["prune"] and first["id"] != base["id"]
    pr = m["prune"]
    assert pr["flops_budget"] == 0.5 and "lean budgets.flops_ratio" in pr["budget_source"]
    assert pr["method"] == "l1" and pr["channel_multiple"] == 8 and pr["finetune_epochs"] == 1
    assert 0.4 <= pr["flops"]["ratio"] <= 0.5 and pr["flops"]["after"] < pr["flops"]["before"]
    assert pr["params"]["after"] < 0.8 * pr["params"]["before"]
    assert pr["channels"]["c3"]["before"] == 16 and pr["channels"]["c3"]["after"] in (8, 16)
    assert sum(c["after"] < c["before"] for c in pr["channels"].values()) >= 1
    acc = pr["accuracy"]
    assert acc["original"] == m["accuracy"]["fp32"] and acc["after_finetune"] == m["accuracy"]["transformed"]
    assert acc["after_finetune"] > 0.9
    # the exported file is really smaller, and parity ran on the pruned + quantized model
    name = "lenet5.weight-only.onnx"
    assert m["files"][name]["bytes"] < 0.8 * base["manifest"]["files"][name]["bytes"]
    assert m["parity"][name]["agreement"] >= 0.99 and m["parity"][name]["passed"]
    assert abs(m["accuracy"]["runtime"][name] - m["accuracy"]["transformed"]) < 0.03
    # plan.json records the kept channels (indices of the original layer's channels)
    saved = CompressionPlan.load(f"{first['artifact']}/plan.json")
    assert saved.transforms["prune"]["kept"] == pr["kept"]
    for layer, kept in pr["kept"].items():
        assert saved.layers[layer].keep_channels == kept and len(kept) == pr["channels"][layer]["after"]
    # the same request through --flops is a cache hit; a different budget is a different artifact
    again = _compile(capsys, *common, "--flops", "0.5", "--prune", "method=l1,finetune=1")
    assert again["cached"] is True and again["id"] == first["id"]
    other = _compile(capsys, *common, "--prune", "flops=0.75,method=l1,finetune=1")
    assert other["id"] != first["id"] and other["manifest"]["prune"]["flops"]["ratio"] > pr["flops"]["ratio"]
    assert main(["inspect", first["artifact"]]) == 0
    shown = capsys.readouterr().out
    assert "pruning (l1, FLOPs budget 0.5)" in shown and "not pruned: out" in shown
    # the recorded plan needs the same pruning; existing model files cannot be pruned
    assert main(["compile", "lenet5", "--profile", "host", "--plan", f"{first['artifact']}/plan.json"]) == 2
    assert "the plan records prune" in capsys.readouterr().err
    onnx_file = f"{first['artifact']}/{name}"
    assert main(["compile", onnx_file, "--data", "digits", "--profile", "host", "--prune", "flops=0.5"]) == 2
    assert "existing .onnx file" in capsys.readouterr().err
    assert main(["compile", onnx_file, "--data", "digits", "--profile", "host", "--rounding", "gptq"]) == 2
    assert "GPTQ rounding needs the PyTorch model's layer inputs" in capsys.readouterr().err


def test_compile_with_factorization_shrinks_the_file_and_records_ranks(tmp_path, capsys):
    from edge_compress.factorize import factorize_model, ranks_by_energy
    from edge_compress.graph import extract_graph
    from edge_compress.modelspec import resolve_model
    from edge_compress.plan import CompressionPlan

    spec = resolve_model("lenet5")
    g = extract_graph(spec.model, spec.example_input(2))
    ranks = ranks_by_energy(spec.model, g, 0.9)
    base_plan = _uniform_plan(tmp_path / "base.json", None)
    plan = _uniform_plan(tmp_path / "plan.json", factorize_model(spec.model, g, ranks))  # the new layer names
    out = str(tmp_path / "arts")
    base = _compile(capsys, "--profile", "host", "--plan", base_plan, "--out", out)
    res = _compile(
        capsys, "--profile", "host", "--plan", plan, "--out", out, "--factorize", "energy=0.9,finetune=1"
    )
    m = res["manifest"]
    assert m["transforms"] == ["factorize"]
    fa = m["factorize"]
    assert {n: d["rank"] for n, d in fa["layers"].items()} == {n: r for n, (r, _) in ranks.items()}
    name = "lenet5.weight-only.onnx"
    quantized = set(m["layers"][name])
    for layer, d in fa["layers"].items():
        assert d["rank"] < d["full_rank"] and set(d["into"]) <= quantized and layer not in quantized
    assert fa["params"]["ratio"] < 0.8 and fa["accuracy"]["after_finetune"] > 0.9
    assert m["files"][name]["bytes"] < 0.85 * base["manifest"]["files"][name]["bytes"]
    assert m["parity"][name]["agreement"] >= 0.99
    saved = CompressionPlan.load(f"{res['artifact']}/plan.json")
    assert saved.transforms["factorize"]["layers"].keys() == fa["layers"].keys()
    assert all(d.keep_channels is None for d in saved.layers.values())
