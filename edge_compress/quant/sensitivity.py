"""Per-layer sensitivity to weight quantization.

- ``hessian`` (HAWQ-V2): ``Omega_i(b) = Tr(H_i) / n_i * ||Q_b(W_i) - W_i||^2``, the second-order
  increase of the calibration loss when layer i's weights take the quantization error of the
  actual b-bit quantizer; ``Tr(H_i)`` by Hutchinson's estimator ``E[v^T H v]`` with Rademacher
  ``v`` and Hessian-vector products from a second backward pass.
- ``noise``: the additive noise model's ``gain_i(b) * ||Q_b(W_i) - W_i||^2``, the output noise
  power layer i adds to the logits (see :mod:`edge_compress.quant.noise`).

Both are computed on the BN-folded model: that is what gets quantized.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edge_compress.errors import UserError
from edge_compress.quant.rounding import WeightQuantizer


@dataclass(frozen=True)
class HessianTrace:
    """Hutchinson estimate of one layer's Hessian trace (sum over its weights)."""

    name: str
    trace: float
    n_params: int
    stderr: float  # standard error of the estimate over the Rademacher samples

    @property
    def mean(self) -> float:
        """Mean diagonal Hessian entry, Tr(H) / n (the HAWQ-V2 sensitivity factor)."""
        return self.trace / max(self.n_params, 1)


def hessian_traces(
    model: nn.Module,
    layer_names: list[str],
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    n_samples: int = 16,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, HessianTrace]:
    """Per-layer Hessian trace of the mean cross-entropy loss on ``(x, y)`` w.r.t. each layer's weight.

    ``y`` defaults to the model's own predictions (pseudo-labels) when no labels are given.
    Uses ``n_samples`` Rademacher vectors per batch; batches are weighted by their size.
    """
    mods = dict(model.named_modules())
    missing = [
        n
        for n in layer_names
        if n not in mods or not isinstance(getattr(mods[n], "weight", None), torch.Tensor)
    ]
    if missing:
        raise UserError(f"layer {missing[0]!r} has no weight tensor to compute a Hessian trace for.")
    model = model.eval()
    params = [mods[n].weight for n in layer_names]
    flags = [p.requires_grad for p in params]
    gen = torch.Generator().manual_seed(seed)
    if y is None:
        with torch.no_grad():
            y = np.concatenate(
                [
                    model(torch.from_numpy(np.ascontiguousarray(x[i : i + 512]))).argmax(1).numpy()
                    for i in range(0, len(x), 512)
                ]
            )
    vals: list[list[float]] = [[] for _ in layer_names]  # one estimate per (batch, Rademacher vector)
    wts: list[float] = []
    loss_fn = nn.CrossEntropyLoss()
    try:
        for p in params:
            p.requires_grad_(True)
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))
            yb = torch.from_numpy(np.ascontiguousarray(y[i : i + batch_size])).long()
            loss = loss_fn(model(xb), yb)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            for s in range(n_samples):
                vs = [torch.randint(0, 2, p.shape, generator=gen).to(p.dtype) * 2 - 1 for p in params]
                hv = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=s < n_samples - 1)
                for k, (h, v) in enumerate(zip(hv, vs, strict=True)):
                    vals[k].append(float((h * v).sum()))
                wts.append(float(len(xb)))
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
    w = np.asarray(wts) / sum(wts)
    out = {}
    for k, n in enumerate(layer_names):
        v = np.asarray(vals[k])
        tr = float(np.dot(w, v))
        se = float(np.sqrt(np.dot(w, (v - tr) ** 2) / max(len(v) - 1, 1))) if len(v) > 1 else float("nan")
        out[n] = HessianTrace(n, tr, params[k].numel(), se)
    return out


def hessian_sensitivity(
    model: nn.Module,
    options: dict[str, Iterable[int]],
    traces: dict[str, HessianTrace],
    weight_clip: str = "mse",
    quantizer: WeightQuantizer | None = None,
) -> dict[tuple[str, int], float]:
    """HAWQ-V2 ``Omega_i(b) = Tr(H_i)/n_i * ||Q_b(W_i) - W_i||^2`` for every layer and candidate bits,
    ``Q_b`` being ``quantizer``'s weights (its rounding; default round-to-nearest).

    Hutchinson estimates are noisy (the cross terms of a Rademacher probe); a layer whose estimate
    is below one standard error (possibly negative) gets the standard error instead, so a noisy
    estimate never makes a layer look free to quantize.
    """
    wq = quantizer or WeightQuantizer(model, "nearest")
    out: dict[tuple[str, int], float] = {}
    for n, bits in options.items():
        t = traces[n]
        se = t.stderr if math.isfinite(t.stderr) else 0.0
        factor = max(t.trace, se, 0.0) / max(t.n_params, 1)
        for b in bits:
            measured, _ = wq.error(n, b, True, weight_clip)
            out[(n, b)] = factor * float(measured.sum())
    return out
