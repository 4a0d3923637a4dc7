#!/usr/bin/env python
"""Benchmark the nightly regression pipeline on two loopback sshd targets -> benchmarks/nightly.json.

Phases (all through ``run_nightly`` and a real SQLite store, targets measured in parallel):

1. false positives: a baseline run, then N repeated runs of the unchanged suite (clean runs are
   accepted, as a CI job would do) -> ``false_positive_runs`` (target 0);
2. detection: the model file replaced by a deliberately slowed variant (the middle conv layer
   widened; of a ladder of widenings timed in-process here, the one whose measured slowdown is
   closest to 2 / 5 / 10 / 20 %; its measured slowdown is reported), R repetitions per size on
   both targets -> ``detected_slowdown_pct``: the smallest slowdown flagged in every cell (target
   5 %), with the practical threshold ``--threshold`` (default 3 %). The paired re-measure runs
   both models in one agent process (many short blocks: the suite's ``block_*`` settings);
3. store size per 1,000 measurements (``store_bytes_per_1k``);
4. a cold run (empty caches: compiler export cache, artifacts, target work dirs; trained zoo
   weights and data sets kept) against a fully cached
   re-run (``cached_rerun_s``: median of three re-runs, vs ``cold_run_s``; target cached <= 0.2 x
   cold). This uses the
   compiler on a zoo model when ``edge_compress.compiler`` is available, else raw model files.

Usage: python scripts/bench_nightly.py [--quick] [--out benchmarks/nightly.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

CHANNELS, SIZE, LAYERS = 32, 16, 20  # 8 extra channels in one layer pair = +2.5 % MACs
SLOWDOWNS = (2, 5, 10, 20)
LADDER = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128)  # extra channels tried for the sizes


# ---------------------------------------------------------------------------------------------
# models


def make_model(
    path: Path, extra_pct: float = 0.0, seed: int = 0, extra_channels: int | None = None
) -> dict[str, Any]:
    """A conv stack (LAYERS x 3x3 conv + ReLU, CHANNELS channels, SIZE x SIZE) whose middle layer is
    widened by ``k`` output channels (and the next layer by ``k`` inputs) so that the extra MACs are
    about ``extra_pct`` % of the stack's: a slowdown of known cost with no extra operators. ``k`` is
    a multiple of 8 (2.5 % steps here), so a requested 2 % becomes 2.5 %."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c, hw = CHANNELS, SIZE * SIZE
    base_macs = LAYERS * 9 * c * c * hw
    k = int(round(extra_pct / 100 * base_macs / (18 * c * hw))) if extra_pct > 0 else 0
    k = max(8, 8 * round(k / 8)) if k else 0  # whole SIMD blocks: odd channel counts take slower kernels
    if extra_channels is not None:
        k = extra_channels
    mid = LAYERS // 2
    nodes, inits = [], []
    cur = "x"
    for i in range(LAYERS):
        cout = c + k if i == mid else c
        cin = c + k if i == mid + 1 else c
        w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [cur, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        cur = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [cur], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    inits.append(numpy_helper.from_array(rng.standard_normal((c, 10)).astype(np.float32), "fc"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    extra = 18 * k * c * hw
    return {
        "path": str(path),
        "extra_channels": k,
        "nominal_pct": 100.0 * extra / base_macs,
        "macs": base_macs + extra,
    }


def measured_slowdown(base: Path, slow: Path, rounds: int = 60, block_s: float = 0.05) -> float:
    """Actual slowdown of ``slow`` over ``base`` (percent): the product's own paired measurement
    (one agent process, alternating short blocks, as the nightly's re-measure runs it), the
    geometric mean of the per-round median ratios."""
    from runners.base import RunRequest
    from runners.local import LocalRunner

    m = LocalRunner("reference").run(
        RunRequest(
            str(base),
            min_count=5,
            min_duration_s=block_s,
            warmup=20,
            paired_model_path=str(slow),
            paired_rounds=rounds,
            detect_throttle=False,
            energy=False,
        )
    )
    if not m.ok:
        raise RuntimeError(f"reference measurement failed: {m.error}")
    by: dict[int, dict[str, float]] = {}
    for b in m.extra["paired_blocks"]:
        by.setdefault(int(b["round"]), {})[b["role"]] = b["result"]["stats"]["median_ms"]
    logs = [np.log(d["candidate"] / d["baseline"]) for d in by.values() if len(d) == 2]
    return 100.0 * (float(np.exp(np.mean(logs))) - 1.0)


# ---------------------------------------------------------------------------------------------
# nightly helpers


def write_suite(
    path: Path,
    models: list[Any],
    targets: list[str],
    *,
    compile_: list[dict[str, Any]],
    measure: dict[str, Any],
    thresholds: dict[str, Any],
    name: str,
    interleave: dict[str, Any] | None = None,
) -> Path:
    interleave = interleave or {"rounds": 6, "max_rounds": 10, "trigger": 0.5, "min_duration_s": 0.3}
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "models": models,
                "compile": compile_,
                "targets": targets,
                "measure": measure,
                "thresholds": thresholds,
                "interleave": interleave,
            },
            sort_keys=False,
        )
    )
    return path


