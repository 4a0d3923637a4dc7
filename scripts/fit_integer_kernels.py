#!/usr/bin/env python3
"""Fit a profile's ``compute.integer_kernels.onnxruntime``: integer vs float kernel time per kernel shape.

Times single convolutions (8-128 channels, 8-32 pixels square, 1x1 and 3x3), depthwise convolutions
and matmuls as float ONNX files and as onnxruntime QDQ files (one thread, alternating blocks), fits
``integer_ms = float_ratio * float_ms + ns_per_output * outputs + us_per_kernel`` on the cost model's
float roofline (:mod:`edge_compress.export.kernel_fit`), and checks the fit on the zoo's models: the
predicted integer/float latency ratio of each model's uniform int8 file (``scripts/bench_export.py``
measures the real files).

Writes ``benchmarks/integer_kernels.json`` and prints the YAML block for the profile.
Usage: ``python scripts/fit_integer_kernels.py [--profile host] [--int8-weights int7] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def zoo_predictions(profile_name: str, model_fit) -> dict:
    """Per zoo model: the predicted latency of its uniform int8 integer file over its weight-only file
    under this fit (``scripts/bench_export.py`` measures the files: its ``onnx_integer`` rows)."""
    from edge_compress.export.compute import predict_ms
    from edge_compress.export.onnx import tiny_layers
    from edge_compress.graph import extract_graph
    from edge_compress.modelspec import resolve_model
    from edge_compress.plan import CompressionPlan
    from edge_compress.profiles import IntegerKernels, load_profile

    base = load_profile(profile_name)
    ik = IntegerKernels(**model_fit.to_profile("this fit"))
    compute = base.compute.model_copy(update={"integer_kernels": {"onnxruntime": ik}})
    profile = base.model_copy(update={"compute": compute})
    out = {}
    for name in ("lenet5", "conv1d", "resnet", "mobilenetv2", "inception"):
        spec = resolve_model(name)
        graph = extract_graph(spec.model, spec.example_input(1))
        plan = CompressionPlan.uniform(graph, name, profile.name, 8, 8)
        pred, _ = predict_ms(profile, graph, plan, "onnxruntime", tiny_layers(graph.layers, 32))
        out[name] = {"predicted_integer_over_float": pred["integer"] / pred["float"], "predicted_ms": pred}
        print(name, json.dumps(out[name]), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="host")
    ap.add_argument("--int8-weights", default="int7", choices=("int7", "int8", "uint8"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "integer_kernels.json"))
    ap.add_argument("--quick", action="store_true", help="a 5-kernel grid, short timings")
    ap.add_argument("--no-zoo", action="store_true", help="skip the zoo models' check")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from edge_compress.export import kernel_fit as kf
    from edge_compress.profiles import load_profile

    profile = load_profile(args.profile)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    grid = kf.QUICK_GRID if args.quick else kf.FULL_GRID
    fit, points = kf.measure(
        profile, grid, int8_weights=args.int8_weights, seconds=0.3 if args.quick else 1.0
    )
    for p in points:
        print(
            f"{p.kind:15s} c={p.channels:4d} side={p.side:3d} k={p.ksize}  int/float {p.ratio:.2f}",
            flush=True,
        )
    zoo = {} if args.no_zoo else zoo_predictions(args.profile, fit)
    result = {
        "profile": args.profile,
        "fit": {**fit.to_profile(""), "mape_pct": fit.mape_pct, "points": fit.points},
        "points": kf.points_json(points),
        "zoo": zoo,
        "seconds": time.perf_counter() - t0,
        "machine": {
            "date": date.today().isoformat(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "loadavg_start": list(load_before),
            "loadavg_end": list(os.getloadavg()),
        },
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    src = f"scripts/fit_integer_kernels.py {date.today().isoformat()} ({fit.points} kernels, ratio MAPE {fit.mape_pct:.0f}%)"
    print("\n  integer_kernels:\n    onnxruntime:")
    for k, v in fit.to_profile(src).items():
        print(f"      {k}: {json.dumps(v) if isinstance(v, str) else v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
