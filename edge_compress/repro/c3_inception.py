"""Claim 3: mixed precision in an Inception block: the 1x1 bottlenecks tolerate 4 bits, the spatial
3x3 / 5x5 convolutions need 8; a Hessian-guided allocation beats uniform precision at equal bytes.

On the zoo's GoogLeNet-style model trained on digits (``load_zoo("inception")``, BN-free):

- per layer, the HAWQ-V2 sensitivity ``Omega(4) = Tr(H)/n * ||Q4(W) - W||^2``
  (``sensitivity.hessian_traces`` / ``hessian_sensitivity``, labels of the calibration digits), and the
  *measured* cost of putting that one layer at 4 bits (all others int8, 8-bit activations):
  extra logit noise power and top-1 agreement with the float model on held-out digits;
- the seed's rule (every 1x1 of the Inception blocks at int4, every spatial conv, the stem and the
  classifier at int8) and its inverse, against the ILP allocations (``allocate_bits``) over {4, 8}
  from the Hessian sensitivities and from the noise model, at exactly the same bytes, and against
  random {4, 8} plans of about those bytes;
- uniform int5 / int6 / int7 against the ILP over {4, 8} at their bytes ("uniform at equal bytes").

The planner ties the weight bits of the layers feeding one concat (``graph.precision_groups``); the
seed's question is per layer, so the allocations here are per layer (untied), and the tied ILP is
reported beside them.
"""

from __future__ import annotations

import numpy as np

from edge_compress.repro.common import FAILS, HOLDS, PARTIAL, ClaimResult, Context, figure, save, torch_setup

OPTS = (8, 4)


def _role(name: str) -> str:
    if name.endswith("_reduce"):
        return "1x1 bottleneck"
    if name.endswith((".b1", ".bp")):
        return "1x1 branch"
    if name.endswith((".b3", ".b5")):
        return "spatial 3x3/5x5"
    return "stem" if name == "stem" else "classifier"


