#!/usr/bin/env python3
"""Structured pruning and low-rank factorization benchmark -> benchmarks/prune.json.

    python scripts/bench_prune.py            # full run (well under 20 min on 2 cores, zoo weights cached)
    python scripts/bench_prune.py --quick    # one budget, fewer epochs / trials (a few minutes)
    python scripts/bench_prune.py --only prune --models resnet --budgets 0.5

Sections (keys of the JSON):
- models.<name>.prune.<budget>.<group_lasso|l1>.{acc, flops_ratio, latency_ratio, params, ...} for the
  residual (resnet) and MobileNetV2-style (mobilenetv2) zoo models, plus models.<name>.fp32_acc;
  latency_ratio is measured here with onnxruntime (fp32 ONNX, batch 1, one thread), pruned and
  unpruned model interleaved in the same run, median of many repeats. Both methods run with each
  of ``--seeds`` (default 0,1,2): ``acc`` / ``val_acc`` are means over the seeds (``acc_sd``,
  ``per_seed``), the other figures and the timed model are the first seed's.
- group_lasso_trajectories.<name>.<budget>: per epoch loss, predicted FLOPs ratio, multiplier, live channels.
- svd.<name>.curve: [{params_ratio, acc, acc_ft}] for lenet5 and resnet (without / with a short fine-tune).
- redundancy.<name>.{ps, predicted, montecarlo, layers, single_points_of_failure}.
- lasso.{breast_cancer, mnist1d}: LASSO feature paths beside scikit-learn's L1 logistic path.
- width_study.<name>.<width>: rank fractions for 90% / 99% energy per layer.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_compress.graph import extract_graph  # noqa: E402
from edge_compress.prune.group_lasso import GroupLassoConfig, finetune, group_lasso_prune  # noqa: E402
from edge_compress.prune.l1 import l1_prune  # noqa: E402
from edge_compress.zoo import load_zoo  # noqa: E402

# Group-lasso settings per model (tuned on the validation split; see the report).
# Group-lasso settings: the library defaults (at most 8 penalized epochs, stopping at the budget,
# then 6 fine-tune epochs; L1 gets the same 6). Tuned on the validation split, see the issue report.
# Both methods round kept channel counts to multiples of 8 (onnxruntime's AVX2 convolution blocks):
# unaligned counts (45 instead of 48) measured no faster than the unpruned model here.
ALIGN = 8
GL: dict[str, dict[str, Any]] = {
    "resnet": {"channel_multiple": ALIGN},
    "mobilenetv2": {"channel_multiple": ALIGN},
    "lenet5": {"channel_multiple": ALIGN},  # not in the default run: `--models lenet5`
}
QUICK_GL = dict(epochs=5, finetune_epochs=2)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------- latency
def _ort_session(model: torch.nn.Module, x: torch.Tensor, path: Path):
    import onnxruntime as ort

    torch.onnx.export(
        copy.deepcopy(model).eval(), (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"]
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def latency_ratios(
    base: torch.nn.Module, others: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int
) -> dict:
    """Interleaved timing: each repeat runs the base and every other model (``inner`` runs each).

    Returns per model: median seconds per inference, and the median over repeats of the
    per-repeat ratio to the base (robust to the machine's load drifting during the run).
    """
    xn = x.numpy()
    with tempfile.TemporaryDirectory() as d:
        sessions = {"base": _ort_session(base, x, Path(d) / "base.onnx")}
        for i, (k, m) in enumerate(others.items()):
            sessions[k] = _ort_session(m, x, Path(d) / f"model{i}.onnx")
        for s in sessions.values():  # warm up
            for _ in range(20):
                s.run(None, {"x": xn})
        t0 = time.perf_counter()
        for _ in range(10):
            sessions["base"].run(None, {"x": xn})
        inner = max(1, int(0.01 / max((time.perf_counter() - t0) / 10, 1e-6)))  # ~10 ms per timed block
        times: dict[str, list[float]] = {k: [] for k in sessions}
        order = list(sessions)
        for r in range(repeats):
            for k in order if r % 2 == 0 else order[::-1]:
                s = sessions[k]
                t = time.perf_counter()
                for _ in range(inner):
                    s.run(None, {"x": xn})
                times[k].append((time.perf_counter() - t) / inner)
    out = {"base_s": statistics.median(times["base"]), "inner": inner, "repeats": repeats}
    for k in others:
        ratios = [a / b for a, b in zip(times[k], times["base"], strict=True)]
        out[k] = {"latency_s": statistics.median(times[k]), "latency_ratio": statistics.median(ratios)}
    return out


# ------------------------------------------------------------------------------------- sections
def _row(z: Any, res: Any, t0: float) -> dict[str, Any]:
    return {
        "acc": z.evaluate(res.model),
        "val_acc": z.evaluate(res.model, split="val"),
        "flops_ratio": res.flops_ratio,
        "params": res.params,
        "params_ratio": res.params_ratio,
        "kept": {str(k): len(v) for k, v in res.keep.items()},
        "rounded": res.rounded,
        "notes": res.notes,
        "time_s": time.time() - t0,
    }


def _over_seeds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The first seed's row (its model is the one timed), with accuracy the mean over all seeds.

    The zoo's test split has a few hundred samples (one sample = 0.28 pp on digits) and a pruned
    model's accuracy moves by about 1 pp with the fine-tuning seed, so one seed cannot rank two
    methods that differ by less; every seed's figures stay in ``per_seed``.
    """
    out = dict(rows[0])
    if len(rows) > 1:
        acc = [r["acc"] for r in rows]
        out["acc"] = float(np.mean(acc))
        out["acc_sd"] = float(np.std(acc, ddof=1))
        out["val_acc"] = float(np.mean([r["val_acc"] for r in rows]))
        out["flops_ratio_max"] = max(r["flops_ratio"] for r in rows)
        out["flops_ratio_min"] = min(r["flops_ratio"] for r in rows)
        out["per_seed"] = [
            {k: r[k] for k in ("seed", "acc", "val_acc", "flops_ratio", "params")} for r in rows
        ]
    return out


def bench_prune(
    models: list[str], budgets: list[float], quick: bool, repeats: int, out: dict, seeds: list[int]
) -> None:
    for name in models:
        z = load_zoo(name)
        ds = z.dataset
        g = extract_graph(z.model, z.example_input())
        fp32 = z.evaluate()
        entry = out["models"].setdefault(name, {})
        entry.update(
            fp32_acc=fp32,
            fp32_val_acc=z.evaluate(split="val"),
            macs=g.total_macs,
            params=sum(p.numel() for p in z.model.parameters()),
            seeds=seeds,
            prune={},
        )
        pruned: dict[str, torch.nn.Module] = {}
        for b in budgets:
            key = f"{b:g}"
            rows: dict[str, list[dict[str, Any]]] = {"group_lasso": [], "l1": []}
            for seed in seeds:
                cfg_kw = dict(GL.get(name, {}), seed=seed)
                if quick:
                    cfg_kw.update(QUICK_GL)
                cfg = GroupLassoConfig(**cfg_kw)
                t = time.time()
                gl = group_lasso_prune(
                    z.model, g, b, ds.x_train, ds.y_train, cfg, x_val=ds.x_val, y_val=ds.y_val
                )
                rows["group_lasso"].append({"seed": seed, **_row(z, gl, t)})
                t = time.time()
                l1 = l1_prune(
                    z.model,
                    g,
                    b,
                    ds.x_train,
                    ds.y_train,
                    finetune_epochs=cfg.finetune_epochs,
                    finetune_lr=cfg.finetune_lr,
                    seed=seed,
                    channel_multiple=cfg.channel_multiple,
                )
                rows["l1"].append({"seed": seed, **_row(z, l1, t)})
                if seed == seeds[0]:  # the models timed, and the trajectory kept
                    out["group_lasso_trajectories"].setdefault(name, {})[key] = gl.trajectory
                    pruned[f"{key}/group_lasso"], pruned[f"{key}/l1"] = gl.model, l1.model
                log(
                    f"{name} @ {key} seed {seed}: group lasso acc {rows['group_lasso'][-1]['acc']:.4f} "
                    f"flops {gl.flops_ratio:.3f}; L1 one-shot acc {rows['l1'][-1]['acc']:.4f} "
                    f"flops {l1.flops_ratio:.3f}"
                )
            entry["prune"][key] = {m: _over_seeds(r) for m, r in rows.items()}
        t = time.time()
        control = copy.deepcopy(z.model)  # an identical model: its ratio shows the measurement's noise
        lat = latency_ratios(z.model, {**pruned, "control": control}, z.example_input(1), repeats)
        entry["latency_base_s"] = lat["base_s"]
        entry["latency_control_ratio"] = lat["control"]["latency_ratio"]
        entry["latency_method"] = (
            f"onnxruntime fp32, batch 1, 1 thread, interleaved, median of {repeats} repeats"
        )
        for k in pruned:
            key, method = k.split("/")
            entry["prune"][key][method].update(lat[k])
        log(f"{name}: latency measured in {time.time() - t:.0f}s (base {lat['base_s'] * 1e3:.2f} ms)")


def bench_svd(names: list[str], targets: list[float], ft_epochs: int, out: dict) -> None:
    from edge_compress.factorize.rank import ranks_by_budget, spectrum
    from edge_compress.factorize.svd import factorize_model

    for name in names:
        z = load_zoo(name)
        g = extract_graph(z.model, z.example_input())
        curve = []
        for t in targets:
            ranks = ranks_by_budget(z.model, g, params_ratio=t)
            f = factorize_model(z.model, g, ranks)
            g2 = extract_graph(f, z.example_input())
            row = {
                "target": t,
                "params_ratio": g2.total_weight_params / g.total_weight_params,
                "flops_ratio": g2.total_macs / g.total_macs,
                "acc": z.evaluate(f),
                "ranks": {k: list(v) for k, v in ranks.items()},
            }
            finetune(f, z.dataset.x_train, z.dataset.y_train, ft_epochs, 1e-3)
            row["acc_ft"] = z.evaluate(f)
            row["ft_epochs"] = ft_epochs
            curve.append(row)
            log(
                f"svd {name} params {row['params_ratio']:.2f}: acc {row['acc']:.4f} -> ft {row['acc_ft']:.4f}"
            )
        spec = spectrum(z.model, g)
        out["svd"][name] = {
            "fp32_acc": z.evaluate(),
            "curve": curve,
            "spectra": {k: [float(v) for v in s] for k, s in spec.items()},
        }


def bench_redundancy(names: list[str], ps: list[float], trials: int, out: dict) -> None:
    from edge_compress.prune.redundancy import analyze_redundancy, montecarlo_failure

    for name in names:
        z = load_zoo(name)
        g = extract_graph(z.model, z.example_input())
        x, y = z.dataset.x_val, z.dataset.y_val
        t = time.time()
        rep = analyze_redundancy(z.model, g, x, y, corr_threshold=0.9, drop_threshold=0.05)
        pred = rep.predicted(ps)
        mc = montecarlo_failure(z.model, g, x, y, ps, trials=trials, drop_threshold=0.05)
        out["redundancy"][name] = {
            "ps": ps,
            "trials": trials,
            "corr_threshold": 0.9,
            "drop_threshold": 0.05,
            "base_acc": rep.base_acc,
            "predicted": pred["model"],
            "montecarlo": mc["model"],
            "per_layer": {k: {"predicted": pred[k], "montecarlo": mc[k]} for k in pred if k != "model"},
            "layers": [layer.to_json() for layer in rep.layers],
            "single_points_of_failure": rep.single_points_of_failure(),
        }
        log(
            f"redundancy {name}: {time.time() - t:.0f}s; predicted {np.round(pred['model'], 2).tolist()} "
            f"vs MC {np.round(mc['model'], 2).tolist()}"
        )


def bench_lasso(quick: bool, out: dict) -> None:
    from edge_compress.prune.lasso import lasso_path, mlp, sklearn_l1_path
    from edge_compress.zoo.data import breast_cancer_feature_names, load_dataset
    from edge_compress.zoo.train import TrainConfig, train

    pens = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3]
    d = load_dataset("breast_cancer")
    bc: dict[str, Any] = {}
    for label, hidden in (("logistic", 0), ("mlp16", 16)):
        torch.manual_seed(0)
        m = mlp(30, hidden, 2)
        train(m, d.x_train, d.y_train, TrainConfig(epochs=30, lr=3e-3))
        p = lasso_path(
            m,
            d.x_train,
            d.y_train,
            d.x_test,
            d.y_test,
            pens,
            epochs=10 if quick else 30,
            lr=0.02,
            refit_epochs=10,
            feature_names=breast_cancer_feature_names(),
        )
        bc[label] = p.to_json()
    bc["sklearn_l1_logistic"] = sklearn_l1_path(
        d.x_train, d.y_train, d.x_test, d.y_test, [1 / (lam * len(d.x_train)) for lam in pens]
    )
    out["lasso"]["breast_cancer"] = bc
    log("lasso breast_cancer: " + ", ".join(f"{s['penalty']:g}:{s['n_kept']}" for s in bc["mlp16"]["path"]))
    d = load_dataset("mnist1d")
    pens1 = [0.001, 0.003, 0.01, 0.03, 0.1]
    m1: dict[str, Any] = {}
    torch.manual_seed(0)
    m = mlp(40, 128, 10)
    train(m, d.x_train, d.y_train, TrainConfig(epochs=10 if quick else 40, lr=2e-3))
    m1["mlp128"] = lasso_path(
        m, d.x_train, d.y_train, d.x_test, d.y_test, pens1, epochs=3 if quick else 8, lr=0.02
    ).to_json()
    z = load_zoo("conv1d")
    m1["conv1d_gate"] = lasso_path(
        z.model, d.x_train, d.y_train, d.x_test, d.y_test, pens1, epochs=2 if quick else 5, lr=0.01
    ).to_json()
    m1["sklearn_l1_logistic"] = sklearn_l1_path(
        d.x_train, d.y_train, d.x_test, d.y_test, [1 / (lam * len(d.x_train)) for lam in pens1]
    )
    out["lasso"]["mnist1d"] = m1
    log(
        "lasso mnist1d conv1d gate: "
        + ", ".join(f"{s['penalty']:g}:{s['n_kept']}" for s in m1["conv1d_gate"]["path"])
    )


