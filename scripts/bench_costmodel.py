#!/usr/bin/env python
"""Benchmark: how well the cost model predicts latency here, and how well `select` chooses.

Part 1 (predictor). Random architectures x plans (900 by default: widths, depths, kernel sizes,
strides, depthwise or not, 1-D / 2-D, linear heads; fp32 / int8 / int4 / mixed via QDQ ONNX) are exported,
timed on this machine (onnxruntime, batch 1, one thread; every sample paired with a reference
model run just before it, all models interleaved round by round) in several sessions, each
started once the load average is low, combined by medians, and profiled per operator. The
cost model is fitted on 70% and evaluated on the held-out 30%: fraction within +-10%
(``within10_pct``) and MAPE, next to a FLOPs-proportional baseline fitted on the same part, and
next to the same model fitted on whole-model timings only (without the operator profiles).

Part 2 (selection). For each zoo model, the candidate set of `select` is measured exhaustively
(interleaved); a tight latency budget is set between the fastest and the median candidate;
`select` runs with the calibrated cost model and the local runner in the loop; its choice is
compared with the best feasible candidate of the exhaustive search (regret, in accuracy points)
and its measurement count with the exhaustive count.

    python scripts/bench_costmodel.py            # full: 900 models, about 23 min on 2 cores
    python scripts/bench_costmodel.py --quick    # a few minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "costmodel.json"


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------
# random architectures


MAX_MACS = 6e6  # keeps runs short enough not to straddle scheduler slices on a shared host


def random_spec(rng: random.Random) -> dict[str, Any]:
    """A random sequential CNN: plain / depthwise / pointwise convs, residual and inverted-residual
    blocks, pools, then global pooling or flatten and 1-3 Linear layers."""
    dims = rng.choice([1, 2, 2, 2])
    if dims == 2:
        cin, size = rng.choice([1, 1, 3]), rng.choice([16, 24, 32, 32, 48])
    else:
        cin, size = rng.choice([1, 2, 4]), rng.choice([32, 40, 64, 128, 256])
    blocks = []
    c, s = cin, size
    for _ in range(rng.randint(1, 6)):
        r = rng.random()
        if c >= 8 and r < 0.15:
            blocks.append({"kind": "res", "c": c})
            continue
        if c >= 4 and r < 0.3:
            stride = 2 if s >= 8 and rng.random() < 0.5 else 1
            cout = rng.choice([c, c, 8, 16, 24, 32])
            blocks.append({"kind": "ir", "cout": cout, "stride": stride, "expand": rng.choice([2, 4])})
            c, s = cout, s // stride
            continue
        kind = rng.choice(["conv", "conv", "dw", "pw"]) if c >= 4 else "conv"
        k = 1 if kind == "pw" else rng.choice([3, 3, 5] + ([7] if dims == 1 else [1]))
        stride = 2 if s >= 8 and rng.random() < 0.4 else 1
        cout = c if kind == "dw" else rng.choice([4, 8, 12, 16, 24, 32, 48, 64, 96])
        pool = s // stride >= 8 and rng.random() < 0.25
        blocks.append(
            {"kind": kind, "k": k, "stride": stride, "cout": cout, "bn": rng.random() < 0.5, "pool": pool}
        )
        c = cout
        s = s // stride // (2 if pool else 1)
    head = [rng.choice([16, 32, 64, 128, 256]) for _ in range(rng.randint(0, 2))]
    gap = rng.random() < 0.5 or c * s**dims > 4096
    prec = rng.choices(["fp32", "int8", "int4", "mixed"], [0.3, 0.3, 0.2, 0.2])[0]
    return {
        "dims": dims,
        "cin": cin,
        "size": size,
        "layers": blocks,
        "head": head,
        "gap": gap,
        "precision": prec,
    }


def _ops(dims: int) -> tuple[Any, Any, Any]:
    from torch import nn

    return (
        (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d)
    )


def _blocks() -> tuple[type, type]:
    from torch import nn

    class Res(nn.Module):
        def __init__(self, c: int, dims: int) -> None:
            super().__init__()
            Conv, BN, _ = _ops(dims)
            self.conv1, self.bn1, self.relu1 = Conv(c, c, 3, 1, 1, bias=False), BN(c), nn.ReLU()
            self.conv2, self.bn2, self.relu2 = Conv(c, c, 3, 1, 1, bias=False), BN(c), nn.ReLU()

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.relu2(x + self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))

    class IR(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int, dims: int) -> None:
            super().__init__()
            Conv, BN, _ = _ops(dims)
            h = cin * expand
            self.res = stride == 1 and cin == cout
            self.expand, self.bn1, self.relu1 = Conv(cin, h, 1, bias=False), BN(h), nn.ReLU6()
            self.dw, self.bn2, self.relu2 = Conv(h, h, 3, stride, 1, groups=h, bias=False), BN(h), nn.ReLU6()
            self.project, self.bn3 = Conv(h, cout, 1, bias=False), BN(cout)

        def forward(self, x):  # noqa: ANN001, ANN202
            y = self.bn3(self.project(self.relu2(self.bn2(self.dw(self.relu1(self.bn1(self.expand(x))))))))
            return x + y if self.res else y

    return Res, IR


def build(spec: dict[str, Any]) -> Any:
    import torch
    from torch import nn

    dims = spec["dims"]
    Conv, BN, Pool = _ops(dims)
    Res, IR = _blocks()
    mods: list[nn.Module] = []
    c = spec["cin"]
    for L in spec["layers"]:
        if L["kind"] == "res":
            mods.append(Res(c, dims))
            continue
        if L["kind"] == "ir":
            mods.append(IR(c, L["cout"], L["stride"], L["expand"], dims))
            c = L["cout"]
            continue
        groups = c if L["kind"] == "dw" else 1
        mods.append(Conv(c, L["cout"], L["k"], L["stride"], L["k"] // 2, groups=groups, bias=not L["bn"]))
        if L["bn"]:
            mods.append(BN(L["cout"]))
        mods.append(nn.ReLU())
        if L["pool"]:
            mods.append(Pool(2))
        c = L["cout"]
    if spec["gap"]:
        mods.append(nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1))
    mods.append(nn.Flatten())
    body = nn.Sequential(*mods)
    x = torch.zeros(1, spec["cin"], *([spec["size"]] * dims))
    with torch.no_grad():
        feat = body(x).shape[1]
    head: list[nn.Module] = []
    for h in spec["head"]:
        head += [nn.Linear(feat, h), nn.ReLU()]
        feat = h
    head.append(nn.Linear(feat, 10))
    model = nn.Sequential(body, *head).eval()
    with torch.no_grad():  # non-trivial BN statistics so folding is exercised
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model, x


def plan_for(graph: Any, precision: str, rng: random.Random) -> Any:
    from edge_compress.plan import CompressionPlan

    if precision == "fp32":
        return CompressionPlan.uniform(graph, "random", "host", None, None)
    if precision == "int8":
        return CompressionPlan.uniform(graph, "random", "host", 8, 8)
    if precision == "int4":
        return CompressionPlan.uniform(graph, "random", "host", 4, 8)
    plan = CompressionPlan.uniform(graph, "random", "host", 8, 8)
    for d in plan.layers.values():  # float layers between quantized ones would be re-quantized by ORT
        d.weight_bits = rng.choice([4, 8])
    plan.method = "mixed"
    return plan


def generate(n: int, seed: int) -> Any:
    """The ``n`` random (spec, model, graph, plan, calibration batch) of ``seed``, deterministically."""
    import torch

    from edge_compress.graph import extract_graph

    torch.manual_seed(seed)
    rng = random.Random(seed)
    made = 0
    while made < n:
        spec = random_spec(rng)
        model, x = build(spec)
        graph = extract_graph(model, x)
        if graph.total_macs > MAX_MACS or graph.total_weight_params > 400_000:
            continue
        plan = plan_for(graph, spec["precision"], rng)
        calib = torch.randn(16, *x.shape[1:]).numpy()
        made += 1
        yield spec, model, graph, plan, calib


def make_dataset(n: int, workdir: Path, seed: int, log: Any) -> list[dict[str, Any]]:
    """Export ``n`` random models; returns records with the kernels and the file path."""
    from edge_compress.costmodel import kernels_of
    from edge_compress.costmodel_export import export_candidate

    recs = []
    t0 = time.monotonic()
    for spec, model, graph, plan, calib in generate(n, seed):
        path = workdir / f"rand{len(recs):03d}.onnx"
        _, how = export_candidate(model, plan, calib, path, use_project=False)
        recs.append(
            {
                "id": len(recs),
                "spec": spec,
                "path": str(path),
                "how": how,
                "kernels": [k.to_json() for k in kernels_of(graph, plan)],
                "macs": graph.total_macs,
            }
        )
        if len(recs) % 20 == 0:
            log(f"  exported {len(recs)}/{n} ({time.monotonic() - t0:.0f} s)")
    return recs


def refresh_kernels(recs: list[dict[str, Any]], seed: int) -> int:
    """Recompute a stored dataset's kernels with the current kernel description (its models and
    plans regenerated from the seed, no export); returns how many changed."""
    from edge_compress.costmodel import kernels_from_json, kernels_of

    changed = 0
    for r, (spec, _, graph, plan, _) in zip(recs, generate(len(recs), seed), strict=True):
        if spec != r["spec"]:
            raise SystemExit(f"the stored dataset's model {r['id']} is not the one seed {seed} generates")
        ks = kernels_of(graph, plan)
        changed += ks != kernels_from_json(r["kernels"])
        r["kernels"] = [k.to_json() for k in ks]
    return changed


def empty_model(path: Path) -> Path:
    """An Identity model: what one runtime call costs with nothing to compute."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def pick_reference(recs: list[dict[str, Any]]) -> str:
    """A small float model, run before every sample as the paired reference."""
    fp = [r for r in recs if r["spec"]["precision"] == "fp32"] or recs
    return min(fp, key=lambda r: abs(r["macs"] - 2e5))["path"]


