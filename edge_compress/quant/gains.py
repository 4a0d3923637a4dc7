"""Measuring the noise model's per-layer terms on calibration data (used by :class:`NoiseModel.build`).

- ``adjoint``: per-channel weight gains and per-element input gains from backward passes with
  Rademacher output probes (``E||J^T u||^2`` restricted to a channel is its squared Jacobian norm);
- ``inject``: Gaussian noise of known variance injected into one layer's weights (or input) at a
  time, output noise power measured over a few draws;
- ``realized``: each layer quantized alone with its actual quantizer, output noise measured;
- ``pair_terms``: pairs of terms applied together, their measured interaction.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edge_compress.quant import fakequant as fq

if TYPE_CHECKING:
    from edge_compress.graph import ModelGraph
    from edge_compress.quant.noise import LayerNoise
    from edge_compress.quant.rounding import WeightQuantizer


@torch.no_grad()
def shared_inputs(model: nn.Module, names: list[str], x: np.ndarray) -> list[list[str]]:
    """Groups of layers whose input is the very same tensor (in execution order)."""
    mods = dict(model.named_modules())
    seen: dict[str, int] = {}
    keep: list[torch.Tensor] = []  # keep the tensors alive so data pointers stay unique

    def hook(inp: tuple[torch.Tensor, ...], n: str) -> None:
        keep.append(inp[0])
        seen.setdefault(n, inp[0].data_ptr())

    hooks = [mods[n].register_forward_pre_hook(lambda m, i, n=n: hook(i, n)) for n in names]
    try:
        model(torch.from_numpy(np.ascontiguousarray(x)))
    finally:
        for h in hooks:
            h.remove()
    groups: dict[int, list[str]] = {}
    for n in names:
        groups.setdefault(seen.get(n, -1 - len(groups)), []).append(n)
    return list(groups.values())


def adjoint_gains(
    net: nn.Module,
    graph: ModelGraph,
    layers: dict[str, LayerNoise],
    errors: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]],
    share: list[list[str]],
    ranges: dict[str, tuple[float, float]],
    act_bits: tuple[int, ...],
    x: np.ndarray,
    draws: int,
    gen: torch.Generator,
    chunk: int = 64,
) -> None:
    """Per-channel weight gains and per-element input gains from ``draws`` backward passes."""
    mods = dict(net.named_modules())
    names = graph.names
    params = [mods[n].weight for n in names]
    flags = [p.requires_grad for p in params]
    w_sq = {n: torch.zeros(mods[n].weight.shape[0], dtype=torch.float64) for n in names}
    a_sum = {g[0]: 0.0 for g in share}  # sum_e A_e (for the gain per unit variance)
    a_meas = {g[0]: {ab: 0.0 for ab in act_bits} for g in share}  # sum_e err_e^2 A_e
    lead_of = {n: g[0] for g in share for n in g}
    n_out = 0
    try:
        for p in params:
            p.requires_grad_(True)
        for i in range(0, len(x), chunk):
            xb = torch.from_numpy(np.ascontiguousarray(x[i : i + chunk]))
            probes: dict[str, torch.Tensor] = {}
            inputs: dict[str, torch.Tensor] = {}

            def pre(
                mod: nn.Module, inp: tuple[torch.Tensor, ...], n: str, probes=probes, inputs=inputs
            ) -> tuple[torch.Tensor, ...]:
                lead = lead_of[n]
                if lead not in probes:
                    probes[lead] = torch.zeros_like(inp[0], requires_grad=True)
                    inputs[lead] = inp[0].detach()
                return (inp[0] + probes[lead],) + tuple(inp[1:])

            hooks = [mods[n].register_forward_pre_hook(lambda m, inp, n=n: pre(m, inp, n)) for n in names]
            try:
                y = net(xb)
            finally:
                for h in hooks:
                    h.remove()
            leads = list(probes)
            a_acc = {g: torch.zeros_like(probes[g]) for g in leads}
            for d in range(draws):
                u = torch.randint(0, 2, y.shape, generator=gen).to(y.dtype) * 2 - 1
                grads = torch.autograd.grad(
                    y, params + [probes[g] for g in leads], u, retain_graph=d < draws - 1
                )
                for n, g in zip(names, grads[: len(names)], strict=True):
                    w_sq[n] += (g.detach().double() ** 2).reshape(g.shape[0], -1).sum(dim=1) / draws
                for lead, g in zip(leads, grads[len(names) :], strict=True):
                    a_acc[lead] += g.detach() ** 2 / draws
            for lead in leads:
                a_sum[lead] += float(a_acc[lead].double().sum())
                for ab in act_bits:
                    aq = fq.act_quant_from_range(*ranges[lead], ab)
                    err = aq.fake(inputs[lead]) - inputs[lead]
                    a_meas[lead][ab] += float((err.double() ** 2 * a_acc[lead].double()).sum())
            n_out += y.numel()
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
    for n in names:
        ln = layers[n]
        s_c = w_sq[n].numpy() / n_out  # output power per unit variance on every weight of channel c
        n_c = ln.n_weights // max(len(s_c), 1)
        for b, (meas, step) in errors[n].items():
            ln.w_out[b] = float(np.dot(meas / n_c, s_c))
            ln.w_out_step[b] = float(np.dot(step / n_c, s_c))
            ln.w_gain[b] = ln.w_out[b] / max(ln.w_energy[b], 1e-300)
    for g in share:
        lead = layers[g[0]]
        lead.a_gain = a_sum[g[0]] / n_out
        for ab in act_bits:
            lead.a_out[ab] = a_meas[g[0]][ab] / n_out
            lead.a_out_step[ab] = lead.a_gain * lead.a_err_step[ab]


def inject_gains(
    net: nn.Module,
    graph: ModelGraph,
    layers: dict[str, LayerNoise],
    errors: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]],
    share: list[list[str]],
    quants: dict[str, fq.ActQuant],
    act_bits: tuple[int, ...],
    xt: torch.Tensor,
    y0: torch.Tensor,
    draws: int,
    gen: torch.Generator,
) -> None:
    """Gains by injecting Gaussian noise of known variance, one layer (or shared input) at a time."""
    mods = dict(net.named_modules())

    def out_power() -> float:
        with torch.no_grad():
            return float(((net(xt).float() - y0).double() ** 2).mean())

    for li in graph.layers:
        ln, m = layers[li.name], mods[li.name]
        w0 = m.weight.detach().clone()
        n_c = w0[0].numel()
        ref = min(ln.w_energy_step.values())  # inject at the finest level: the linear regime
        shape = [-1] + [1] * (w0.dim() - 1)
        try:
            for b, (meas, step) in errors[li.name].items():
                var = np.maximum(meas, step * 1e-6) / n_c  # the b-bit quantizer's per-channel profile
                var = var * (ref / max(float(var.sum() * n_c), 1e-300))
                std = torch.from_numpy(np.sqrt(var)).to(w0.dtype).reshape(shape)
                gains = []
                for _ in range(draws):
                    noise = torch.randn(w0.shape, generator=gen, dtype=w0.dtype) * std
                    with torch.no_grad():
                        m.weight.copy_(w0 + noise)
                    gains.append(out_power() / max(float((noise.double() ** 2).sum()), 1e-300))
                ln.w_gain[b] = float(np.mean(gains))
                ln.w_out[b] = ln.w_gain[b] * ln.w_energy[b]
                ln.w_out_step[b] = ln.w_gain[b] * ln.w_energy_step[b]
        finally:
            with torch.no_grad():
                m.weight.copy_(w0)
    for members in share:
        lead = layers[members[0]]
        aq = quants.get(members[0])
        sigma2 = max(lead.a_err_step[min(act_bits)], 1e-20) if act_bits else 1e-6
        lead.a_gain = _act_gain(net, [mods[n] for n in members], xt, y0, sigma2, draws, gen, aq)
        for ab in act_bits:
            lead.a_out[ab] = lead.a_gain * lead.a_err[ab]
            lead.a_out_step[ab] = lead.a_gain * lead.a_err_step[ab]


class TermApplier:
    """Applies noise-model terms to the network in place, any number at once: ``("w", layer, bits)``
    quantizes a layer's weights (each quantized tensor computed once), ``("a", group lead, bits)``
    fake-quantizes the input of every layer of that shared-input group. ``quantizer``: where the
    quantized weights come from (its rounding: GPTQ or nearest; default round-to-nearest).

    ``recenter``: the float network's per-channel output means of the layers a plan bias-corrects
    (:func:`fakequant.output_means` on the batch the terms are measured on). While terms are
    applied, those layers' outputs are moved back to them (:func:`fakequant.recentered`), which is
    the plan's empirical bias correction computed on that batch: each term is measured as it acts
    in a corrected plan, its mean removed at every layer it passes."""

    def __init__(
        self,
        net: nn.Module,
        share: list[list[str]],
        ranges: dict[str, tuple[float, float]],
        weight_clip: str,
        recenter: dict[str, torch.Tensor] | None = None,
        quantizer: WeightQuantizer | None = None,
    ) -> None:
        from edge_compress.quant.rounding import WeightQuantizer

        self.net = net
        self.mods = dict(net.named_modules())
        self.members = {m[0]: m for m in share}
        self.ranges, self.weight_clip = ranges, weight_clip
        self.recenter = recenter
        self.quantizer = quantizer or WeightQuantizer(net, "nearest")

    def quantized(self, name: str, bits: int) -> torch.Tensor:
        return self.quantizer.weight(name, bits, True, self.weight_clip)

    @contextlib.contextmanager
    def applied(self, keys: list[tuple[str, str, int]]) -> Iterator[None]:
        saved: list[tuple[nn.Module, torch.Tensor]] = []
        hooks = []
        try:
            for kind, name, bits in keys:
                if kind == "w":
                    m = self.mods[name]
                    q = self.quantized(name, bits)
                    saved.append((m, m.weight.detach().clone()))
                    with torch.no_grad():
                        m.weight.copy_(q)
                    continue
                for n in self.members[name]:
                    aq = fq.act_quant_from_range(*self.ranges[n], bits)
                    hooks.append(self.mods[n].register_forward_pre_hook(fq.input_quant_hook(aq)))
            with fq.recentered(self.net, self.recenter) if self.recenter else contextlib.nullcontext():
                yield
        finally:
            with torch.no_grad():
                for m, w0 in reversed(saved):
                    m.weight.copy_(w0)
            for h in hooks:
                h.remove()


def _output_error(net: nn.Module, xt: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
    """The network's output minus the float output ``y0``, in double precision."""
    return (net(xt).float() - y0).double()