def bench_width(quick: bool, out: dict) -> None:
    from edge_compress.factorize.width_study import width_study

    if quick:
        res = width_study(
            ["lenet5", "conv1d"], (0.5, 1.0, 2.0), epochs={"lenet5": 5, "conv1d": 10}, progress=log
        )
    else:
        res = width_study(
            ["lenet5", "conv1d"],
            (0.5, 1.0, 1.5, 2.0),
            epochs={"lenet5": 8, "conv1d": 15},
            progress=log,
        )
    out["width_study"] = res


def summary(out: dict) -> dict:
    s: dict[str, Any] = {}
    for name, e in out.get("models", {}).items():
        for b, row in e.get("prune", {}).items():
            gl, l1 = row.get("group_lasso", {}), row.get("l1", {})
            pre = f"{name}.{b}"
            if gl:
                worst = max(
                    abs(gl.get(k, gl["flops_ratio"]) / float(b) - 1)
                    for k in ("flops_ratio", "flops_ratio_min", "flops_ratio_max")
                )
                s[f"{pre}.gl_flops_within_5pct"] = worst <= 0.05
                s[f"{pre}.gl_acc_drop_pp"] = 100 * (e["fp32_acc"] - gl["acc"])
            if gl and l1:
                s[f"{pre}.gl_minus_l1_pp"] = 100 * (gl["acc"] - l1["acc"])
                a, c = gl.get("per_seed"), l1.get("per_seed")
                if a and c and len(a) == len(c) > 1:  # paired by seed: the difference's standard error
                    d = [100 * (x["acc"] - y["acc"]) for x, y in zip(a, c, strict=True)]
                    s[f"{pre}.gl_minus_l1_pp_se"] = float(np.std(d, ddof=1) / np.sqrt(len(d)))
                    s[f"{pre}.gl_minus_l1_val_pp"] = 100 * (gl["val_acc"] - l1["val_acc"])
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one budget, fewer epochs and trials")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "prune.json"))
    ap.add_argument("--only", default="prune,svd,redundancy,lasso,width", help="comma list of sections")
    ap.add_argument("--models", default="resnet,mobilenetv2")
    ap.add_argument("--budgets", default=None, help="comma list of FLOPs budgets (default 0.75,0.5,0.35)")
    ap.add_argument(
        "--seeds",
        default=None,
        help="comma list of training seeds; accuracies are means over them (default 0,1,2; quick 0)",
    )
    args = ap.parse_args(argv)
    seeds = [int(v) for v in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    torch.set_num_threads(1)
    sections = set(args.only.split(","))
    budgets = (
        [float(b) for b in args.budgets.split(",")]
        if args.budgets
        else ([0.5] if args.quick else [0.75, 0.5, 0.35])
    )
    out_path = Path(args.out)
    out: dict[str, Any] = (
        json.loads(out_path.read_text())
        if out_path.exists() and sections != {"prune", "svd", "redundancy", "lasso", "width"}
        else {}
    )
    out.setdefault("models", {})
    out.setdefault("group_lasso_trajectories", {})
    out.setdefault("svd", {})
    out.setdefault("redundancy", {})
    out.setdefault("lasso", {})
    timings: dict[str, float] = dict(out.get("timings_s", {}))
    t_all = time.time()
    plan = [
        (
            "prune",
            lambda: bench_prune(
                args.models.split(","), budgets, args.quick, 60 if args.quick else 200, out, seeds
            ),
        ),
        (
            "svd",
            lambda: bench_svd(
                ["lenet5"] if args.quick else ["lenet5", "resnet"],
                [0.8, 0.5, 0.3] if args.quick else [0.9, 0.7, 0.5, 0.35, 0.25],
                1,
                out,
            ),
        ),
        (
            "redundancy",
            lambda: bench_redundancy(
                ["lenet5", "conv1d"], [0.02, 0.05, 0.1, 0.2, 0.3, 0.5], 15 if args.quick else 40, out
            ),
        ),
        ("lasso", lambda: bench_lasso(args.quick, out)),
        ("width", lambda: bench_width(args.quick, out)),
    ]

    def save() -> None:
        out["timings_s"] = {**timings, "total_this_run": time.time() - t_all}
        out["summary"] = summary(out)
        out["meta"] = meta
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(out, indent=1, default=float) + "\n")

    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "quick": args.quick,
        "load_avg_start": os.getloadavg(),
    }
    for name, fn in plan:
        if name in sections:
            t = time.time()
            log(f"== {name}")
            fn()
            timings[name] = time.time() - t
            save()  # after every section, so a long run leaves its results behind
    meta["load_avg_end"] = os.getloadavg()
    save()
    log(f"wrote {out_path} in {time.time() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