def wait_for_load(max_load: float, max_wait_s: float, log: Any) -> dict[str, Any]:
    """Wait (polling) until the 1-minute load average is at most ``max_load``, at most ``max_wait_s``."""
    t0 = time.monotonic()
    seen = [loadavg()]
    while seen[-1] and seen[-1][0] > max_load and time.monotonic() - t0 < max_wait_s:
        time.sleep(15)
        seen.append(loadavg())
    waited = time.monotonic() - t0
    ok = not seen[-1] or seen[-1][0] <= max_load
    if waited > 1:
        log(f"  waited {waited:.0f} s for load <= {max_load:g}: now {seen[-1]}{'' if ok else ' (gave up)'}")
    return {"waited_s": round(waited, 1), "load": seen[-1], "below_threshold": ok}


def measure_session(recs: list[dict[str, Any]], ref: str, empty: Path, rounds: int, per_round: int) -> dict:
    """One timing session (paired, interleaved) and one per-operator profile of every model."""
    from edge_compress.costmodel import kernels_from_json
    from edge_compress.costmodel_ort import attribute_to_kernels, profile_onnx, time_paired

    t0 = time.monotonic()
    load0 = loadavg()
    timings, ref_med = time_paired(
        [r["path"] for r in recs] + [str(empty)], ref, rounds=rounds, per_round=per_round
    )
    t_time = time.monotonic() - t0
    lat, p99, kms = [], [], []
    for r in recs:
        pt = timings[r["path"]]
        lat.append(pt.ratio_median() * ref_med)  # reference-normalised median
        p99.append(float(np.percentile(pt.samples_ms, 99)))
        prof = profile_onnx(r["path"], runs=30, warmup=3)
        try:
            times, _, _ = attribute_to_kernels(prof, kernels_from_json(r["kernels"]))
        except ValueError:
            times = {}
        kms.append(times)
    return {
        "latency_ms": lat,
        "p99_ms": p99,
        "kernel_ms": kms,
        "call_overhead_ms": timings[str(empty)].ratio_median() * ref_med,
        "reference_median_ms": ref_med,
        "loadavg_before": load0,
        "loadavg_after": loadavg(),
        "timing_seconds": t_time,
        "seconds": time.monotonic() - t0,
    }