def nightly(
    suite_path: Path, inv: Path, store: Any, *, accept: bool = False, artifacts: Path | None = None
) -> Any:
    from edge_compress.nightly import run_nightly
    from edge_compress.suite import load_suite

    suite = load_suite(suite_path, inventory=inv)
    return run_nightly(suite, store=store, inventory=inv, accept=accept, artifacts_dir=artifacts)


def cell_summary(res: Any) -> list[dict[str, Any]]:
    out = []
    for v in res.cells:
        med = next((m for m in v.get("metrics", []) if m["metric"] == "latency_median"), None)
        out.append(
            {
                "key": v["key"],
                "verdict": v["verdict"],
                "evidence": v.get("evidence"),
                "median_effect_pct": None
                if not med or med["effect_pct"] is None
                else round(med["effect_pct"], 2),
                "median_ci_pct": None
                if not med or not med.get("ci_pct")
                else [round(x, 2) for x in med["ci_pct"]],
                "median_verdict": med["verdict"] if med else None,
                "regressed_metrics": [
                    m["metric"] for m in v.get("metrics", []) if m["verdict"] == "regression"
                ],
            }
        )
    return out


DETECTION_RULE = (
    "cell verdict 'regression' on a timing metric: latency_median, latency_p99, or energy (here an "
    "estimate from the profile's power model x the measured loop time); bytes is disabled (1000 %)"
)


def is_detected(cell: dict[str, Any]) -> bool:
    """The slowdown was flagged: a regression verdict on a timing metric (see DETECTION_RULE)."""
    return cell["verdict"] == "regression" and bool(
        {"latency_median", "latency_p99", "energy"} & set(cell["regressed_metrics"])
    )


def paired_noise(store: Any, run_ids: list[int], rounds: int, alpha: float, looks: int = 2) -> dict[str, Any]:
    """Per-round noise of the paired comparison of identical artifacts (sd of the log ratio of
    round medians), and the slowdown it lets ``rounds`` paired rounds detect with 95 % power."""
    from scipy import stats as st

    logs = []
    for run_id in run_ids:
        rows = store.measurements(run_id=run_id, kind="interleaved")
        by: dict[tuple[str, int], dict[str, float]] = {}
        for r in rows:
            if r["round"] is not None and r["round"] >= 0 and r["median_ms"]:
                by.setdefault((r["cell_key"], r["round"]), {})[r["role"]] = r["median_ms"]
        logs += [np.log(d["candidate"] / d["baseline"]) for d in by.values() if len(d) == 2]
    if len(logs) < 3:
        return {"rounds_observed": len(logs)}
    sd = float(np.std(logs, ddof=1))
    t = float(st.t.ppf(1 - alpha / looks, rounds - 1)) + float(st.norm.ppf(0.95))
    return {
        "rounds_observed": len(logs),
        "mean_log_ratio_pct": round(100 * float(np.mean(logs)), 2),
        "sd_log_ratio_pct": round(100 * sd, 2),
        "detectable_pct_at_rounds": round(100 * (np.exp(t * sd / np.sqrt(rounds)) - 1), 1),
        "rounds": rounds,
    }