def run(ctx: Context) -> ClaimResult:
    import torch

    from edge_compress.graph import extract_graph
    from edge_compress.quant import fakequant as fq
    from edge_compress.quant.allocate import Constraint, allocate_bits
    from edge_compress.quant.noise import NoiseModel
    from edge_compress.quant.sensitivity import hessian_sensitivity, hessian_traces
    from edge_compress.zoo import load_zoo
    from edge_compress.zoo.train import predict

    torch_setup()
    torch.manual_seed(ctx.seed)
    z = load_zoo("inception")
    ds = z.dataset
    g = extract_graph(z.model, z.example_input())
    names = g.names
    info = {li.name: li for li in g.layers}
    folded = fq.fold_batchnorm(z.model)
    n_cal = ctx.pick(128, 512)
    calib_x, calib_y = ds.x_train[:n_cal], ds.y_train[:n_cal]
    hv = ctx.pick(8, 32)
    traces = hessian_traces(folded, names, calib_x, calib_y, n_samples=hv, batch_size=128, seed=ctx.seed)
    omega = hessian_sensitivity(folded, {n: OPTS for n in names}, traces)
    nm = NoiseModel.build(
        folded,
        g,
        z.calibration(256),
        options={n: OPTS for n in names},
        folded=True,
        draws=ctx.pick(4, 8),
        max_samples=ctx.pick(64, 128),
        seed=ctx.seed,
        model_name="inception",
    )

    # held-out digits (validation + test: neither trains nor calibrates anything here)
    ex = ctx.pick(ds.x_test, np.concatenate([ds.x_val, ds.x_test]))
    ey = ctx.pick(ds.y_test, np.concatenate([ds.y_val, ds.y_test]))

    def _logits(model, x):
        return torch.from_numpy(predict(model, x))

    y_fp = _logits(folded, ex)
    top_fp = y_fp.argmax(1).numpy()
    sig = float((y_fp.double() ** 2).mean())

    def measure(bits: dict[str, int]) -> dict[str, float]:
        yq = _logits(nm.simulate(nm.plan_for(bits)), ex)
        top = yq.argmax(1).numpy()
        noise = float(((yq - y_fp).double() ** 2).mean())
        return {
            "noise": noise,
            "sqnr_db": 10 * np.log10(sig / noise),
            "agree": float((top == top_fp).mean()),
            "acc": float((top == ey).mean()),
            "_ok": top == top_fp,
        }

    coeffs = {(n, b): nm.plan_for({n: b}).layer_bytes(info[n]) for n in names for b in OPTS}

    def nbytes(bits: dict[str, int]) -> float:
        return float(sum(coeffs[(n, b)] for n, b in bits.items()))

    all8 = {n: 8 for n in names}
    base = measure(all8)
    base_ok = base.pop("_ok")

    def paired(m: dict) -> tuple[float, float]:
        """Agreement lost vs the int8 plan (pp) and its paired (McNemar) standard error (pp)."""
        ok = m.pop("_ok")
        lost, won = int((base_ok & ~ok).sum()), int((~base_ok & ok).sum())
        return 100 * (lost - won) / len(ok), 100 * np.sqrt(lost + won) / len(ok)

    # ---- per-layer: one layer at int4
    per_layer = []
    for n in names:
        m = measure({**all8, n: 4})
        drop, se = paired(m)
        per_layer.append(
            {
                "layer": n,
                "role": _role(n),
                "params": info[n].weight_params,
                "bytes_saved": coeffs[(n, 8)] - coeffs[(n, 4)],
                "trace_mean": traces[n].mean,
                "trace_mean_se": traces[n].stderr / max(traces[n].n_params, 1),
                "omega4": omega[(n, 4)] - omega[(n, 8)],
                "noise_pred": nm.sensitivity(n, 4) - nm.sensitivity(n, 8),
                "noise_meas": m["noise"] - base["noise"],
                "agree_drop_pp": drop,
                "agree_drop_se_pp": se,
                "acc_drop_pp": 100 * (base["acc"] - m["acc"]),
            }
        )

    # ---- allocations at equal bytes
    def ilp(cost: dict[tuple[str, int], float], budget: float, tied: bool = False) -> dict[str, int]:
        return allocate_bits(
            {n: OPTS for n in names},
            cost,
            [Constraint("model_bytes", coeffs, budget)],
            g.precision_groups if tied else (),
        ).bits

    noise_cost = {(n, b): nm.sensitivity(n, b) for n in names for b in OPTS}
    rule = {n: 4 if _role(n).startswith("1x1") else 8 for n in names}
    inverse = {n: 4 if _role(n) == "spatial 3x3/5x5" else 8 for n in names}
    comparisons = []
    rules = [("seed rule (1x1 int4, spatial int8)", rule), ("inverse rule (spatial int4, 1x1 int8)", inverse)]
    for label, bits in rules[: ctx.pick(1, 2)]:
        b = nbytes(bits)
        row = {"budget_bytes": b, "plans": {}}
        for name, plan in (
            (label, bits),
            ("Hessian ILP", ilp(omega, b)),
            ("noise-model ILP", ilp(noise_cost, b)),
            ("Hessian ILP, concat-tied", ilp(omega, b, tied=True)),
        ):
            m = measure(plan)
            m.pop("_ok")
            row["plans"][name] = {"bits": plan, "bytes": nbytes(plan), **m}
        comparisons.append(row)
    uniform_rows = []
    for ub in ctx.pick((6,), (5, 6, 7)):
        bu = {n: ub for n in names}
        nm_u = (
            NoiseModel.build(
                folded,
                g,
                z.calibration(64),
                options={n: (ub,) for n in names},
                act_bits=(8,),
                folded=True,
                draws=1,
                max_samples=8,
                seed=ctx.seed,
            )
            if ub not in OPTS
            else nm
        )
        b = float(sum(nm_u.plan_for({n: ub}).layer_bytes(info[n]) for n in names))
        yq = _logits(nm_u.simulate(nm_u.plan_for(bu)), ex)
        noise = float(((yq - y_fp).double() ** 2).mean())
        u = {
            "noise": noise,
            "sqnr_db": 10 * np.log10(sig / noise),
            "agree": float((yq.argmax(1).numpy() == top_fp).mean()),
            "acc": float((yq.argmax(1).numpy() == ey).mean()),
        }
        hp = ilp(omega, b)
        mh = measure(hp)
        mh.pop("_ok")
        uniform_rows.append(
            {"bits": ub, "bytes": b, "uniform": u, "hessian_ilp": {"bits": hp, "bytes": nbytes(hp), **mh}}
        )
    all4 = measure({n: 4 for n in names})
    all4.pop("_ok")

    rng = np.random.default_rng(ctx.seed + 3)
    target = nbytes(rule)
    rand = []
    tries = 0
    while len(rand) < ctx.pick(4, 30) and tries < 20000:
        tries += 1
        bits = {n: int(rng.choice(OPTS)) for n in names}
        if abs(nbytes(bits) / target - 1) <= 0.05:
            m = measure(bits)
            m.pop("_ok")
            rand.append({"bits": bits, "bytes": nbytes(bits), **m})

    # ---- figure
    fig, ax = figure(1, 3, 15, 4.6)
    a = ax[0][0]
    roles = ["1x1 bottleneck", "1x1 branch", "spatial 3x3/5x5", "stem", "classifier"]
    col = {r: f"C{i}" for i, r in enumerate(roles)}
    xs = np.arange(len(per_layer))
    floor = 1e-4
    meas = np.array([r["noise_meas"] for r in per_layer])
    hess = np.array([r["omega4"] for r in per_layer])
    meas_rel = np.maximum(meas / max(meas.max(), 1e-30), floor)
    hess_rel = np.maximum(hess / max(hess.max(), 1e-30), floor)
    colors = [col[r["role"]] for r in per_layer]
    a.bar(xs - 0.2, meas_rel, 0.4, color=colors)
    a.bar(xs + 0.2, hess_rel, 0.4, color=colors, alpha=0.45, hatch="//")
    for x_, v in zip(xs, meas, strict=True):
        if v <= 0:
            a.annotate("≤0", (x_ - 0.2, floor), fontsize=6, ha="center", va="bottom")
    a.set_yscale("log")
    a.set_ylim(floor / 2, 2)
    a.set_xticks(xs, [r["layer"] for r in per_layer], rotation=70, fontsize=7)
    a.set_ylabel("cost at int4 ÷ the largest layer's")
    a.set_title(
        "(a) one layer at int4 (others int8): solid = measured logit\nnoise increase, hatched = Hessian Ω(4)-Ω(8)"
    )
    from matplotlib.patches import Patch

    a.legend(handles=[Patch(color=col[r], label=r) for r in roles], fontsize=6, ncol=2)
    a = ax[0][1]
    for r in per_layer:
        a.plot(r["bytes_saved"], r["agree_drop_pp"], "o", color=col[r["role"]], ms=7)
        a.annotate(
            r["layer"],
            (r["bytes_saved"], r["agree_drop_pp"]),
            fontsize=6,
            xytext=(3, 2),
            textcoords="offset points",
        )
    a.axhline(0, color="k", lw=0.8)
    a.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    a.xaxis.set_minor_formatter(NullFormatter())
    a.set_xlabel("bytes saved by int4 instead of int8")
    a.set_ylabel("top-1 agreement lost vs int8 (pp)")
    a.set_title(f"(b) what int4 costs per layer ({len(ex)} held-out digits)")
    a = ax[0][2]
    a.plot(
        [r["bytes"] / 1000 for r in rand],
        [r["sqnr_db"] for r in rand],
        ".",
        color="0.6",
        label="random {4,8} plans",
    )
    marks = {
        "seed rule": ("*", "C3"),
        "inverse rule": ("X", "C4"),
        "Hessian ILP": ("o", "C0"),
        "noise-model ILP": ("s", "C2"),
        "Hessian ILP, concat-tied": ("D", "C1"),
    }
    for row in comparisons:
        for name, p in row["plans"].items():
            key = max((k for k in marks if name.startswith(k)), key=len)
            mk, c = marks[key]
            lab = key if row is comparisons[0] or key == "inverse rule" else None
            a.plot(
                p["bytes"] / 1000,
                p["sqnr_db"],
                mk,
                color=c,
                ms=9,
                label=lab,
                mfc="none" if "tied" in name else c,
            )
    a.plot(
        [r["bytes"] / 1000 for r in uniform_rows],
        [r["uniform"]["sqnr_db"] for r in uniform_rows],
        "k^",
        ms=8,
        label="uniform int5-7",
    )
    a.plot(
        [r["bytes"] / 1000 for r in uniform_rows],
        [r["hessian_ilp"]["sqnr_db"] for r in uniform_rows],
        "o",
        color="C0",
        ms=9,
    )
    a.plot(
        [nbytes({n: 8 for n in names}) / 1000, nbytes({n: 4 for n in names}) / 1000],
        [base["sqnr_db"], all4["sqnr_db"]],
        "kv",
        ms=8,
        label="uniform int8 / int4",
    )
    a.set_xlabel("model bytes (kB)")
    a.set_ylabel("measured logit SQNR (dB)")
    a.set_title("(c) allocations at equal bytes")
    a.legend(fontsize=6)
    figs = [save(fig, ctx, "claim3_inception.png")]

    by_role: dict[str, list[dict]] = {}
    for r in per_layer:
        by_role.setdefault(r["role"], []).append(r)
    tol = 1.0  # a layer needs int8 when int4 loses > 1 pp of agreement and > 2 paired s.e.
    tolerant = {
        r["layer"]: not (r["agree_drop_pp"] > tol and r["agree_drop_pp"] > 2 * r["agree_drop_se_pp"])
        for r in per_layer
    }
    bottlenecks = [r["layer"] for r in by_role.get("1x1 bottleneck", [])]
    spatial = [r["layer"] for r in by_role.get("spatial 3x3/5x5", [])]
    b_ok = all(tolerant[n] for n in bottlenecks)
    s_need8 = [n for n in spatial if not tolerant[n]]
    most = sorted(per_layer, key=lambda r: -r["noise_meas"])
    rank_meas = [r["layer"] for r in most]
    from scipy.stats import spearmanr

    rho_h = float(spearmanr([r["omega4"] for r in per_layer], [r["noise_meas"] for r in per_layer]).statistic)
    rho_n = float(
        spearmanr([r["noise_pred"] for r in per_layer], [r["noise_meas"] for r in per_layer]).statistic
    )
    c0 = comparisons[0]["plans"]
    rule_p, hes_p, noi_p = c0[next(iter(c0))], c0["Hessian ILP"], c0["noise-model ILP"]
    rand_sqnr = [r["sqnr_db"] for r in rand]
    rule_pct = float(np.mean([s <= rule_p["sqnr_db"] for s in rand_sqnr])) if rand else float("nan")
    mixed_beats_uniform = all(
        r["hessian_ilp"]["sqnr_db"] >= r["uniform"]["sqnr_db"] - 0.5 for r in uniform_rows
    )
    numbers = {
        "fp32_acc_test": z.evaluate(),
        "fp32_acc_heldout": float((top_fp == ey).mean()),
        "heldout_samples": len(ex),
        "calibration_samples": n_cal,
        "hutchinson_vectors_per_batch": hv,
        "int8_baseline": base,
        "int4_all": all4,
        "per_layer": per_layer,
        "comparisons": comparisons,
        "uniform_vs_ilp": uniform_rows,
        "random_plans": rand,
        "bottlenecks_tolerate_int4": b_ok,
        "spatial_needing_int8": s_need8,
        "spatial_layers": spatial,
        "measured_sensitivity_order": rank_meas,
        "spearman_hessian_vs_measured": rho_h,
        "spearman_noise_vs_measured": rho_n,
        "rule_sqnr_percentile_among_random": rule_pct,
        "negative_trace_layers": [r["layer"] for r in per_layer if r["trace_mean"] < 0],
        "hessian_ilp_minus_rule_sqnr_db": hes_p["sqnr_db"] - rule_p["sqnr_db"],
        "noise_ilp_minus_rule_sqnr_db": noi_p["sqnr_db"] - rule_p["sqnr_db"],
        "mixed_beats_uniform_at_equal_bytes": mixed_beats_uniform,
    }
    if b_ok and len(s_need8) == len(spatial):
        verdict = HOLDS
    elif b_ok or s_need8:
        verdict = PARTIAL
    else:
        verdict = FAILS
    spatial_ok = [n for n in spatial if n not in s_need8]
    spatial_costs = ", ".join(
        f"{r['layer']} {r['agree_drop_pp']:+.1f} ± {r['agree_drop_se_pp']:.1f} pp"
        for r in by_role.get("spatial 3x3/5x5", [])
    )
    reason = (
        f"**1x1 bottlenecks tolerate int4: {'yes' if b_ok else 'no'}**: alone at int4 each costs "
        + ", ".join(
            f"{r['layer']} {r['agree_drop_pp']:+.1f} ± {r['agree_drop_se_pp']:.1f} pp"
            for r in by_role.get("1x1 bottleneck", [])
        )
        + f" of top-1 agreement with the float model ({len(ex)} held-out digits; 1 digit = {100 / len(ex):.2f} pp; a "
        "layer needs int8 when int4 loses > 1 pp and > 2 paired s.e.). "
        f"**Spatial convolutions needing int8: {', '.join(s_need8) or 'none'}**; "
        f"{', '.join(spatial_ok) or 'none'} also tolerate int4 "
        f"({spatial_costs}). "
        f"The most sensitive layers, by measured logit noise at int4, are {', '.join(rank_meas[:3])}: sensitivity "
        "follows position (late layers, the classifier) and fan-in more than kernel size. "
        f"At the seed rule's bytes ({comparisons[0]['budget_bytes'] / 1000:.1f} kB) the rule reaches "
        f"{rule_p['sqnr_db']:.1f} dB logit SQNR (agreement {rule_p['agree']:.3f}), better than "
        f"{100 * rule_pct:.0f}% of random {{4,8}} plans of that size; the Hessian ILP reaches {hes_p['sqnr_db']:.1f} dB "
        f"({hes_p['agree']:.3f}), the noise-model ILP {noi_p['sqnr_db']:.1f} dB ({noi_p['agree']:.3f}). "
        f"Hessian Omega ranks the layers' measured cost with Spearman {rho_h:.2f} (noise model: {rho_n:.2f}); "
        f"{len(numbers['negative_trace_layers'])} layers have negative trace estimates (a non-convex, not fully "
        f"trained model: fp32 accuracy {numbers['fp32_acc_test']:.3f}). Mixed {{4,8}} vs uniform at equal bytes: "
        + "; ".join(
            f"int{r['bits']} {r['uniform']['sqnr_db']:.1f} dB vs Hessian ILP {r['hessian_ilp']['sqnr_db']:.1f} dB"
            for r in uniform_rows
        )
        + "."
    )
    return ClaimResult(
        3,
        "Mixed precision in an Inception block (1x1 at int4, spatial at int8)",
        "我们可以对网络的鲁棒部分使用非常少的比特（例如 4 比特），比如计算密集的 $1\\times1$ [瓶颈层]，同时保持更敏感的空间卷积层具有更高的精度"
        "（例如 8 比特）。通过使用更先进的敏感度度量，例如从[损失函数]的海森矩阵推导出的度量 ... 从而在给定的压缩水平下最大限度地减少准确率的下降",
        "In a GoogLeNet-style network the 1x1 bottleneck convolutions are robust (int4 suffices) while the "
        "spatial 3x3 / 5x5 convolutions are sensitive (need int8); a Hessian-derived sensitivity map allocates "
        "bits to minimise the accuracy loss at a given compression.",
        f"`load_zoo('inception')` (stem + 2 Inception blocks, digits; fp32 test accuracy {numbers['fp32_acc_test']:.3f}). "
        f"Hessian traces by Hutchinson ({hv} Rademacher vectors per batch of 128, {n_cal} labelled training digits; "
        "`hessian_traces`, `hessian_sensitivity`), noise model (`NoiseModel.build`, adjoint). Each layer alone at int4, "
        f"the others int8, activations 8-bit, measured by fake-quant simulation on {len(ex)} held-out digits "
        "(validation + test; test only with --quick): logit noise, SQNR, top-1 agreement with the float model. Allocations over {4, 8} by "
        f"`allocate_bits` at the bytes of the seed's rule and of its inverse, {len(rand)} random plans within 5% of the "
        "rule's bytes, and uniform int5-7 against the Hessian ILP at their bytes.",
        verdict,
        reason,
        numbers,
        figs,
        [
            {
                "layer": r["layer"],
                "role": r["role"],
                "weights": r["params"],
                "Tr(H)/n (± s.e.)": f"{r['trace_mean']:.2e} ± {r['trace_mean_se']:.1e}",
                "Ω(4)-Ω(8)": f"{r['omega4']:.2e}",
                "meas. noise/signal": f"{r['noise_meas'] / sig:.1e}",
                "agreement lost (pp ± paired s.e.)": f"{r['agree_drop_pp']:+.1f} ± {r['agree_drop_se_pp']:.1f}",
            }
            for r in per_layer
        ],
        notes=[
            "Allocations are per layer (the planner's concat tie of weight bits, `graph.precision_groups`, would force "
            "the 1x1 branch and the 3x3/5x5 branch of a block to the same bits and make the seed's rule impossible; "
            "the tied Hessian ILP is shown for comparison).",
            "Uniform int5-7 plans are simulated with a noise model built for those bits only (the library's NoiseModel "
            "simulates the bit-widths it was built with).",
        ],
    )