def measure_dataset(
    recs: list[dict[str, Any]],
    rounds: int,
    per_round: int,
    log: Any,
    *,
    sessions: int = 5,
    max_load: float = 3.0,
    max_wait_s: float = 300.0,
) -> dict[str, Any]:
    """Time and profile every model in ``sessions`` separate sessions (each after waiting for a low
    load) and combine them robustly: a model's latency is the median over sessions of its
    reference-normalised median, after aligning each session's overall speed to the first one's
    (a shared machine's speed drifts between sessions; the ratios between models much less).
    Per-kernel times are medians over sessions too."""
    global CALL_OVERHEAD_MS
    ref = pick_reference(recs)
    empty = empty_model(Path(recs[0]["path"]).parent / "empty.onnx")
    runs = []
    for i in range(sessions):
        wait = wait_for_load(max_load, max_wait_s, log)
        ses = measure_session(recs, ref, empty, rounds, per_round)
        ses["wait"] = wait
        runs.append(ses)
        log(
            f"  session {i + 1}/{sessions}: {len(recs)} models x {rounds} rounds x {per_round} paired runs "
            f"({ses['timing_seconds']:.0f} s) + profiles, load {ses['loadavg_before']} -> {ses['loadavg_after']}"
        )
    L = np.array([s["latency_ms"] for s in runs])
    scale = np.median(L / L[0], axis=1)  # each session's overall speed relative to the first
    aligned = L / scale[:, None]
    lat = np.median(aligned, axis=0)
    dev = np.abs(aligned / lat - 1.0)
    CALL_OVERHEAD_MS = float(np.median([s["call_overhead_ms"] / f for s, f in zip(runs, scale, strict=True)]))
    for i, r in enumerate(recs):
        r["latency_ms"] = float(lat[i])
        r["session_ms"] = [float(x) for x in aligned[:, i]]
        r["p99_ms"] = float(np.median([s["p99_ms"][i] / f for s, f in zip(runs, scale, strict=True)]))
        names = {k for s in runs for k in s["kernel_ms"][i]}
        r["kernel_ms"] = {
            k: float(np.median([s["kernel_ms"][i][k] for s in runs if k in s["kernel_ms"][i]])) for k in names
        }
    return {
        "sessions": sessions,
        "rounds": rounds,
        "per_round": per_round,
        "reference": Path(ref).name,
        "call_overhead_ms": CALL_OVERHEAD_MS,
        "session_speed_vs_first": [round(float(x), 3) for x in scale],
        "session_loadavg": [[s["loadavg_before"], s["loadavg_after"]] for s in runs],
        "session_waits": [s["wait"] for s in runs],
        "seconds": float(sum(s["seconds"] for s in runs)),
        "noise_single_session_vs_combined_pct": {
            "mean": float(100 * dev.mean()),
            "p90": float(100 * np.percentile(dev, 90)),
            "per_session_mean": [round(float(100 * d), 2) for d in dev.mean(axis=1)],
        },
        "max_load": max_load,
    }


# ---------------------------------------------------------------------------------------------
# predictor accuracy


