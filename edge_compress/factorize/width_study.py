"""How compressibility changes with the width multiplier (EfficientNet-style width scaling).

For each zoo model and width multiplier, train (cached) a model, take every layer's singular
values and record the rank needed for 90% / 99% of the energy as a fraction of the full rank, and
the effective rank. Wider layers that learn the same function need a smaller fraction of their
rank: that is the compressibility a wider model buys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def width_study(
    names: Sequence[str] = ("lenet5", "conv1d"),
    widths: Sequence[float] = (0.5, 1.0, 1.5, 2.0),
    *,
    epochs: int | dict[str, int] | None = None,
    how: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """``{model: {width: {"acc", "params", "mean_rank90_frac", "mean_rank99_frac", "layers": {...}}}}``.

    ``epochs`` overrides the zoo's training epochs (per model with a dict) to keep the study short.
    """
    from edge_compress.factorize.rank import compressibility, spectrum
    from edge_compress.graph import extract_graph
    from edge_compress.zoo import load_zoo

    out: dict[str, Any] = {}
    for name in names:
        ep = epochs.get(name) if isinstance(epochs, dict) else epochs
        out[name] = {}
        for w in widths:
            z = load_zoo(name, width=float(w), epochs=ep)
            g = extract_graph(z.model, z.example_input())
            layers = {n: compressibility(s) for n, s in spectrum(z.model, g, how).items()}
            out[name][f"{w:g}"] = {
                "acc": z.evaluate(),
                "params": g.total_weight_params,
                "macs": g.total_macs,
                "epochs": z.meta.get("epochs"),
                "mean_rank90_frac": float(np.mean([v["rank90_frac"] for v in layers.values()])),
                "mean_rank99_frac": float(np.mean([v["rank99_frac"] for v in layers.values()])),
                "mean_effective_rank_frac": float(
                    np.mean([v["effective_rank_frac"] for v in layers.values()])
                ),
                "layers": layers,
            }
            if progress is not None:
                progress(f"{name} width {w:g}: acc {out[name][f'{w:g}']['acc']:.3f}")
    return out
