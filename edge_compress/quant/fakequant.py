"""Quantization numerics shared by the planner (simulation) and the exporters (runtime files).

Conventions (they match what integer runtimes execute, so exports can reproduce them exactly):

- BatchNorm is folded into the preceding convolution before anything is quantized
  (:func:`fold_batchnorm`): deployable integer models never keep a separate BN.
- Weights: symmetric, per output channel, zero point 0, restricted range
  ``q in [-(2^(b-1) - 1), 2^(b-1) - 1]`` (int8: +-127, int4: +-7), scale chosen by min-max or by
  minimising the mean squared error over clipping ratios (what matters at 4 bits).
- Activations: each quantizable layer's *input* is quantized asymmetrically (uint8 for 8 bits,
  with a zero point; int16 symmetric for 16 bits) with a range from calibration: min-max,
  percentile, or MSE-optimal clipping. The range always contains 0.

:class:`LayerQuant` holds the exact scales; :func:`simulate` applies them in torch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from edge_compress.errors import UserError

if TYPE_CHECKING:
    from edge_compress.graph import ModelGraph
    from edge_compress.plan import CompressionPlan

_CLIP_GRID = np.linspace(0.3, 1.0, 36)


# --------------------------------------------------------------------------------------------
# BatchNorm folding


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BN that directly follows a conv folded into that conv.

    Folding is done with torch.fx to find conv -> bn edges where the conv has no other user.
    The BN module is replaced by ``nn.Identity`` so module names of the convs are unchanged.
    """
    import torch.fx as fx

    model = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - untraceable: nothing to fold safely
        return model
    mods = dict(model.named_modules())
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(
            mods.get(node.target), (nn.BatchNorm1d, nn.BatchNorm2d)
        ):
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module"):
            continue
        conv = mods.get(src.target)
        if not isinstance(conv, (nn.Conv1d, nn.Conv2d)) or len(src.users) != 1:
            continue
        bn = mods[node.target]
        _fold_into(conv, bn)
        _set_module(model, str(node.target), nn.Identity())
    return model


@torch.no_grad()
def _fold_into(conv: nn.Module, bn: nn.Module) -> None:
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    factor = gamma / std
    shape = [-1] + [1] * (conv.weight.dim() - 1)
    conv.weight.mul_(factor.reshape(shape))
    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_b = (b - bn.running_mean) * factor + beta
    conv.bias = nn.Parameter(new_b.detach().clone())


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


# --------------------------------------------------------------------------------------------
# weights