@torch.no_grad()
def realized_terms(
    net: nn.Module,
    graph: ModelGraph,
    layers: dict[str, LayerNoise],
    share: list[list[str]],
    act_bits: tuple[int, ...],
    applier: TermApplier,
    xt: torch.Tensor,
    y0: torch.Tensor,
    vectors: dict[tuple[str, str, int], np.ndarray] | None = None,
    sketch_dim: int = 16384,
    seed: int = 0,
) -> None:
    """Output noise power of each layer quantized alone (weights), and of each input quantizer alone.

    With ``vectors``, each term's output error itself is kept too, keyed ``("w", layer, bits)`` or
    ``("a", group lead, bits)``: flattened, or count-sketched to ``sketch_dim`` elements when the
    output is larger (a signed hashing that keeps every inner product's expectation), so that
    :class:`CoherentTerms` can add the errors as the vectors they are.
    """
    n_out = y0.numel()
    sketch = None
    if vectors is not None and n_out > sketch_dim:
        rng = np.random.default_rng(seed)
        sketch = (rng.integers(sketch_dim, size=n_out), rng.choice([-1.0, 1.0], size=n_out))

    def power(key: tuple[str, str, int]) -> float:
        with applier.applied([key]):
            err = _output_error(net, xt, y0)
        if vectors is not None:
            e = err.reshape(-1).numpy()
            if sketch is not None:
                e = np.bincount(sketch[0], weights=sketch[1] * e, minlength=sketch_dim)
            vectors[key] = e.astype(np.float32)
        return float((err**2).mean())

    for li in graph.layers:
        ln = layers[li.name]
        for b in ln.bits:
            ln.w_out_real[b] = power(("w", li.name, b))
    for members in share if act_bits else ():
        for ab in act_bits:
            layers[members[0]].a_out_real[ab] = power(("a", members[0], ab))


