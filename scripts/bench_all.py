#!/usr/bin/env python3
"""Refresh BENCHMARKS.md from every benchmarks/*.json (optionally re-running the benchmarks first).

    python scripts/bench_all.py            # only regenerate BENCHMARKS.md from the JSON files
    python scripts/bench_all.py --run      # run every scripts/bench_*.py (with --quick if --quick), then regenerate

Each section lists the figures a benchmark's issue targets, the target, and whether it is met,
followed by the rest of the scalar figures; the date and machine come from the JSON itself (or the
file's modification time when a benchmark did not record them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"

# benchmark files written by scripts not named bench_<stem>.py
SCRIPTS = {
    "size_model": "fit_size_model.py",
    "reproduction": "reproduce.py",
    "integer_kernels": "fit_integer_kernels.py",
}

# (json file stem, key path with * wildcards, comparison, target, description)
TARGETS: list[tuple[str, str, str, float, str]] = [
    (
        "quant",
        "models.*.noise_spearman_sqnr",
        ">=",
        0.85,
        "noise model Spearman (predicted vs measured output noise)",
    ),
    ("quant", "models.*.noise_mae_pp", "<=", 1.0, "noise model MAE of predicted accuracy drop (pp)"),
    (
        "quant",
        "models.*.beats_random_frac",
        ">=",
        0.9,
        "ILP plan at least as accurate as random equal-size plans on test (fraction)",
    ),
    (
        "quant",
        "targets.*.mixed_0.5_within_1pp_of_fp32",
        "true",
        0,
        "mixed plan at alpha=0.5 within 1 pp of fp32 (test split)",
    ),
    (
        "quant",
        "targets.*.mixed_0.5_above_int4",
        "true",
        0,
        "mixed plan at alpha=0.5 above uniform int4 (ours)",
    ),
    (
        "quant",
        "targets.*.mixed_0.5_above_peer_int4",
        "true",
        0,
        "mixed plan at alpha=0.5 above every peer's int4",
    ),
    ("quant", "ilp_solve_s_200_layers", "<", 1.0, "ILP solve time, 200 layers (s)"),
    ("quant", "seed_variance_ratio", "~", 4.0, "noise variance ratio step vs step/2 (seed: 4)"),
    ("export", "models.*.*.agreement", ">=", 0.99, "top-1 agreement of exported file vs simulation"),
    (
        "export",
        "models.*.onnx_int8_weights.agreement",
        "info",
        0.0,
        "top-1 agreement, forced int8 weights (inexact by design on AVX2 without VNNI: uint8 x int8 sums saturate)",
    ),
    # the target applies to the files a compile produces (compute chosen for the profile); the
    # forced integer / weight-only variants are shown for comparison with ARM targets
    ("export", "models.*.onnx.latency_ratio_vs_fp32", "<=", 1.05, "exported latency / fp32 (default ONNX)"),
    (
        "export",
        "models.*.tflite.latency_ratio_vs_fp32",
        "<=",
        1.05,
        "exported latency / fp32 (default TFLite)",
    ),
    (
        "export",
        "summary.checks.widest_default_ratio",
        "<=",
        0.8,
        "widest zoo model (resnet): best default file latency / fp32, either runtime",
    ),
    *(
        ("export", f"models.*.{v}.latency_ratio_vs_fp32", "info", 0.0, f"latency / fp32, forced variant {v}")
        for v in (
            "onnx_integer",
            "onnx_int8_weights",
            "onnx_int7_weights",
            "tflite_integer",
            "tflite_int8_full",
        )
    ),
    ("prune", "models.*.prune.0.5.group_lasso.flops_ratio", "~", 0.5, "achieved FLOPs ratio at budget 0.5"),
    *(
        row
        for m in ("resnet", "mobilenetv2")
        for row in (
            (
                "prune",
                f"summary.{m}.0.5.gl_acc_drop_pp",
                "<=",
                1.5,
                "group lasso at 0.5 FLOPs: accuracy lost vs fp32 (pp, mean over seeds)",
            ),
            (
                "prune",
                f"summary.{m}.0.5.gl_minus_l1_pp",
                ">",
                0.0,
                "group lasso minus L1 one-shot at 0.5 FLOPs (pp, mean over seeds)",
            ),
            ("prune", f"summary.{m}.0.5.gl_minus_l1_pp_se", "info", 0, "its standard error over seeds (pp)"),
        )
    ),
    ("runners", "overhead_pct", "<=", 1.0, "agent overhead vs bare loop (%)"),
    ("runners", "cv_median_pct", "<=", 3.0, "CV of the median over 5 runs (%, the median of 3 sets)"),
    ("runners", "cv_median_pct_sets", "info", 0, "the 3 sets' CVs (%)"),
    ("runners", "cv_median_pct_by_min_duration_s.*", "info", 0, "the same CV with runs of this length (s)"),
    (
        "runners",
        "cv_median_over_reference_pct",
        "info",
        0,
        "CV of the same runs' medians over the host-speed reference (%)",
    ),
    ("runners", "push_cached_ratio", "<=", 0.1, "cached push time / first push time"),
    ("runners", "parallel_wall_ratio.8", "<=", 1.5, "8 targets in parallel: wall time / one target"),
    ("throttle", "imm_detect_delay_samples", "<=", 10, "IMM detection delay (samples, median)"),
    ("throttle", "imm_false_alarm_rate", "<=", 0.01, "IMM false-alarm rate on stationary series"),
    ("nightly", "false_positive_runs", "<=", 0, "false positives in 10 unchanged nightly runs"),
    ("nightly", "detected_slowdown_pct", "<=", 5, "smallest reliably detected slowdown (%)"),
    ("costmodel", "predictor.within10_pct", ">=", 90, "held-out latency predictions within +-10% (%)"),
    ("costmodel", "predictor.baseline_within10_pct", "info", 0, "FLOPs-only baseline within +-10% (%)"),
    ("costmodel", "select.mean_regret_pp", "<=", 0.5, "selection regret vs exhaustive (pp)"),
    ("lab", "speedup_3_over_1", ">=", 2.5, "cells per minute, 3 lab nodes / 1 node"),
    ("lab", "overhead_s_per_cell", "<=", 0.5, "Ray scheduling overhead per cell (s)"),
    (
        "integer_kernels",
        "fit.mape_pct",
        "info",
        0,
        "per-kernel integer/float model: mean error of the predicted ratio (%)",
    ),
    (
        "integer_kernels",
        "zoo.*.predicted_integer_over_float",
        "info",
        0,
        "predicted integer / weight-only latency, uniform int8 (measured: export onnx_int7_weights)",
    ),
    ("size_model", "fit.*.max_abs_err_pct", "<=", 10, "file-size model: max error on the zoo exports (%)"),
    ("quant", "models.*.mixed_acc.0.5", "info", 0, "mixed precision at alpha=0.5: accuracy"),
    ("quant", "models.*.int4_acc", "info", 0, "uniform int4 (ours: GPTQ rounding, bias-corrected): accuracy"),
    (
        "quant",
        "models.*.int4_acc_nearest_rounding",
        "info",
        0,
        "uniform int4 rounded to nearest (bias-corrected): accuracy",
    ),
    (
        "quant",
        "models.*.int4_noise_nearest_over_gptq",
        "info",
        0,
        "uniform int4: output noise power rounded to nearest over GPTQ's (x)",
    ),
    (
        "quant",
        "models.*.mixed_acc_nearest_rounding.0.5",
        "info",
        0,
        "mixed plan at alpha=0.5 rounded to nearest: accuracy",
    ),
    (
        "quant",
        "models.*.int4_acc_no_bias_correction",
        "info",
        0,
        "uniform int4 without bias correction: accuracy",
    ),
    (
        "quant",
        "models.*.beats_random_frac_not_significantly_worse",
        "info",
        0,
        "ILP plan at alpha=0.5: random plans not significantly more accurate (McNemar p >= 0.05) (fraction)",
    ),
    (
        "quant",
        "models.*.beats_random_by_alpha.*.acc",
        "info",
        0,
        "ILP plan at least as accurate as random plans, by budget alpha (fraction)",
    ),
    (
        "quant",
        "targets_no_bias_correction.*.mixed_0.5_above_int4",
        "info",
        0,
        "same run without bias correction: mixed plan above uniform int4",
    ),
    (
        "quant",
        "targets_no_bias_correction.*.mixed_0.5_above_peer_int4",
        "info",
        0,
        "same run without bias correction: mixed plan above every peer's int4",
    ),
    (
        "quant",
        "models.*.no_bias_correction.beats_random_frac",
        "info",
        0,
        "same run without bias correction: ILP plan at least as accurate as random plans (fraction)",
    ),
    (
        "quant",
        "models.*.noise_sqnr_err_db.mean_abs",
        "info",
        0,
        "noise model SQNR error on the test split, mean absolute, pairwise prediction (dB)",
    ),
    (
        "quant",
        "models.*.noise_sqnr_err_db.std",
        "info",
        0,
        "noise model SQNR error spread over random plans, pairwise prediction (default) (dB)",
    ),
    (
        "quant",
        "models.*.noise_sqnr_err_db_coherent.std",
        "info",
        0,
        "noise model SQNR error spread, coherent prediction (no measured pairs) (dB)",
    ),
]


# Matches of a target's pattern that are not held to it (shown by their own "info" row instead).
NOT_TARGETED: dict[tuple[str, str], tuple[str, ...]] = {
    ("export", "models.*.*.agreement"): ("onnx_int8_weights",),
}


def _match(data: Any, path: list[str], prefix: str = "") -> list[tuple[str, Any]]:
    if not path:
        return [(prefix, data)]
    head, rest = path[0], path[1:]
    if not isinstance(data, dict):
        return []
    # keys may themselves contain dots (e.g. "0.5"): try the longest literal match first
    out = []
    if head == "*":
        for k, v in data.items():
            out += _match(v, rest, f"{prefix}.{k}" if prefix else k)
        return out
    for n in range(len(path), 0, -1):
        key = ".".join(path[:n])
        if key in data:
            return _match(data[key], path[n:], f"{prefix}.{key}" if prefix else key)
    return out


def _ok(value: Any, op: str, target: float) -> str:
    if op == "true":  # a pass / fail flag the benchmark computed itself (None: not applicable)
        return "n/a" if not isinstance(value, bool) else ("met" if value else "**missed**")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "n/a"
    if op == ">=":
        good = value >= target
    elif op == "<=":
        good = value <= target
    elif op == "<":
        good = value < target
    elif op == ">":
        good = value > target
    else:  # "~": within 10%
        good = abs(value - target) <= 0.1 * abs(target)
    return "met" if good else "**missed**"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _scalars(data: Any, prefix: str = "", depth: int = 0, limit: int = 60) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(data, dict) and depth < 6:
        for k, v in data.items():
            if k in ("machine", "environment", "date", "notes"):
                continue
            out += _scalars(v, f"{prefix}.{k}" if prefix else str(k), depth + 1, limit)
    elif isinstance(data, (int, float, bool)) or (isinstance(data, str) and len(data) < 80):
        out.append((prefix, data))
    return out[:limit] if depth == 0 else out


def render() -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `scripts/bench_all.py` from `benchmarks/*.json`; each benchmark is a `scripts/bench_*.py`",
        "script that compares against peer tools in the same run (ratios, not absolute times).",
        "Each section says when it was measured. The x86 host's CPU has changed between dates (the",
        "2026-11-29 runs are on an AMD EPYC Zen 1, earlier ones on another AVX2 host), so compare timing",
        "figures within a section, not across sections of different dates.",
        "",
    ]
    files = sorted(BENCH_DIR.glob("*.json"))
    if not files:
        lines.append("_No benchmark has been run yet._")
    for f in files:
        try:
            data = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            lines += [f"## {f.stem}", "", f"_unreadable: {e}_", ""]
            continue
        date = data.get("date") or dt.datetime.fromtimestamp(f.stat().st_mtime).strftime("%Y-%m-%d")
        machine = data.get("machine") or data.get("environment") or "unrecorded"
        if isinstance(machine, dict):
            machine = ", ".join(f"{k}={v}" for k, v in machine.items())
        script = SCRIPTS.get(f.stem, f"bench_{f.stem}.py")
        lines += [f"## {f.stem}", "", f"Measured {date} on {machine}. Script: `scripts/{script}`.", ""]
        rows = [t for t in TARGETS if t[0] == f.stem]
        if rows:
            lines += ["| figure | value | target | status |", "|---|---|---|---|"]
            for _, key, op, target, desc in rows:
                for path, value in _match(data, key.split(".")):
                    if op != "info" and any(
                        x in path.split(".") for x in NOT_TARGETED.get((f.stem, key), ())
                    ):
                        continue
                    if op == "info":
                        lines.append(f"| {desc} (`{path}`) | {_fmt(value)} | | context |")
                    else:
                        want = "true" if op == "true" else f"{op} {target:g}"
                        lines.append(
                            f"| {desc} (`{path}`) | {_fmt(value)} | {want} | {_ok(value, op, target)} |"
                        )
            lines.append("")
        notes = data.get("notes")
        if notes:
            lines += [f"> {n}" for n in (notes if isinstance(notes, list) else [notes])] + [""]
        sc = _scalars(data)
        if sc:
            lines += ["<details><summary>all figures</summary>", "", "| key | value |", "|---|---|"]
            lines += [f"| `{k}` | {_fmt(v)} |" for k, v in sc]
            lines += ["", "</details>", ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="store_true", help="run every scripts/bench_*.py first")
    ap.add_argument("--quick", action="store_true", help="pass --quick to the benchmarks")
    args = ap.parse_args()
    if args.run:
        for script in sorted((ROOT / "scripts").glob("bench_*.py")):
            if script.name == "bench_all.py":
                continue
            cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
            print(f"==> {' '.join(cmd)}", flush=True)
            r = subprocess.run(cmd, cwd=ROOT)
            if r.returncode != 0:
                print(f"warning: {script.name} exited {r.returncode}", file=sys.stderr)
    (ROOT / "BENCHMARKS.md").write_text(render())
    print(f"wrote {ROOT / 'BENCHMARKS.md'} from {len(list(BENCH_DIR.glob('*.json')))} benchmark files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