def split(
    recs: list[dict[str, Any]], frac: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    idx = list(range(len(recs)))
    random.Random(seed).shuffle(idx)
    k = int(round(frac * len(recs)))
    return [recs[i] for i in idx[:k]], [recs[i] for i in idx[k:]]


def scores(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    rel = np.abs(pred / meas - 1.0)
    return {
        "within10_pct": float(100 * np.mean(rel <= 0.10)),
        "mape_pct": float(100 * np.mean(rel)),
        "within20_pct": float(100 * np.mean(rel <= 0.20)),
        "max_err_pct": float(100 * rel.max()),
    }


# The planner's cheaper settings (noise-model sensitivities, fewer draws): minutes saved per model.
PLANNER_FAST = {"method": "noise", "noise_draws": 2, "noise_samples": 32, "fit_plans": 2}
CALL_OVERHEAD_MS: float | None = None  # latency of an empty model, measured with the dataset


def fit_model(train: list[dict[str, Any]], profile: Any, kernel_rows: bool = True) -> Any:
    from edge_compress.costmodel import CostModel, kernels_from_json

    cm = CostModel(profile, target="local")
    if CALL_OVERHEAD_MS is not None:
        cm.fit_info["call_overhead_ms"] = CALL_OVERHEAD_MS
    for r in train:
        ks = kernels_from_json(r["kernels"])
        cm.observe(
            ks,
            latency_ms=r["latency_ms"],
            p99_ms=r["p99_ms"],
            kernel_ms=r.get("kernel_ms") if kernel_rows else None,
            label=f"rand{r['id']}",
            source="bench",
        )
    cm.fit()
    return cm


def evaluate_predictor(
    recs: list[dict[str, Any]],
    profile: Any,
    frac: float = 0.7,
    seed: int = 0,
    kernel_rows: bool = True,
    n_train: int | None = None,
) -> dict[str, Any]:
    """Fit on a ``frac`` split (its first ``n_train`` models when given) and score the rest."""
    from edge_compress.costmodel import kernels_from_json

    train, test = split(recs, frac, seed)
    train = train[:n_train] if n_train else train
    cm = fit_model(train, profile, kernel_rows)
    meas = np.array([r["latency_ms"] for r in test])
    pred = np.array([cm.predict_kernels(kernels_from_json(r["kernels"])) for r in test])
    # FLOPs-proportional baseline: latency = a x MACs, a fitted on the training part (relative error)
    mt = np.array([r["macs"] for r in train], float)
    lt = np.array([r["latency_ms"] for r in train])
    a = float(np.sum(mt / lt) / np.sum((mt / lt) ** 2))
    base = a * np.array([r["macs"] for r in test], float)
    # uncalibrated roofline, for reference
    from edge_compress.costmodel import CostModel

    roof = CostModel(profile)
    pr = np.array([roof.predict_kernels(kernels_from_json(r["kernels"])) for r in test])
    s = scores(pred, meas)
    b = scores(base, meas)
    # the same model on its own training part: how much of the held-out error is the form's
    tr_meas = np.array([r["latency_ms"] for r in train])
    tr_pred = np.array([cm.predict_kernels(kernels_from_json(r["kernels"])) for r in train])
    # how far one session's measurement of a held-out model is from the combined one
    noise = [abs(x / r["latency_ms"] - 1) for r in test for x in r.get("session_ms", [])]
    return {
        "train": len(train),
        "test": len(test),
        **s,
        "train_fit": scores(tr_pred, tr_meas),
        "baseline_within10_pct": b["within10_pct"],
        "baseline_mape_pct": b["mape_pct"],
        "roofline_uncalibrated": scores(pr, meas),
        "measurement_noise_pct": {
            "single_session_vs_combined_mean": float(100 * np.mean(noise)) if noise else None,
            "single_session_vs_combined_p90": float(100 * np.percentile(noise, 90)) if noise else None,
        },
        "fit": cm.fit_info,
        "model": cm,
        "errors": [
            (r["id"], r["spec"]["precision"], float(m), float(p))
            for r, m, p in zip(test, meas, pred, strict=True)
        ],
    }


# ---------------------------------------------------------------------------------------------
# alternative predictors, measured on the same splits (not used by the product)

_KINDS = ("conv", "depthwise_conv", "linear", "io")
_PRECS = ("fp32", "int8", "int4", "int16", "wonly")


def kernel_features(k: Any) -> list[float]:
    """What a per-kernel learner sees of a fused kernel (nn-Meter style: shape, precision, context)."""
    import math

    from edge_compress.costmodel_fit import kernel_class

    cg = max(1, k.cin // max(1, k.groups))
    pad = lambda x: -(-x // 8) * 8  # noqa: E731
    return [
        _KINDS.index(k.kind),
        _PRECS.index(k.precision),
        float(kernel_class(k).endswith("nchwc")),
        math.log1p(k.macs),
        math.log(max(1, k.cin)),
        math.log(max(1, k.cout)),
        math.log(cg),
        k.kernel_area,
        math.log(max(1, k.out_spatial)),
        k.stride,
        k.dims,
        math.log1p(k.in_elems),
        math.log1p(k.out_elems),
        math.log1p(k.weight_params),
        pad(k.cout) / max(1, k.cout),
        pad(cg) / cg,
        math.log1p(k.next_in_elems) - math.log1p(k.out_elems),
        float(k.joins),
        float(k.kind != "linear" and k.next_kind == "linear"),
        float(k.next_precision not in ("", k.precision)),
        math.log1p(cg * k.kernel_area),
    ]


def _kernel_rows(recs: list[dict[str, Any]], base_ms: float) -> tuple[list[Any], np.ndarray]:
    """(kernels, times): each profiled kernel's share of its model's time above the call overhead
    (the profiler's absolute level drifts, its shares less; the cost model's fit does the same)."""
    from edge_compress.costmodel import kernels_from_json

    ks, ys = [], []
    for r in recs:
        kms = r.get("kernel_ms") or {}
        total = sum(v for v in kms.values() if v > 0)
        for k in kernels_from_json(r["kernels"]):
            t = kms.get(k.name, 0.0)
            if t > 0 and total > 0:
                ks.append(k)
                ys.append(t / total * max(1e-4, r["latency_ms"] - base_ms))
    return ks, np.array(ys)


def evaluate_alternatives(recs: list[dict[str, Any]], profile: Any, seeds: list[int]) -> dict[str, Any]:
    """Two learned alternatives to the linear roofline fit, on the same 70/30 splits:

    * ``kernel_gbm``: a per-kernel gradient-boosted regressor on log time (nn-Meter style),
      trained on the profiled kernel rows of the training models; model latency = call overhead
      + s x sum of kernel predictions, ``s`` the median ratio on the training models (the
      profiler distorts small operators).
    * ``linear_plus_kernel_residual_gbm``: the linear fit times exp(a boosted correction of its
      per-kernel error against the profiled rows), half-shrunk, calibrated the same way.
    """
    from sklearn.ensemble import GradientBoostingRegressor

    from edge_compress.costmodel import kernels_from_json

    out: dict[str, dict[str, list[float]]] = {
        "kernel_gbm": {"within10_pct": [], "mape_pct": []},
        "linear_plus_kernel_residual_gbm": {"within10_pct": [], "mape_pct": []},
    }
    t0 = time.monotonic()
    for seed in seeds:
        train, test = split(recs, 0.7, seed)
        cm = fit_model(train, profile)
        base = cm.fit_info.get("call_overhead_ms") or cm.to_latency(cm.base_ms)  # measured scale
        ks, y = _kernel_rows(train, base)
        X = np.array([kernel_features(k) for k in ks])
        lin = np.array([cm.kernel_ms(k) for k in ks])
        meas = np.array([r["latency_ms"] for r in test])
        # the residual learner corrects the linear fit's kernels on its additive scale, and its sum
        # goes through the fit's latency curve; the plain kernel learner sums on the measured scale
        learners = {
            "kernel_gbm": (np.log(y), lambda ks_: 0.0, 1.0, base, lambda t: t, lambda t: t),
            "linear_plus_kernel_residual_gbm": (
                np.log(y / lin),
                lambda ks_, cm=cm: np.log([cm.kernel_ms(k) for k in ks_]),
                0.5,
                cm.base_ms,
                cm.to_latency,
                cm.from_latency,
            ),
        }
        for name, (target, offset, shrink, b0, to_ms, from_ms) in learners.items():
            g = GradientBoostingRegressor(
                n_estimators=200, max_depth=3, learning_rate=0.05, subsample=0.8, random_state=0
            ).fit(X, target)

            def raw(r: dict[str, Any], g: Any = g, offset: Any = offset, shrink: float = shrink) -> float:
                kk = kernels_from_json(r["kernels"])
                f = shrink * g.predict(np.array([kernel_features(k) for k in kk])) + offset(kk)
                return float(np.sum(np.exp(f)))

            s = float(np.median([(from_ms(r["latency_ms"]) - b0) / raw(r) for r in train]))
            pred = np.array([to_ms(b0 + s * raw(r)) for r in test])
            sc = scores(pred, meas)
            out[name]["within10_pct"].append(sc["within10_pct"])
            out[name]["mape_pct"].append(sc["mape_pct"])
    return {
        **{
            name: {
                "within10_pct": float(np.mean(v["within10_pct"])),
                "mape_pct": float(np.mean(v["mape_pct"])),
                "per_split_within10_pct": v["within10_pct"],
            }
            for name, v in out.items()
        },
        "splits": seeds,
        "what": "learned per-kernel predictors on the same 70/30 splits (see evaluate_alternatives)",
        "seconds": time.monotonic() - t0,
    }


# ---------------------------------------------------------------------------------------------
# selection


def replay_measurement(path: str, median_ms: float, samples: np.ndarray) -> Any:
    """A runner Measurement rebuilt from the exhaustive measurement of a candidate (a replay)."""
    from runners.base import LatencyStats, Measurement

    st = LatencyStats(
        count=len(samples),
        mean_ms=float(samples.mean()),
        median_ms=float(median_ms),
        p90_ms=float(np.percentile(samples, 90)),
        p99_ms=float(np.percentile(samples, 99)),
        std_ms=float(samples.std()),
        min_ms=float(samples.min()),
        max_ms=float(samples.max()),
        median_ci95_ms=(float(median_ms), float(median_ms)),
    )
    return Measurement(
        target="local",
        model_path=path,
        ok=True,
        stats=st,
        latency_ms=[],
        runtime="onnxruntime",
        extra={"replay": "exhaustive paired measurement"},
    )


def prepare_zoo(name: str, workdir: str, gen_kw: dict[str, Any], project_export: bool) -> dict[str, Any]:
    """Candidates of one zoo model, exported (after part 1's timing: nothing else runs meanwhile)."""
    import torch

    from edge_compress.costmodel_export import export_candidate
    from edge_compress.profiles import load_profile
    from edge_compress.selection import generate_candidates

    torch.set_num_threads(1)
    t0 = time.monotonic()
    notes: list[str] = []
    cands = generate_candidates(
        name, load_profile("host"), notes=notes, use_project_exporter=project_export, **gen_kw
    )
    t_gen = time.monotonic() - t0
    t0 = time.monotonic()
    rows = []
    how = ""
    for c in cands:
        model, plan = c.build()  # type: ignore[misc]
        p = Path(workdir) / (c.id.replace("/", "__").replace("@", "_w") + ".onnx")
        _, how = export_candidate(model, plan, c.calib_x, p, use_project=project_export)
        rows.append(
            {
                "id": c.id,
                "model_name": c.model_name,
                "technique": c.technique,
                "accuracy": c.accuracy,
                "kernels": [k.to_json() for k in c.kernels],
                "macs": c.macs,
                "base_macs": c.base_macs,
                "path": str(p),
            }
        )
    return {
        "name": name,
        "rows": rows,
        "notes": notes,
        "export": how,
        "seconds": {"candidates": t_gen, "export": time.monotonic() - t0},
    }


def bench_select(
    prep: dict[str, Any], device_cm: Any, reference: str, rounds: int, log: Any
) -> dict[str, Any]:
    import copy

    from edge_compress.costmodel import kernels_from_json
    from edge_compress.costmodel_ort import time_paired
    from edge_compress.selection import Candidate, select

    name = prep["name"]
    cands = [
        Candidate(
            r["id"],
            r["model_name"],
            r["technique"],
            r["accuracy"],
            kernels_from_json(r["kernels"]),
            macs=r["macs"],
            base_macs=r["base_macs"],
        )
        for r in prep["rows"]
    ]
    paths = {r["id"]: r["path"] for r in prep["rows"]}
    t0 = time.monotonic()
    timings, ref_med = time_paired(list(paths.values()), reference, rounds=rounds, per_round=8)
    t_meas = time.monotonic() - t0
    truth = {}
    for c in cands:
        pt = timings[paths[c.id]]
        truth[c.id] = (pt.ratio_median() * ref_med, np.asarray(pt.samples_ms))
    lats = sorted(v[0] for v in truth.values())
    fastest, median = lats[0], float(np.median(lats))
    budget = float(np.sqrt(fastest * median))  # tight: between the fastest and the median candidate
    feasible = [c for c in cands if truth[c.id][0] <= budget]
    best = max(feasible, key=lambda c: c.accuracy)
    cm = copy.deepcopy(device_cm)
    initial = {c.id: cm.predict_from_kernels(c.kernels).latency_ms for c in cands}
    res = select(
        cands, {"latency_median_ms": budget}, cm, lambda c: replay_measurement(paths[c.id], *truth[c.id])
    )
    chosen = res.chosen
    assert chosen is not None
    regret = best.accuracy - chosen.accuracy
    first_pred = {t["id"]: t["predicted_ms"] for t in res.trace if t.get("ok")}
    log(
        f"  {name}: {len(cands)} candidates, budget {budget:.4f} ms; chosen {chosen.id} ({chosen.accuracy:.2f}%), "
        f"best feasible {best.id} ({best.accuracy:.2f}%), regret {regret:.2f} pp, {res.measurements} measurements"
    )
    return {
        "model": name,
        "candidates": len(cands),
        "budget_latency_median_ms": budget,
        "fastest_ms": fastest,
        "median_candidate_ms": median,
        "chosen": chosen.id,
        "chosen_accuracy_pct": chosen.accuracy,
        "chosen_measured_ms": truth[chosen.id][0],
        "chosen_feasible_in_exhaustive": truth[chosen.id][0] <= budget,
        "best_feasible": best.id,
        "best_feasible_accuracy_pct": best.accuracy,
        "select_regret_pp": regret,
        "measurements": res.measurements,
        "exhaustive_measurements": len(cands),
        "measured_fraction": res.measurements / len(cands),
        "trace": res.trace,
        "notes": prep["notes"] + res.notes,
        "export": prep["export"],
        "table": [
            {
                "id": c.id,
                "accuracy_pct": c.accuracy,
                "measured_ms": truth[c.id][0],
                "predicted_ms_initial": initial[c.id],
                "predicted_ms_when_measured": first_pred.get(c.id),
                "predicted_ms_final": None if c.predicted is None else c.predicted.latency_ms,
            }
            for c in sorted(cands, key=lambda c: -c.accuracy)
        ],
        "seconds": {**prep["seconds"], "exhaustive_measurement": t_meas},
    }


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer models and rounds (a few minutes)")
    ap.add_argument("--models", type=int, default=None, help="random architectures (default 900, quick 60)")
    ap.add_argument(
        "--rounds", type=int, default=None, help="interleaved timing rounds (default 50, quick 25)"
    )
    ap.add_argument(
        "--zoo",
        default=None,
        help="zoo models for the selection part (default lenet5,conv1d,resnet,mobilenetv2)",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=2026,
        help="seed of the random architectures (the fit's terms were chosen on seeds 2024 and 2025: "
        "the default is data the model design never saw)",
    )
    ap.add_argument(
        "--project-export",
        action="store_true",
        help="export candidates with edge_compress.export.onnx (the product path; ~10-20 s per file here)",
    )
    ap.add_argument(
        "--sessions", type=int, default=None, help="separate timing sessions combined (default 5, quick 2)"
    )
    ap.add_argument(
        "--max-load",
        type=float,
        default=3.0,
        help="wait before each session until the 1-minute load average is at most this",
    )
    ap.add_argument("--load-wait", type=float, default=300.0, help="longest wait for --max-load, seconds")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--dataset",
        type=Path,
        default=None,
        help="keep the measured random-model dataset here, or reuse it when the directory exists",
    )
    args = ap.parse_args()
    import tempfile

    from edge_compress.profiles import load_profile

    global CALL_OVERHEAD_MS

    n = args.models or (60 if args.quick else 900)
    rounds = args.rounds or (25 if args.quick else 50)
    args.sessions = args.sessions or (2 if args.quick else 5)
    zoo = (args.zoo or ("lenet5,conv1d" if args.quick else "lenet5,conv1d,resnet,mobilenetv2")).split(",")
    profile = load_profile("host")
    t_start = time.monotonic()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    out: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_start": loadavg(),
        },
        "settings": {
            "quick": args.quick,
            "models": n,
            "rounds": rounds,
            "sessions": args.sessions,
            "max_load": args.max_load,
            "seed": args.seed,
            "profile": profile.name,
            "runtime": "onnxruntime (CPU EP, 1 thread, sequential), batch 1, in-process",
        },
    }
    import onnxruntime

    out["machine"]["onnxruntime"] = onnxruntime.__version__
    gen_kw: dict[str, Any] = {
        "alphas": (0.25, 0.5, 0.75),
        "prune_ratios": (0.5,),
        "ranks": (0.6,),
        "finetune_epochs": 1,
        "calib_n": 64,
        "planner_options": PLANNER_FAST,
    }
    if args.quick:
        gen_kw = {
            "alphas": (0.5,),
            "prune_ratios": (),
            "ranks": (0.6,),
            "calib_n": 64,
            "planner_options": PLANNER_FAST,
        }
    with tempfile.TemporaryDirectory(prefix="bench-costmodel-") as tmp:
        work = Path(tmp)
        (work / "zoo").mkdir()
        if args.dataset is not None and args.dataset.exists():  # iterate on the predictor / selection
            saved = json.loads((args.dataset / "dataset.json").read_text())
            recs, minfo, t_export = saved["recs"], saved["measurement"], saved["export_seconds"]
            CALL_OVERHEAD_MS = minfo["call_overhead_ms"]
            for r in recs:
                r["path"] = str(args.dataset / Path(r["path"]).name)
            n_changed = refresh_kernels(recs, args.seed)
            log(
                f"[1-2/4] reusing the measured dataset in {args.dataset} (not a fresh run); "
                f"kernels recomputed with the current description ({n_changed} models' kernels changed)"
            )
            # its name only: the measured dataset is reused (the fit and selection reran on it)
            out["settings"]["reused_dataset"] = args.dataset.name
        else:
            log(f"[1/4] exporting {n} random architectures x plans")
            t0 = time.monotonic()
            recs = make_dataset(n, work, args.seed, log)
            t_export = time.monotonic() - t0
            log(f"[2/4] timing (paired, interleaved, {args.sessions} sessions) and profiling them")
            minfo = measure_dataset(
                recs,
                rounds,
                8,
                log,
                sessions=args.sessions,
                max_load=args.max_load,
                max_wait_s=args.load_wait,
            )
            if args.dataset is not None:
                import shutil

                args.dataset.mkdir(parents=True)
                for r in recs:
                    shutil.copy(r["path"], args.dataset)
                doc = {"recs": recs, "measurement": minfo, "export_seconds": t_export}
                (args.dataset / "dataset.json").write_text(json.dumps(doc))
        ev = evaluate_predictor(recs, profile, 0.7, args.seed)
        ev.pop("model")
        errors = ev.pop("errors")
        splits = [evaluate_predictor(recs, profile, 0.7, args.seed + k) for k in range(1, 6)]
        whole = [evaluate_predictor(recs, profile, 0.7, args.seed + k, kernel_rows=False) for k in range(6)]
        ev["other_splits"] = {
            "within10_pct": [x["within10_pct"] for x in splits],
            "mape_pct": [x["mape_pct"] for x in splits],
            "baseline_within10_pct": [x["baseline_within10_pct"] for x in splits],
            "baseline_mape_pct": [x["baseline_mape_pct"] for x in splits],
        }
        all6 = [ev] + splits
        # how the held-out accuracy grows with the observations (what nightly runs accumulate): the
        # same six held-out parts, the fit on the first n models of each training part
        # (the whole training part is the six splits above)
        n_full = ev["train"]
        curve = {
            str(n): float(
                np.mean(
                    [
                        evaluate_predictor(recs, profile, 0.7, args.seed + k, n_train=n)["within10_pct"]
                        for k in range(6)
                    ]
                )
            )
            for n in (50, 100, 150, 200)
            if n < n_full
        }
        curve[str(n_full)] = float(np.mean([x["within10_pct"] for x in all6]))
        from collections import Counter

        out["predictor"] = {
            **{
                k: ev[k]
                for k in (
                    "within10_pct",
                    "mape_pct",
                    "within20_pct",
                    "max_err_pct",
                    "baseline_within10_pct",
                    "baseline_mape_pct",
                    "train",
                    "test",
                )
            },
            "mean_of_six_70_30_splits": {
                k: float(np.mean([x[k] for x in all6]))
                for k in ("within10_pct", "mape_pct", "baseline_within10_pct", "baseline_mape_pct")
            },
            "five_other_70_30_splits": ev["other_splits"],
            "within10_pct_by_training_models": curve,
            "without_operator_profiles": {
                "what": "fitted on whole-model timings only (no per-operator profile rows), same six splits",
                "within10_pct": float(np.mean([x["within10_pct"] for x in whole])),
                "mape_pct": float(np.mean([x["mape_pct"] for x in whole])),
            },
            "train_fit": ev["train_fit"],
            "alternatives": evaluate_alternatives(recs, profile, [args.seed + k for k in range(6)]),
            "roofline_uncalibrated": ev["roofline_uncalibrated"],
            "measurement_noise_pct": ev["measurement_noise_pct"],
            "fit": ev["fit"],
            "dataset": {
                "models": len(recs),
                "seed": args.seed,
                "precisions": dict(Counter(r["spec"]["precision"] for r in recs)),
                "latency_ms_range": [min(r["latency_ms"] for r in recs), max(r["latency_ms"] for r in recs)],
                "macs_range": [min(r["macs"] for r in recs), max(r["macs"] for r in recs)],
                "export": recs[0]["how"],
                "export_seconds": t_export,
            },
            "measurement": minfo,
            "heldout_errors": [
                {"id": i, "precision": p, "measured_ms": m, "predicted_ms": q} for i, p, m, q in errors
            ],
        }
        m6 = out["predictor"]["mean_of_six_70_30_splits"]
        log(
            f"  held-out: {ev['within10_pct']:.1f}% within +-10%, MAPE {ev['mape_pct']:.1f}% "
            f"(FLOPs baseline {ev['baseline_within10_pct']:.1f}%, {ev['baseline_mape_pct']:.1f}%); "
            f"six splits: {m6['within10_pct']:.1f}% / {m6['mape_pct']:.1f}%"
        )
        log(
            "  within +-10% by training models (six splits): "
            + ", ".join(f"{n}: {v:.1f}%" for n, v in curve.items())
        )
        alt = out["predictor"]["alternatives"]
        log(
            "  alternatives (six splits): "
            + ", ".join(
                f"{k} {alt[k]['within10_pct']:.1f}% / {alt[k]['mape_pct']:.1f}%"
                for k in ("kernel_gbm", "linear_plus_kernel_residual_gbm")
            )
            + f"; linear fit on its own training part {ev['train_fit']['within10_pct']:.1f}%"
        )
        device_cm = fit_model(recs, profile)  # the calibrated device model selection starts from
        log(f"[3/4] preparing the select candidates of {', '.join(zoo)}")
        preps = [prepare_zoo(z, str(work / "zoo"), gen_kw, args.project_export) for z in zoo]
        log("[4/4] selection on zoo models (exhaustive measurement as ground truth)")
        ref = pick_reference(recs)
        sel = []
        for prep in preps:
            log(f"  {prep['name']}: {len(prep['rows'])} candidates prepared ({prep['seconds']})")
            wait_for_load(args.max_load, args.load_wait, log)
            sel.append(bench_select(prep, device_cm, ref, rounds, log))
        out["select"] = {
            "models": sel,
            "select_regret_pp": max(s["select_regret_pp"] for s in sel),
            "mean_regret_pp": float(np.mean([s["select_regret_pp"] for s in sel])),
            "measurements": int(sum(s["measurements"] for s in sel)),
            "exhaustive_measurements": int(sum(s["exhaustive_measurements"] for s in sel)),
            "protocol": "ground truth = every candidate measured (paired, interleaved, in-process onnxruntime); "
            "select runs its loop on that table (each 'measurement' it asks for is a replay of the "
            "candidate's row, counted); budget latency_median between the fastest and the median candidate",
            "export": "project exporter"
            if args.project_export
            else "fallback exporter (torch.onnx.export + quantize_static) for speed; the CLI uses edge_compress.export.onnx",
        }
        out["select"]["measured_fraction"] = (
            out["select"]["measurements"] / out["select"]["exhaustive_measurements"]
        )
    out["targets"] = {
        "within10_pct>=90": out["predictor"]["within10_pct"] >= 90,
        "select_regret_pp<=0.5": out["select"]["select_regret_pp"] <= 0.5,
        "measurements<=25%_of_exhaustive": out["select"]["measured_fraction"] <= 0.25,
    }
    out["machine"]["loadavg_end"] = loadavg()
    out["seconds_total"] = time.monotonic() - t_start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log(f"wrote {args.out} in {out['seconds_total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