@torch.no_grad()
def pair_terms(
    net: nn.Module,
    applier: TermApplier,
    keys: list[tuple[str, str, int]],
    powers: np.ndarray,
    xt: torch.Tensor,
    y0: torch.Tensor,
    max_pairs: int,
) -> list[tuple[int, int, float]]:
    """Measured interaction of pairs of terms: ``(P_ij - P_i - P_j) / 2`` with ``P_ij`` the output
    noise power of terms ``i`` and ``j`` applied together.

    For small errors this is the inner product of the two terms' output errors; for large ones
    (a 4-bit stem) it also holds the second-order effect of each term on the other (the stem's
    error moves the activations the next layer's error acts on). Pairs that never occur together
    (two bit-widths of one layer or one input group) are skipped; of the rest, the ``max_pairs``
    with the largest ``sqrt(P_i P_j)`` (the scale of a cross term) are measured.
    """
    cand = [
        (math.sqrt(max(powers[i] * powers[j], 0.0)), i, j)
        for i in range(len(keys))
        for j in range(i + 1, len(keys))
        if keys[i][:2] != keys[j][:2]
    ]
    cand.sort(key=lambda t: -t[0])
    out = []
    for _, i, j in cand[: max(max_pairs, 0)]:
        with applier.applied([keys[i], keys[j]]):
            p = float((_output_error(net, xt, y0) ** 2).mean())
        out.append((i, j, (p - powers[i] - powers[j]) / 2.0))
    return out