def qmax_weight(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _fake_sym(w: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    shape = [-1] + [1] * (w.dim() - 1)
    s = scale.reshape(shape)
    return torch.clamp(torch.round(w / s), -qmax, qmax) * s


@torch.no_grad()
def weight_scales(w: torch.Tensor, bits: int, per_channel: bool = True, clip: str = "mse") -> torch.Tensor:
    """Symmetric scales, one per output channel (or one, broadcast, when not per-channel)."""
    if bits < 2 or bits > 16:
        raise UserError(f"weight bits must be between 2 and 16, got {bits}.")
    qmax = qmax_weight(bits)
    flat = w.detach().reshape(w.shape[0], -1).abs() if per_channel else w.detach().reshape(1, -1).abs()
    amax = flat.max(dim=1).values.clamp_min(1e-12)
    if clip == "mse":
        best = amax.clone()
        best_err = torch.full_like(amax, float("inf"))
        wf = w.detach().reshape(flat.shape[0], -1) if per_channel else w.detach().reshape(1, -1)
        for r in _CLIP_GRID:
            s = (amax * float(r)) / qmax
            q = torch.clamp(torch.round(wf / s[:, None]), -qmax, qmax) * s[:, None]
            err = ((q - wf) ** 2).sum(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, amax * float(r), best)
        amax = best
    elif clip != "minmax":
        raise UserError(f"unknown weight clipping {clip!r} (use minmax or mse).")
    scale = amax / qmax
    if not per_channel:
        scale = scale.expand(w.shape[0]).clone()
    return scale


@torch.no_grad()
def quantize_weight(
    w: torch.Tensor, bits: int, per_channel: bool = True, clip: str = "mse"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dequantized weight, per-channel scale)."""
    scale = weight_scales(w, bits, per_channel, clip)
    return _fake_sym(w, scale, qmax_weight(bits)), scale


# --------------------------------------------------------------------------------------------
# activations


@dataclass(frozen=True)
class ActQuant:
    """Affine activation quantizer: q = clamp(round(x / scale) + zero_point, qmin, qmax)."""

    bits: int
    scale: float
    zero_point: int
    qmin: int
    qmax: int

    def fake(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(torch.round(x / self.scale) + self.zero_point, self.qmin, self.qmax)
        return (q - self.zero_point) * self.scale


def act_quant_from_range(lo: float, hi: float, bits: int) -> ActQuant:
    """uint8 (asymmetric) for 8 bits, signed symmetric for 16 bits; the range always holds 0."""
    lo, hi = min(0.0, float(lo)), max(0.0, float(hi))
    if hi - lo < 1e-12:
        hi = lo + 1e-6
    if bits == 16:
        amax = max(abs(lo), abs(hi))
        qmax = 2**15 - 1
        return ActQuant(16, amax / qmax, 0, -qmax, qmax)
    qmin, qmax = 0, 2**bits - 1
    scale = (hi - lo) / (qmax - qmin)
    zp = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return ActQuant(bits, scale, zp, qmin, qmax)


def _range(x: np.ndarray, method: str, bits: int) -> tuple[float, float]:
    lo, hi = float(x.min()), float(x.max())
    if method == "minmax":
        return lo, hi
    if method == "percentile":
        return float(np.percentile(x, 0.01)), float(np.percentile(x, 99.99))
    if method == "mse":
        sample = x if x.size <= 200_000 else np.random.default_rng(0).choice(x, 200_000, replace=False)
        t = torch.from_numpy(sample.astype(np.float32))
        best, best_err = (lo, hi), float("inf")
        for r in _CLIP_GRID:
            aq = act_quant_from_range(lo * r, hi * r, bits)
            err = float(((aq.fake(t) - t) ** 2).mean())
            if err < best_err:
                best, best_err = (lo * r, hi * r), err
        return best
    raise UserError(f"unknown activation calibration {method!r} (use minmax, percentile or mse).")


@torch.no_grad()
def collect_inputs(
    model: nn.Module, layer_names: list[str], x: np.ndarray, batch_size: int = 256
) -> dict[str, np.ndarray]:
    """Flattened input activations of each named layer on calibration data."""
    mods = dict(model.named_modules())
    store: dict[str, list[np.ndarray]] = {n: [] for n in layer_names}
    hooks = [
        mods[n].register_forward_pre_hook(
            lambda m, inp, n=n: store[n].append(inp[0].detach().reshape(-1).numpy())
        )
        for n in layer_names
    ]
    try:
        model.eval()
        for i in range(0, len(x), batch_size):
            model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])))
    finally:
        for h in hooks:
            h.remove()
    return {n: np.concatenate(v) for n, v in store.items()}


def calibrate_activations(
    model: nn.Module, layer_names: list[str], calib_x: np.ndarray, method: str = "mse", bits: int = 8
) -> dict[str, tuple[float, float]]:
    """Per-layer input activation range (lo, hi) on calibration data."""
    acts = collect_inputs(model, layer_names, calib_x)
    return {n: _range(a, method, bits) for n, a in acts.items()}


# --------------------------------------------------------------------------------------------
# a plan's exact quantization parameters, and its simulation


@dataclass
class LayerQuant:
    name: str
    weight_bits: int | None
    weight_scale: np.ndarray | None  # per output channel, symmetric, zero point 0
    act: ActQuant | None  # quantizer of the layer's input activation
    act_range: tuple[float, float] | None = None


def compute_quant_spec(
    model: nn.Module,
    plan: CompressionPlan,
    calib_x: np.ndarray,
    ranges: dict[str, tuple[float, float]] | None = None,
) -> dict[str, LayerQuant]:
    """Exact scales for ``plan`` on a BN-folded ``model`` (see :func:`fold_batchnorm`)."""
    mods = dict(model.named_modules())
    names = [n for n in plan.layers if n in mods]
    missing = [n for n in plan.layers if n not in mods]
    if missing:
        raise UserError(f"plan names layer {missing[0]!r}, which the model does not have.")
    need = [n for n in names if plan.layers[n].act_bits is not None]
    if ranges is None:
        bits = max((plan.layers[n].act_bits or 8) for n in need) if need else 8
        ranges = (
            calibrate_activations(model, need, calib_x, plan.activation_calibration, bits) if need else {}
        )
    spec: dict[str, LayerQuant] = {}
    for n in names:
        d = plan.layers[n]
        w = mods[n].weight
        ws = None
        if d.weight_bits is not None:
            ws = weight_scales(w, d.weight_bits, d.per_channel, d.weight_clip).numpy().astype(np.float32)
        act = None
        if d.act_bits is not None:
            lo, hi = ranges[n]
            act = act_quant_from_range(lo, hi, d.act_bits)
        spec[n] = LayerQuant(n, d.weight_bits, ws, act, ranges.get(n))
    return spec


def simulate(
    model: nn.Module, spec: dict[str, LayerQuant], *, weights: bool = True, activations: bool = True
) -> nn.Module:
    """A copy of (BN-folded) ``model`` with weights replaced by their quantized values and each
    layer's input activation fake-quantized, exactly as an integer runtime would see them."""
    sim = copy.deepcopy(model).eval()
    mods = dict(sim.named_modules())
    with torch.no_grad():
        for n, lq in spec.items():
            m = mods[n]
            if weights and lq.weight_bits is not None and lq.weight_scale is not None:
                s = torch.from_numpy(lq.weight_scale)
                m.weight.copy_(_fake_sym(m.weight, s, qmax_weight(lq.weight_bits)))
            if activations and lq.act is not None:
                m.register_forward_pre_hook(lambda mod, inp, aq=lq.act: (aq.fake(inp[0]),) + tuple(inp[1:]))
    return sim


def quantize_plan(
    model: nn.Module, plan: CompressionPlan, calib_x: np.ndarray
) -> tuple[nn.Module, dict[str, LayerQuant]]:
    """Fold BN, compute the plan's scales and return (simulated model, spec)."""
    folded = fold_batchnorm(model)
    spec = compute_quant_spec(folded, plan, calib_x)
    return simulate(folded, spec), spec


def plan_layers_check(graph: ModelGraph, plan: CompressionPlan) -> None:
    """Every layer of the plan exists in the graph, with a supported bit-width."""
    names = set(graph.names)
    for n, d in plan.layers.items():
        if n not in names:
            raise UserError(f"plan names layer {n!r}, which the model does not have.")
        if d.weight_bits is not None and d.weight_bits not in (2, 3, 4, 5, 6, 7, 8, 16):
            raise UserError(f"layer {n!r}: unsupported weight bits {d.weight_bits}.")


# --------------------------------------------------------------------------------------------
# quantization error energies (used by the noise model and the sensitivities)


@torch.no_grad()
def weight_error(
    w: torch.Tensor, bits: int, per_channel: bool = True, clip: str = "mse"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel squared error of the actual quantizer and of the noise model.

    Returns ``(measured, modelled)``: ``measured[c] = ||Q(W_c) - W_c||^2`` with the exact scales of
    :func:`quantize_weight`; ``modelled[c] = n_c * step_c^2 / 12`` (uniform rounding noise, no
    clipping). The two agree for fine steps; at 4 bits clipping makes ``measured`` the better one.
    """
    q, scale = quantize_weight(w, bits, per_channel, clip)
    d = (q - w).reshape(w.shape[0], -1).double()
    measured = (d**2).sum(dim=1).numpy()
    n_c = d.shape[1]
    modelled = n_c * (scale.double().numpy() ** 2) / 12.0
    return measured, modelled


def act_error(x: np.ndarray, aq: ActQuant) -> tuple[float, float]:
    """Mean squared error per element of an activation quantizer on data ``x``: (measured, step^2/12)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    measured = float(((aq.fake(t) - t).double() ** 2).mean())
    return measured, aq.scale**2 / 12.0
