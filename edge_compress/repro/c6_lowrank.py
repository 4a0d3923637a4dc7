"""Claim 6: weight matrices are low rank; the decay of their singular values measures how
compressible a layer is, and that compressibility changes with the width multiplier.

For zoo models trained at width multipliers 0.5-2 (``factorize.width_study.width_study``, cached
training): every layer's singular values (``factorize.rank.spectrum``: the matrix each layer's
factorization would decompose), the fraction of the full rank holding 90% / 99% of the energy,
the effective rank; the same for the *untrained* network of that width (random initialization:
what width alone does to the statistics), and the payoff: truncating every layer to 95% of its
energy (``ranks_by_energy`` + ``factorize_model``), parameters kept and accuracy without fine-tuning.
"""

from __future__ import annotations

import numpy as np

from edge_compress.repro.common import FAILS, HOLDS, PARTIAL, ClaimResult, Context, figure, save, torch_setup

TAU = 0.95


def run(ctx: Context) -> ClaimResult:
    from edge_compress.factorize.rank import compressibility, ranks_by_energy, spectrum
    from edge_compress.factorize.svd import factorize_model
    from edge_compress.factorize.width_study import width_study
    from edge_compress.graph import extract_graph
    from edge_compress.zoo import load_zoo

    torch_setup()
    names = ctx.pick(("lenet5",), ("lenet5", "conv1d"))
    widths = ctx.pick((0.5, 1.0, 2.0), (0.5, 1.0, 1.5, 2.0))
    # quick: 8 epochs; full: LeNet-5 with the zoo's epochs (width 1 is the cached zoo model), the 1-D CNN 30
    epochs: dict[str, int | None] = ctx.pick({"lenet5": 8}, {"lenet5": None, "conv1d": 30})
    study = width_study(names, widths, epochs=epochs, progress=ctx.log)
    out: dict = {}
    spectra: dict = {}
    for name in names:
        ep = epochs.get(name)
        out[name] = {}
        spectra[name] = {}
        for w in widths:
            key = f"{w:g}"
            z = load_zoo(name, width=w, epochs=ep)  # cached by width_study
            g = extract_graph(z.model, z.example_input())
            sp = spectrum(z.model, g)
            u = load_zoo(name, width=w, trained=False, seed=ctx.seed)
            usp = spectrum(u.model, extract_graph(u.model, u.example_input()))
            ranks = ranks_by_energy(z.model, g, TAU)
            f = factorize_model(z.model, g, ranks)
            gf = extract_graph(f, z.example_input())
            s = study[name][key]
            out[name][key] = {
                "acc": s["acc"],
                "params": s["params"],
                "mean_rank90_frac": s["mean_rank90_frac"],
                "mean_rank99_frac": s["mean_rank99_frac"],
                "mean_effective_rank_frac": s["mean_effective_rank_frac"],
                "untrained_mean_rank90_frac": float(
                    np.mean([compressibility(v)["rank90_frac"] for v in usp.values()])
                ),
                "layers": {n: {k: v for k, v in d.items()} for n, d in s["layers"].items()},
                "untrained_layers": {n: compressibility(v) for n, v in usp.items()},
                f"truncate{int(TAU * 100)}": {
                    "params_ratio": gf.total_weight_params / g.total_weight_params,
                    "macs_ratio": gf.total_macs / g.total_macs,
                    "acc": z.evaluate(f),
                    "layers_factorized": len(ranks),
                },
            }
            spectra[name][key] = {n: (v / v[0]).tolist() for n, v in sp.items()}
            spectra[name][key + "_untrained"] = {n: (v / v[0]).tolist() for n, v in usp.items()}

    # ---- figure: spectra of the biggest layer per model across widths, rank fraction vs width
    fig, ax = figure(1, 3, 15, 4.3)
    a = ax[0][0]
    ref = names[0]
    big = max(spectra[ref][f"{widths[0]:g}"], key=lambda n: len(spectra[ref][f"{widths[-1]:g}"][n]))
    cmap = [f"C{i}" for i in range(len(widths))]
    for i, w in enumerate(widths):
        s = np.asarray(spectra[ref][f"{w:g}"][big])
        su = np.asarray(spectra[ref][f"{w:g}_untrained"][big])
        a.semilogy(
            np.arange(1, len(s) + 1) / len(s),
            s,
            "-",
            color=cmap[i],
            label=f"width {w:g} trained (n={len(s)})",
        )
        a.semilogy(np.arange(1, len(su) + 1) / len(su), su, ":", color=cmap[i], lw=1)
    a.set_xlabel("singular value index / full rank")
    a.set_ylabel("σ_i / σ_1")
    a.set_title(f"(a) {ref}.{big} spectrum vs width (dotted: untrained)")
    a.legend(fontsize=7)
    a = ax[0][1]
    layers = list(spectra[ref][f"{widths[0]:g}"])
    for j, n in enumerate(layers):
        a.plot(
            widths,
            [out[ref][f"{w:g}"]["layers"][n]["rank90_frac"] for w in widths],
            "o-",
            color=f"C{j}",
            label=f"{ref}.{n}",
        )
        a.plot(
            widths,
            [out[ref][f"{w:g}"]["untrained_layers"][n]["rank90_frac"] for w in widths],
            "x:",
            color=f"C{j}",
            lw=0.8,
        )
    a.set_xlabel("width multiplier")
    a.set_ylabel("rank for 90% energy / full rank")
    a.set_title(f"(b) {ref} per layer (o trained, x untrained)")
    a.legend(fontsize=6)
    a = ax[0][2]
    for i, name in enumerate(names):
        a.plot(
            widths,
            [out[name][f"{w:g}"]["mean_rank90_frac"] for w in widths],
            "o-",
            color=f"C{i}",
            label=f"{name}: rank90 / full",
        )
        a.plot(
            widths,
            [out[name][f"{w:g}"]["untrained_mean_rank90_frac"] for w in widths],
            "x:",
            color=f"C{i}",
            label=f"{name}: untrained",
        )
        a.plot(
            widths,
            [out[name][f"{w:g}"][f"truncate{int(TAU * 100)}"]["params_ratio"] for w in widths],
            "s--",
            color=f"C{i}",
            alpha=0.6,
            label=f"{name}: params kept at {int(TAU * 100)}% energy",
        )
    a.set_xlabel("width multiplier")
    a.set_ylabel("fraction")
    a.set_title("(c) mean over layers")
    a.legend(fontsize=6)
    figs = [save(fig, ctx, "claim6_lowrank.png")]

    trends = {}
    for name in names:
        r = [out[name][f"{w:g}"]["mean_rank90_frac"] for w in widths]
        ru = [out[name][f"{w:g}"]["untrained_mean_rank90_frac"] for w in widths]
        trends[name] = {
            "rank90_frac": r,
            "untrained_rank90_frac": ru,
            "decreasing": all(b <= a_ + 0.02 for a_, b in zip(r, r[1:], strict=False)) and r[-1] < r[0],
            "below_untrained": all(a_ < b for a_, b in zip(r, ru, strict=True)),
            "gap_to_untrained": [b - a_ for a_, b in zip(r, ru, strict=True)],
        }
    low_rank = all(t["below_untrained"] for t in trends.values())
    decreasing = all(t["decreasing"] for t in trends.values())
    ep_txt = ", ".join(f"{n} {epochs.get(n) or 'zoo default'}" for n in names)
    numbers = {
        "models": names,
        "widths": list(widths),
        "epochs": {n: epochs.get(n) for n in names},
        "results": out,
        "trends": trends,
        "energy_tau": TAU,
        "spectrum_layer": f"{ref}.{big}",
    }
    verdict = HOLDS if low_rank and decreasing else (PARTIAL if low_rank or decreasing else FAILS)
    parts = []
    tkey = f"truncate{int(TAU * 100)}"
    for name in names:
        t = trends[name]
        rows = [out[name][f"{w:g}"] for w in widths]
        kept = " / ".join(f"{r[tkey]['params_ratio']:.2f}" for r in rows)
        acc_t = " / ".join(f"{r[tkey]['acc']:.3f}" for r in rows)
        acc_0 = " / ".join(f"{r['acc']:.3f}" for r in rows)
        parts.append(
            f"{name}: rank for 90% energy / full rank {' → '.join(f'{v:.2f}' for v in t['rank90_frac'])} over widths "
            f"{', '.join(f'{w:g}' for w in widths)} (untrained: {' → '.join(f'{v:.2f}' for v in t['untrained_rank90_frac'])}); "
            f"keeping {int(TAU * 100)}% of each layer's energy keeps {kept} of the weights at accuracy {acc_t} "
            f"(unfactorized {acc_0})"
        )
    reason = (
        "; ".join(parts)
        + ". "
        + (
            "Trained layers need a smaller fraction of their rank than untrained ones of the same shape: the low rank is "
            "learned, not an artefact of the shape. "
            if low_rank
            else "Trained layers are not consistently lower-rank than untrained ones of the same shape. "
        )
        + (
            "Wider networks need a smaller fraction of their rank: width buys compressibility, as the seed says. "
            if decreasing
            else "The rank fraction does not fall consistently with width, so width does not simply buy compressibility here. "
        )
    )
    return ClaimResult(
        6,
        "Low rank: singular-value decay and width",
        "[神经网络]中的许多大型权重矩阵是“低秩”的 ... 理解一个层的“可压缩性”——通过其[奇异值]的衰减来揭示——如何与宽度缩放相互作用，"
        "使我们能够从一开始就构建本质上更高效的模型",
        "Trained weight matrices are low rank (fast singular-value decay), and how compressible a layer is changes "
        "with the width multiplier (wider layers need a smaller fraction of their rank).",
        f"{', '.join(names)} trained at width multipliers {', '.join(f'{w:g}' for w in widths)} "
        f"(`width_study`, epochs: {ep_txt}; weights cached); per layer "
        "`spectrum` / `compressibility` (rank for 90% / 99% of the energy as a fraction of the full rank, effective rank), "
        "the same for the untrained network of each width, and truncation to 95% energy per layer "
        "(`ranks_by_energy`, `factorize_model`) with test accuracy, no fine-tuning.",
        verdict,
        reason,
        numbers,
        figs,
        [
            {
                "model": name,
                "width": w,
                "params": out[name][f"{w:g}"]["params"],
                "acc": f"{out[name][f'{w:g}']['acc']:.3f}",
                "rank90/full": f"{out[name][f'{w:g}']['mean_rank90_frac']:.2f}",
                "rank99/full": f"{out[name][f'{w:g}']['mean_rank99_frac']:.2f}",
                "untrained rank90/full": f"{out[name][f'{w:g}']['untrained_mean_rank90_frac']:.2f}",
                f"params kept @{int(TAU * 100)}% energy": f"{out[name][f'{w:g}'][f'truncate{int(TAU * 100)}']['params_ratio']:.2f}",
                "acc after truncation": f"{out[name][f'{w:g}'][f'truncate{int(TAU * 100)}']['acc']:.3f}",
            }
            for name in names
            for w in widths
        ],
    )