def db_size(path: Path) -> int:
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (about half the time)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "nightly.json"))
    ap.add_argument("--fp-runs", type=int, default=None, help="unchanged runs (default 10)")
    ap.add_argument("--reps", type=int, default=None, help="runs per slowdown size (default 2, quick 1)")
    ap.add_argument("--threshold", type=float, default=3.0, help="practical latency_median threshold (%%)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up (stop sshd) on kill
    fp_runs = args.fp_runs if args.fp_runs is not None else 10
    reps = args.reps if args.reps is not None else (1 if args.quick else 2)
    t_start = time.monotonic()

    from edge_compress.store import ResultStore
    from tests.sshd import start_many

    work = Path(tempfile.mkdtemp(prefix="bench-nightly-"))
    servers = start_many(2, work / "sshd")
    result: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "setup": {
            "targets": "2 loopback OpenSSH servers (sshd on 127.0.0.1), measured in parallel, threads=1",
            "model": f"conv stack {LAYERS} x 3x3 conv, {CHANNELS} channels, {SIZE}x{SIZE}, ONNX Runtime",
            "quick": args.quick,
            "measure": "threads 1, min_count 100, min_duration 0.5 s, warmup 20; paired re-measure in one agent process, 0.05 s blocks, 40 rounds (up to 120)",
        },
    }
    try:
        load_start = os.getloadavg()
        inv = work / "inventory.yaml"
        for i, s in enumerate(servers):
            s.write_inventory(
                inv, f"board{i}", python=sys.executable, workdir=str(work / f"remote{i}"), profile="host"
            )
        targets = ["board0", "board1"]
        model = work / "model.onnx"
        make_model(work / "base.onnx")
        shutil.copy(work / "base.onnx", model)
        measure = {
            "threads": 1,
            "min_count": 100,
            "min_duration_s": 0.5,
            "warmup": 20,
            "cooldown_s": 1.0,
            "timeout_s": 300,
        }
        # one agent process per paired re-measure (ssh targets): many short blocks
        max_rounds = 60 if args.quick else 120
        interleave = {
            "rounds": 6,
            "max_rounds": 10,
            "trigger": 0.5,
            "min_duration_s": 0.3,
            "block_s": 0.05,
            "block_rounds": 40,
            "max_block_rounds": max_rounds,
        }
        # bytes: the slowed variants are bigger too; this benchmark is about latency detection
        thresholds = {"latency_median": f"{args.threshold}%", "alpha": 0.01, "bytes": "1000%"}
        suite = write_suite(
            work / "suite.yaml",
            ["model.onnx"],
            targets,
            compile_=[{"name": "asis", "method": "none"}],
            measure=measure,
            thresholds=thresholds,
            name="bench",
            interleave=interleave,
        )
        db = work / "bench.sqlite"
        store = ResultStore(db)

        # 1. false positives ------------------------------------------------------------------
        print(f"[fp] baseline + {fp_runs} unchanged runs on {targets}", flush=True)
        t0 = time.monotonic()
        base_res = nightly(suite, inv, store, accept=True)
        assert base_res.exit_code == 0, base_res.cells
        fp_rows, fp_count = [], 0
        for i in range(fp_runs):
            r = nightly(suite, inv, store)
            if r.exit_code == 0:
                store.accept_run(r.run_id)
            fp_count += r.exit_code == 1
            row = {
                "run": r.run_id,
                "exit_code": r.exit_code,
                "wall_s": round(r.wall_s, 1),
                "cells": cell_summary(r),
            }
            fp_rows.append(row)
            print(
                f"  run {i + 1}: exit {r.exit_code} "
                + ", ".join(
                    f"{c['verdict']}/{c['evidence']}/{c['median_effect_pct']}%" for c in row["cells"]
                ),
                flush=True,
            )
        result["false_positives"] = {
            "paired_noise": paired_noise(store, [r["run"] for r in fp_rows], max_rounds, 0.01),
            "runs": fp_runs,
            "false_positive_runs": fp_count,
            "interleaved_cells": sum(c["evidence"] == "interleaved" for r in fp_rows for c in r["cells"]),
            # the mirror image of a false positive: an unchanged model reported faster (exit 0, but noise in
            # the report)
            "false_improvement_cells": sum(
                c["verdict"] == "improvement" for r in fp_rows for c in r["cells"]
            ),
            "cells": sum(len(r["cells"]) for r in fp_rows),
            "wall_s": round(time.monotonic() - t0, 1),
            "per_run": fp_rows,
        }

        # 2. detection ------------------------------------------------------------------------
        print(f"[detect] slowdowns {SLOWDOWNS} %, {reps} runs each", flush=True)
        t0 = time.monotonic()
        sizes = []
        # The extra MACs of a widened layer do not cost their share of time (onnxruntime's blocked
        # kernels run 8 more channels almost for free), so each size is the variant whose slowdown
        # *measured here* is closest to the nominal one (a ladder of widenings, in-process timing).
        ladder = []
        for k in LADDER:
            make_model(work / f"k{k}.onnx", extra_channels=k)
            ladder.append((k, measured_slowdown(work / "base.onnx", work / f"k{k}.onnx")))
        print("  ladder (extra channels, measured %): " + ", ".join(f"{k}: {m:.1f}" for k, m in ladder))
        result["detection_ladder"] = [{"extra_channels": k, "measured_pct": round(m, 2)} for k, m in ladder]
        for pct in SLOWDOWNS:
            # the narrowest widening measured at or above the size (closest below when none is)
            above = [km for km in ladder if km[1] >= pct]
            k = min(above)[0] if above else max(ladder, key=lambda km: km[1])[0]
            info = make_model(work / f"slow{pct}.onnx", extra_channels=k)
            info["measured_pct"] = round(measured_slowdown(work / "base.onnx", work / f"slow{pct}.onnx"), 2)
            detected = total = 0
            runs = []
            for _ in range(reps):
                shutil.copy(work / f"slow{pct}.onnx", model)
                try:
                    r = nightly(suite, inv, store)
                finally:
                    shutil.copy(work / "base.onnx", model)
                for c in cell_summary(r):
                    total += 1
                    detected += is_detected(c)
                runs.append({"run": r.run_id, "exit_code": r.exit_code, "cells": cell_summary(r)})
            row = {
                "nominal_pct": pct,
                "extra_macs_pct": round(info["nominal_pct"], 2),
                "measured_pct": info["measured_pct"],
                "cells": total,
                "detected": detected,
                "rate": detected / total,
                "runs": runs,
            }
            sizes.append(row)
            print(f"  {pct}% (measured {info['measured_pct']}%): {detected}/{total} detected", flush=True)
        # the size is what the slowed file measurably costs here, not its label
        reliable = [round(s["measured_pct"], 1) for s in sizes if s["rate"] == 1.0 and s["measured_pct"] > 0]
        result["detection"] = {
            "rule": DETECTION_RULE,
            "threshold_pct": args.threshold,
            "alpha": 0.01,
            "reps_per_size": reps,
            "sizes": sizes,
            "detected_slowdown_pct": min(reliable) if reliable else None,
            "wall_s": round(time.monotonic() - t0, 1),
        }

        # 3. store size -----------------------------------------------------------------------
        counts = store.counts()
        size = db_size(db)
        n_meas = counts["measurements"]
        result["store"] = {
            "bytes": size,
            "measurements": n_meas,
            "samples": counts["samples"],
            "samples_per_measurement": round(counts["samples"] / max(n_meas, 1), 1),
            "store_bytes_per_1k": int(size / max(n_meas, 1) * 1000),
        }
        store.close()

        # 4. cold vs cached -------------------------------------------------------------------
        print("[cache] cold run vs fully cached re-run", flush=True)
        result["cache"] = cold_vs_cached(work, servers, measure)
    finally:
        for s in servers:
            s.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")

    fp = result["false_positives"]["false_positive_runs"]
    det = result["detection"]["detected_slowdown_pct"]
    cache = result["cache"]
    result["summary"] = {
        "false_positive_runs": fp,
        "false_positive_runs_target": 0,
        "detected_slowdown_pct": det,
        "detected_slowdown_pct_target": 5,
        "paired_round_noise_sd_pct": result["false_positives"]["paired_noise"].get("sd_log_ratio_pct"),
        "detectable_pct_at_max_rounds": result["false_positives"]["paired_noise"].get(
            "detectable_pct_at_rounds"
        ),
        "store_bytes_per_1k": result["store"]["store_bytes_per_1k"],
        "cold_run_s": cache["cold_run_s"],
        "cached_rerun_s": cache["cached_rerun_s"],
        "cached_over_cold": cache["cached_over_cold"],
        "cached_over_cold_target": 0.2,
        "load_average_at_start": [round(x, 2) for x in load_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.monotonic() - t_start, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {out}")
    return 0


def cold_vs_cached(work: Path, servers: list[Any], measure: dict[str, Any]) -> dict[str, Any]:
    """A cold run (fresh compiler cache, artifacts dir, store and target work dirs) and a re-run."""
    from edge_compress.store import ResultStore

    try:
        import edge_compress.compiler  # noqa: F401
        import edge_compress.modelspec  # noqa: F401

        compiler = True
    except ImportError:
        compiler = False
    cold = work / "cold"
    cold.mkdir()
    inv = cold / "inventory.yaml"
    for i, s in enumerate(servers):
        s.write_inventory(
            inv, f"board{i}", python=sys.executable, workdir=str(cold / f"remote{i}"), profile="host"
        )
    from edge_compress.zoo.data import cache_dir

    real_cache = cache_dir()
    if compiler:  # train the zoo model once, outside the timing: weights ship with a lab, compiles do not
        from edge_compress.zoo import load_zoo

        load_zoo("lenet5")
    for sub in ("zoo", "data"):  # a cold cache keeps trained weights and data sets, nothing else
        if (real_cache / sub).is_dir():
            shutil.copytree(real_cache / sub, cold / "cache" / sub)
    old_cache = os.environ.get("EDGE_COMPRESS_CACHE")
    os.environ["EDGE_COMPRESS_CACHE"] = str(cold / "cache")
    try:
        if compiler:
            models, compile_ = ["lenet5"], [{"name": "int8", "method": "hessian", "formats": ["onnx"]}]
        else:
            make_model(cold / "model.onnx")
            models, compile_ = ["model.onnx"], [{"name": "asis", "method": "none"}]
        quick = dict(measure, min_duration_s=0.2, min_count=50, warmup=5)
        suite = write_suite(
            cold / "suite.yaml",
            models,
            ["board0", "board1"],
            compile_=compile_,
            measure=quick,
            thresholds={},
            name="cache",
            interleave={"enabled": False},  # time compile / push / measure, not paired re-measures
        )
        with ResultStore(cold / "c.sqlite") as store:
            t0 = time.monotonic()
            r1 = nightly(suite, inv, store, accept=True, artifacts=cold / "artifacts")
            cold_s = time.monotonic() - t0
            reruns = []  # three cached re-runs: one is at the mercy of whatever else the host does
            for _ in range(3):
                t0 = time.monotonic()
                r2 = nightly(suite, inv, store, artifacts=cold / "artifacts")
                reruns.append(time.monotonic() - t0)
            cached_s = float(np.median(reruns))
    finally:
        if old_cache is None:
            os.environ.pop("EDGE_COMPRESS_CACHE", None)
        else:
            os.environ["EDGE_COMPRESS_CACHE"] = old_cache
    return {
        "compiler_used": compiler,
        "what": "zoo lenet5 compiled (method hessian, ONNX) for the host profile; cold = empty compiler "
        "and export caches, new artifacts dir, new target work dirs (agent and model pushed); the zoo "
        "weights and data sets are kept (trained beforehand)"
        if compiler
        else "raw ONNX file (edge_compress.compiler not available): cold = first artifact copy, agent and model push",
        "cold_run_s": round(cold_s, 2),
        "cached_rerun_s": round(cached_s, 2),
        "cached_reruns_s": [round(x, 2) for x in reruns],
        "cached_over_cold": round(cached_s / cold_s, 3),
        "cold_compiled": r1.compiled,
        "cached_compiled": r2.compiled,
        "cold_verdicts": r1.counts,
        "cached_verdicts": r2.counts,
    }


if __name__ == "__main__":
    sys.exit(main())
