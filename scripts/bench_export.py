"""Benchmark the exporters on the zoo: bytes, parity, runtime accuracy, latency vs fp32, compile time.

    python scripts/bench_export.py [--models lenet5,conv1d,resnet,mobilenetv2] [--method hessian]

For every model: a compile with the planner on the ``host`` profile (its default budgets: int8
where nothing forces less), and a mixed int4/int8 compile (``alpha`` between all-int4 and all-int8).
The default export options include ``compute: auto``: on ``host`` the profile's measured kernel
models (``compute.integer_kernels.onnxruntime``: integer kernels gain with layer width; LiteRT's
``integer_speedup``) decide per model between integer files (ONNX QDQ with 7-bit weights, the exact
fast path without VNNI) and weight-only files (integer weights, float compute); the integer-compute
files of the same plan (``compute: integer``: uint8-weight QDQ ONNX, static int8 TFLite) are
measured beside them (``onnx_integer``, ``tflite_integer``) with the compile's prediction for both.
For every file, in its runtime (onnxruntime, LiteRT/XNNPACK), batch 1, one thread: the median
latency of the exported model and of the fp32 export of the same (BN-folded) model, measured in
interleaved rounds in the same process (ratio = median over rounds of int8 / fp32). Also the ONNX
file with plain int8 weights (uint8 x int8 kernels: fast on AVX2, but they saturate) to show the
trade-off the default (uint8 weights, exact) makes.

Writes ``benchmarks/export.json``: ``models.<name>.<format>.{bytes, planned_bytes, agreement,
sqnr_db, acc, sim_acc, latency_ratio_vs_fp32, latency_ms, fp32_latency_ms, compile_s, stages_s}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def latency_ratio(
    fmt: str, fp32: Path, quant: Path, x: np.ndarray, rounds: int = 31, min_s: float = 0.05
) -> dict[str, float]:
    """Interleaved rounds (fp32 then the exported file, alternating order), each a timed batch of
    calls, in the format's runtime with one thread; the per-round median latencies give a ratio per
    round; we report medians (:func:`edge_compress.export.compute.time_pair`)."""
    from edge_compress.export.compute import time_pair
    from edge_compress.export.parity import OrtRunner, TfliteRunner

    runner = OrtRunner if fmt == "onnx" else TfliteRunner
    a, b = (runner(p, threads=1).invoker(x) for p in (fp32, quant))
    t = time_pair(a, b, rounds=rounds, warmup=20, min_round_s=min_s)
    return {
        "fp32_latency_ms": t["a_ms"],
        "latency_ms": t["b_ms"],
        "latency_ratio_vs_fp32": t["ratio"],
        "rounds": rounds,
        "calls_per_round": int(t["calls_per_round"]),
    }


def default_variant(art: Any, fmt: str) -> str:
    """The variant of ``fmt``'s default file (the compile's compute choice)."""
    c = art.manifest.get("compute", {}).get(fmt)
    return c["variant"] if c else {"onnx": "qdq", "tflite": "int8"}[fmt]


def file_row(art: Any, fmt: str, variant: str, fp32: Path, x1: np.ndarray) -> dict[str, Any]:
    path = art.file(fmt, variant)
    d = art.manifest["files"][path.name]
    p = art.manifest["parity"][path.name]
    row = {
        "file": path.name,
        "variant": variant,
        "bytes": d["bytes"],
        "planned_bytes": d["planned_bytes"],
        "bytes_ratio": d["bytes"] / d["planned_bytes"],
        "agreement": p["agreement"],
        "sqnr_db": p["sqnr_db"],
        "acc": p["runtime_accuracy"],
        "sim_acc": p["simulated_accuracy"],
        "acc_minus_sim_pp": 100 * (p["runtime_accuracy"] - p["simulated_accuracy"]),
        "fallbacks": [f for f in art.manifest["fallbacks"] if f["format"] == fmt and f["variant"] == variant],
        "weight_bits": {n: v["weight_bits"] for n, v in art.manifest["layers"][path.name].items()},
    }
    c = art.manifest.get("compute", {}).get(fmt)
    if c is not None and variant != "int8-full":
        row["compute"] = {k: c[k] for k in ("asked", "compute", "predicted_ms")}
    row.update(latency_ratio(fmt, fp32, path, x1))
    return row


def bench_model(name: str, method: str, alpha: float, out_dir: Path) -> dict[str, Any]:
    import torch

    from edge_compress.artifact import tool_versions
    from edge_compress.compiler import ExportOptions, compile_model, float_export
    from edge_compress.modelspec import resolve_model
    from edge_compress.plan import CompressionPlan
    from edge_compress.profiles import load_profile
    from edge_compress.quant.fakequant import fold_batchnorm

    torch.set_num_threads(1)
    host = load_profile("host")
    spec = resolve_model(name)
    versions = tool_versions()
    folded = fold_batchnorm(spec.model)
    fp_onnx = float_export(spec, folded, "onnx", versions)
    fp_tfl = float_export(spec, folded, "tflite", versions)
    x1 = np.ascontiguousarray(spec.dataset.x_test[:1])
    from edge_compress.graph import extract_graph
    from edge_compress.quant.planner import Planner

    res: dict[str, Any] = {}
    # one planner analysis (the expensive part: Hessian traces, noise model) serves both plans
    t = time.perf_counter()
    graph = extract_graph(spec.model, spec.example_input(2))
    planner = Planner(
        spec.model,
        graph,
        host,
        spec.calibration(256),
        eval_x=spec.dataset.x_val,
        eval_y=spec.dataset.y_val,
        method=method,
        model_name=name,
    )
    plan0 = planner.plan(None)
    plan_s = time.perf_counter() - t
    t = time.perf_counter()
    planm = planner.plan(None, alpha=alpha)
    planm_s = time.perf_counter() - t
    t = time.perf_counter()
    art = compile_model(spec, host, plan=plan0, out_dir=out_dir, force=True, parity_gate=False)
    wall = time.perf_counter() - t + plan_s
    stages = {**art.stages_s, "plan": round(plan_s, 2)}
    res["plan"] = {
        "method": art.manifest["method"],
        "weight_bits": {n: d.weight_bits for n, d in plan0.layers.items()},
        "predicted_acc": art.manifest["accuracy"]["predicted"],
        "fp32_acc": art.manifest["accuracy"]["fp32"],
        "sim_acc": art.manifest["accuracy"]["simulated"],
        "planned_bytes": art.manifest["planned_bytes"],
    }
    res["compute"] = art.manifest.get("compute")
    res["onnx"] = file_row(art, "onnx", default_variant(art, "onnx"), fp_onnx, x1)
    res["tflite"] = file_row(art, "tflite", default_variant(art, "tflite"), fp_tfl, x1)
    res["tflite_int8_full"] = file_row(art, "tflite", "int8-full", fp_tfl, x1)
    for key in ("onnx", "tflite", "tflite_int8_full"):
        res[key]["compile_s"] = round(wall, 2)
        res[key]["stages_s"] = stages
    plan = CompressionPlan.load(art.path / "plan.json")
    for d in plan.layers.values():
        d.fallback = None
    # the integer-compute files of the same plan (what compute: auto decided against on this host)
    arti = compile_model(
        spec,
        host,
        plan=plan,
        out_dir=out_dir,
        force=True,
        parity_gate=False,
        options=ExportOptions(tflite_variants=("int8",), compute="integer", onnx_int8_weights="uint8"),
    )
    res["onnx_integer"] = file_row(arti, "onnx", "qdq", fp_onnx, x1)
    res["tflite_integer"] = file_row(arti, "tflite", "int8", fp_tfl, x1)
    # the ONNX trade-off: int8 weights (uint8 x int8 kernels) on the same plan
    art8 = compile_model(
        spec,
        host,
        plan=plan,
        out_dir=out_dir,
        force=True,
        parity_gate=False,
        options=ExportOptions(formats=("onnx",), onnx_int8_weights="int8", compute="integer"),
    )
    res["onnx_int8_weights"] = file_row(art8, "onnx", "qdq", fp_onnx, x1)
    # ... and int7 weights (reduce range): the same fast kernels, exact, 8-bit layers on a 7-bit grid
    art7 = compile_model(
        spec,
        host,
        plan=plan,
        out_dir=out_dir,
        force=True,
        parity_gate=False,
        options=ExportOptions(formats=("onnx",), onnx_int8_weights="int7", compute="integer"),
    )
    res["onnx_int7_weights"] = file_row(art7, "onnx", "qdq", fp_onnx, x1)
    # a mixed int4 / int8 plan
    t = time.perf_counter()
    artm = compile_model(
        spec,
        host,
        plan=planm,
        out_dir=out_dir,
        force=True,
        parity_gate=False,
        options=ExportOptions(tflite_variants=("int8",)),
    )
    wall_m = time.perf_counter() - t + planm_s
    res["mixed"] = {
        "alpha": alpha,
        "planned_bytes": artm.manifest["planned_bytes"],
        "sim_acc": artm.manifest["accuracy"]["simulated"],
        "onnx": file_row(artm, "onnx", default_variant(artm, "onnx"), fp_onnx, x1),
        "tflite": file_row(artm, "tflite", default_variant(artm, "tflite"), fp_tfl, x1),
        "weight_bits": {n: d.weight_bits for n, d in planm.layers.items()},
        "compile_s": round(wall_m, 2),
        "stages_s": {**artm.stages_s, "plan": round(planm_s, 2)},
        "note": "planned from the same planner analysis as the default plan (plan_s excludes the shared analysis)",
    }
    return res


def summarize(models: dict[str, Any]) -> dict[str, Any]:
    """Targets over the default exports (ONNX and TFLite at the compile's compute choice, TFLite
    int8-full); the integer-compute files and the ONNX weight-storage options are reported beside
    them. The latency target covers the default CPU files: int8-full (integer-only accelerators)
    is integer by definition and is reported apart."""
    default = ("onnx", "tflite", "tflite_int8_full")
    options = ("onnx_integer", "tflite_integer", "onnx_int8_weights", "onnx_int7_weights")
    rows = []
    for name, r in models.items():
        for key in default + options:
            if key in r:
                rows.append((name, key, r[key]))
        for key in ("onnx", "tflite"):
            rows.append((name, f"mixed.{key}", r["mixed"][key]))
    dflt = [(n, k, x) for n, k, x in rows if k in ("onnx", "tflite", "mixed.onnx", "mixed.tflite")]
    exact = [(n, k, x) for n, k, x in rows if k != "onnx_int8_weights"]
    checks = {
        "agreement_ge_0.99": all(x["agreement"] >= 0.99 for n, k, x in rows if k != "onnx_int8_weights"),
        "acc_within_0.3pp_of_simulation": all(
            abs(x["acc_minus_sim_pp"]) <= 0.3 for n, k, x in rows if k != "onnx_int8_weights"
        ),
        "bytes_within_10pct": {
            f"{n}.{k}": round(x["bytes_ratio"], 3) for n, k, x in rows if abs(x["bytes_ratio"] - 1) > 0.10
        },
        "int8_not_5pct_slower_default": {
            f"{n}.{k}": round(x["latency_ratio_vs_fp32"], 3)
            for n, k, x in dflt
            if x["latency_ratio_vs_fp32"] > 1.05
        },
        "int8_full_ratio": {
            f"{n}.{k}": round(x["latency_ratio_vs_fp32"], 3) for n, k, x in rows if k == "tflite_int8_full"
        },
        # the target: the widest zoo model's default file reaches <= 0.8x fp32 in at least one runtime
        "widest_default_ratio": min(
            (round(x["latency_ratio_vs_fp32"], 3) for n, k, x in dflt if n == "resnet" and "mixed" not in k),
            default=None,
        ),
        "resnet_best_exact_ratio": min(
            (round(x["latency_ratio_vs_fp32"], 3), k) for n, k, x in exact if n == "resnet"
        )
        if any(n == "resnet" for n, _, _ in exact)
        else None,
    }
    table = [
        {
            "model": n,
            "file": k,
            **{
                f: x[f]
                for f in (
                    "bytes",
                    "planned_bytes",
                    "bytes_ratio",
                    "agreement",
                    "sqnr_db",
                    "acc",
                    "sim_acc",
                    "latency_ratio_vs_fp32",
                    "latency_ms",
                    "fp32_latency_ms",
                )
            },
        }
        for n, k, x in rows
    ]
    return {"checks": checks, "table": table}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5,conv1d,resnet,mobilenetv2")
    ap.add_argument("--method", default="hessian")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "export.json"))
    args = ap.parse_args()
    from edge_compress.artifact import tool_versions

    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "load_avg_start": os.getloadavg(),
        },
        "versions": tool_versions(),
        "method": args.method,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            t = time.perf_counter()
            result["models"][name] = bench_model(name, args.method, args.alpha, Path(tmp))
            r = result["models"][name]
            print(
                f"{name}: "
                + ", ".join(
                    f"{k} agree {r[k]['agreement']:.4f} acc {r[k]['acc']:.4f} bytes {r[k]['bytes']}/{r[k]['planned_bytes']} "
                    f"lat x{r[k]['latency_ratio_vs_fp32']:.2f}"
                    for k in ("onnx", "tflite", "onnx_integer", "tflite_integer", "onnx_int7_weights")
                )
                + f" ({time.perf_counter() - t:.0f}s)",
                flush=True,
            )
    result["machine"]["load_avg_end"] = os.getloadavg()
    result["summary"] = summarize(result["models"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from edge_compress.compiler import _sanitize

    out.write_text(json.dumps(_sanitize(result), indent=2, sort_keys=True) + "\n")
    print(json.dumps(result["summary"]["checks"], indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