def _act_gain(
    model: nn.Module,
    mods: list[nn.Module],
    xt: torch.Tensor,
    y0: torch.Tensor,
    sigma2: float,
    draws: int,
    gen: torch.Generator,
    aq: fq.ActQuant | None = None,
) -> float:
    """Output noise power per unit variance of Gaussian noise added to the (shared) input of ``mods``.

    With a quantizer ``aq`` the noise goes only where that quantizer is inexact (exact zeros after
    a ReLU stay exact), so the gain weighs the elements the way the quantization error does; the
    variance it is divided by is the mean over all elements, like the quantizer's error power.
    """
    state: dict[str, Any] = {}

    def pre(mod: nn.Module, inp: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        t = inp[0]
        if "noise" not in state:
            noise = torch.randn(t.shape, generator=gen, dtype=t.dtype) * math.sqrt(sigma2)
            if aq is not None:
                noise = noise * ((aq.fake(t) - t).abs() > 0).to(t.dtype)
            state["noise"] = noise
            state["var"] = float((noise.double() ** 2).mean())
        return (t + state["noise"],) + tuple(inp[1:])

    hooks = [m.register_forward_pre_hook(pre) for m in mods]
    gains = []
    try:
        for _ in range(draws):
            state.clear()
            with torch.no_grad():
                y = model(xt).float()
            var = state.get("var", sigma2)
            gains.append(float(((y - y0).double() ** 2).mean()) / max(var, 1e-300))
    finally:
        for h in hooks:
            h.remove()
    return float(np.mean(gains))
