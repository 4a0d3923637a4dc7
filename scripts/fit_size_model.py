#!/usr/bin/env python3
"""Fit the exported-file size model (edge_compress/export/size.py) on real exports.

Compiles the zoo models at several plans (all-int4, mixed, all-int8) for the ``host`` profile in
ONNX and TFLite, with integer compute (QDQ, static int8 / int8-full) and float compute (the
weight-only variants), measures every file, and fits the container overhead per format and variant
(``a x quantized channels + b x layers + c``, non-negative least squares) on top of the exact
parameter bytes. Writes the coefficients with the fit's errors and leave-one-model-out errors to
``edge_compress/export/size_model.json``, and the rows to ``benchmarks/size_model.json``.

Refit after upgrading onnxruntime, litert-torch or ai-edge-quantizer (their containers change).
Usage: scripts/fit_size_model.py [--models lenet5,conv1d,...] [--alphas 0,0.5,1] [--compute integer,float]
(keys not produced by the run keep their coefficients in size_model.json)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5,conv1d,resnet,mobilenetv2,inception")
    ap.add_argument("--alphas", default="0,0.5,1")
    ap.add_argument("--profile", default="host")
    ap.add_argument(
        "--compute", default="integer,float", help="compute precisions to export (both: all keys)"
    )
    args = ap.parse_args()

    from edge_compress import __version__
    from edge_compress.compiler import ExportOptions, compile_model
    from edge_compress.export import size
    from edge_compress.export.base import effective_plan
    from edge_compress.graph import extract_graph
    from edge_compress.modelspec import resolve_model
    from edge_compress.plan import CompressionPlan
    from edge_compress.profiles import load_profile
    from edge_compress.quant.fakequant import fold_batchnorm

    profile = load_profile(args.profile)
    rows: list[dict] = []
    skipped: list[dict] = []
    t0 = time.perf_counter()
    # compiled artifacts are cached by content hash, so a refit after a failed run is quick
    from edge_compress.zoo.data import cache_dir

    td = cache_dir() / "size-model-artifacts"
    for name in args.models.split(","):
        spec = resolve_model(name)
        graph = extract_graph(spec.model, spec.example_input(2))
        folded = dict(fold_batchnorm(spec.model).named_modules())
        biased = {li.name for li in graph.layers if getattr(folded.get(li.name), "bias", None) is not None}
        runs = [(float(x), c) for x in args.alphas.split(",") for c in args.compute.split(",")]
        for a, compute in runs:
            # float compute: the weight-only files only (int8-full is the same as with integer compute)
            variants = ("int8", "int8-full") if compute == "integer" else ("int8",)
            opts = ExportOptions(compute=compute, tflite_variants=variants, onnx_int8_weights="uint8")
            try:
                art = compile_model(
                    spec,
                    profile,
                    alpha=a,
                    formats=("onnx", "tflite"),
                    out_dir=td,
                    parity_gate=False,
                    options=opts,
                )
            except Exception as e:  # a model a runtime cannot load: report it, fit on the rest
                print(f"{name} alpha={a:g} {compute}: skipped ({str(e).splitlines()[0][:300]})")
                skipped.append({"model": name, "alpha": a, "error": str(e).splitlines()[0][:300]})
                continue
            plan = CompressionPlan.load(art.path / "plan.json")
            for fname, f in art.manifest["files"].items():
                lb = {n: (d["weight_bits"], d["act_bits"]) for n, d in art.manifest["layers"][fname].items()}
                eff = effective_plan(plan, lb)
                fmt = f["format"]
                rows.append(
                    {
                        "model": name,
                        "alpha": a,
                        "file": fname,
                        "key": size.key(fmt, f.get("variant")),
                        "bytes": int(f["bytes"]),
                        "payload": size.payload_bytes(
                            eff, graph, fmt, biased=biased, variant=f.get("variant")
                        ),
                        **size.counts(eff, graph),
                    }
                )
                print(f"{name} alpha={a:g} {fname}: {f['bytes']} bytes, payload {rows[-1]['payload']}")
    fitted = size.fit(rows)
    if size.COEFFS_FILE.exists():  # keys this run did not produce keep their fit
        old = json.loads(size.COEFFS_FILE.read_text())["models"]
        fitted = {**{k: v for k, v in old.items() if k not in fitted}, **fitted}
    versions = art.manifest.get("versions", {})
    size.COEFFS_FILE.write_text(
        json.dumps(
            {
                "note": "fitted by scripts/fit_size_model.py on real exports of the zoo models",
                "versions": versions,
                "models": fitted,
            },
            indent=1,
            sort_keys=True,
        )
        + "\n"
    )
    out = ROOT / "benchmarks" / "size_model.json"
    out.write_text(
        json.dumps(
            {
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "machine": {"platform": platform.platform(), "python": platform.python_version()},
                "edge_compress": __version__,
                "versions": versions,
                "fit": fitted,
                "rows": rows,
                "skipped": skipped,
                "wall_s": time.perf_counter() - t0,
            },
            indent=1,
        )
        + "\n"
    )
    for k, v in fitted.items():
        print(
            f"{k}: coef {v['coef']}  fit max err {v['max_abs_err_pct']:.1f}%  "
            f"leave-one-model-out max err {v['lomo_max_abs_err_pct']}%"
        )
    print(f"wrote {size.COEFFS_FILE} and {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
