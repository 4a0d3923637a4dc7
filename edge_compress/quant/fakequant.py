"""Quantization numerics shared by the planner (simulation) and the exporters (runtime files).

Conventions (they match what integer runtimes execute, so exports can reproduce them exactly):

- BatchNorm is folded into the preceding convolution before anything is quantized
  (:func:`fold_batchnorm`): deployable integer models never keep a separate BN.
- Weights: symmetric, per output channel, zero point 0, restricted range
  ``q in [-(2^(b-1) - 1), 2^(b-1) - 1]`` (int8: +-127, int4: +-7), scale chosen by min-max or by
  minimising the mean squared error over clipping ratios (what matters at 4 bits). On that grid
  the weights are rounded by GPTQ (the default, ``CompressionPlan.weight_rounding``:
  :mod:`edge_compress.quant.rounding`), which rounds so that the layer's *output* error on the
  calibration inputs is small rather than each weight's own, or to nearest; the GPTQ weights are
  kept in ``LayerQuant.weight_values``.
- Activations: each quantizable layer's *input* is quantized asymmetrically (uint8 for 8 bits,
  with a zero point; int16 symmetric for 16 bits) with a range from calibration: min-max,
  percentile, or MSE-optimal clipping. The range always contains 0.
- Layers whose inputs are the same tensor up to ops that keep a quantization grid (max-pool,
  flatten / reshape, zero padding: :func:`activation_points`) share one activation quantizer,
  calibrated on all their inputs: an integer runtime keeps one grid through such ops (XNNPACK
  requires MAX_POOL_2D's input and output to share it), and since the quantizer is monotone,
  ``Q(maxpool(x)) == maxpool(Q(x))`` on a shared grid, so the simulation is exact for the file.
- A layer reading a global average pool (``fc(flatten(pool(x)))``) also has the pool's input
  quantized (same bits, its own calibrated grid): integer files run the pool (MEAN) on integers.
- Empirical bias correction (on by default, ``CompressionPlan.bias_correction``; Nagel et al. 2019,
  "Data-Free Quantization", sec. 4.2, in its empirical form): rounding a layer's weights changes
  the mean of its output (``E[(Q(W) - W) x]`` is not zero when ``E[x]`` is not, e.g. after a ReLU),
  and clipped activations shift it too. Each layer of the plan that has a bias gets
  ``LayerQuant.bias_delta``: the float model's per-channel output mean minus the quantized one's on
  the calibration data, layer after layer in execution order, so each correction sees the
  corrected layers before it (:func:`bias_deltas`). What is left of the error is the zero-mean
  noise the additive noise model assumes. The deltas are part of the bias: exports write
  ``bias + bias_delta`` (:func:`materialize`).

:class:`LayerQuant` holds the exact scales; :func:`simulate` applies them in torch.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from edge_compress.errors import UserError

if TYPE_CHECKING:
    from edge_compress.graph import ModelGraph
    from edge_compress.plan import CompressionPlan
    from edge_compress.quant.rounding import WeightQuantizer

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


# ops whose output values are some of their input values (or zero padding, 0 being on every
# activation grid): quantizing before or after them is the same, and runtimes keep the grid through them
_GRID_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.Dropout,
)
_GRID_FUNCTIONS = {
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.permute,
    torch.transpose,
    torch.nn.functional.max_pool1d,
    torch.nn.functional.max_pool2d,
    torch.nn.functional.adaptive_max_pool1d,
    torch.nn.functional.adaptive_max_pool2d,
    torch.nn.functional.dropout,
}
_GRID_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose", "contiguous"}


def _keeps_grid(node: object, mods: dict[str, nn.Module]) -> bool:
    """``node`` (a torch.fx node) maps its first input to values of the same grid."""
    op, target = node.op, node.target  # type: ignore[attr-defined]
    if op == "call_module":
        m = mods.get(str(target))
        if isinstance(m, nn.ConstantPad1d | nn.ConstantPad2d):
            return float(m.value) == 0.0
        return isinstance(m, _GRID_MODULES)
    if op == "call_function":
        if target is torch.nn.functional.pad:
            args, kw = node.args, node.kwargs  # type: ignore[attr-defined]
            mode = args[2] if len(args) > 2 else kw.get("mode", "constant")
            value = args[3] if len(args) > 3 else kw.get("value", None)
            return mode == "constant" and not value
        if target is torch.nn.functional.max_pool1d or target is torch.nn.functional.max_pool2d:
            return not node.kwargs.get("return_indices", False)  # type: ignore[attr-defined]
        return target in _GRID_FUNCTIONS
    return op == "call_method" and target in _GRID_METHODS


_GLOBAL_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)


def _global_pool(node: object, mods: dict[str, nn.Module]) -> bool:
    """``node`` is a global average pool module (output size 1): MEAN / GlobalAveragePool in files."""
    if node.op != "call_module":  # type: ignore[attr-defined]
        return False
    m = mods.get(str(node.target))  # type: ignore[attr-defined]
    if not isinstance(m, _GLOBAL_POOLS):
        return False
    size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,)
    return all(v == 1 for v in size)


@dataclass
class ActivationPoints:
    """Where a plan's activations are quantized, and which points share a quantizer.

    ``groups``: points whose tensors are one tensor up to grid-keeping ops (max-pool, flatten /
    reshape, zero padding, identity), in order; a point is a layer (its input) or a global
    average pool module (its input). ``pools``: layer -> the global average pool its input comes
    from through grid-keeping ops (``fc(flatten(pool(x)))``): integer files quantize that pool's
    input too (it is the input of a MEAN), so the simulation does.
    """

    groups: list[list[str]]
    pools: dict[str, str]


def activation_points(model: nn.Module, layer_names: list[str]) -> ActivationPoints:
    """The :class:`ActivationPoints` of the layers ``layer_names`` (whose inputs are quantized).

    E.g. an Inception block's 1x1 convs reading ``x`` and its pool branch reading ``maxpool(x)``
    form one group. A model torch.fx cannot trace gives groups of one and no pools (each layer
    input keeps its own grid).
    """
    import torch.fx as fx

    wanted = set(layer_names)
    root_of: dict[str, str] = {}
    pools: dict[str, str] = {}
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - untraceable: no grouping
        gm = None

    def root(src: object) -> object:
        while isinstance(src, fx.Node) and src.args and _keeps_grid(src, mods):
            src = src.args[0]
        return src

    if gm is not None:
        mods = dict(gm.named_modules())
        for node in gm.graph.nodes:
            if node.op != "call_module" or str(node.target) not in wanted or not node.args:
                continue
            name = str(node.target)
            src = root(node.args[0])
            if not isinstance(src, fx.Node) or name in root_of:
                continue
            root_of[name] = src.name
            if _global_pool(src, mods) and src.args:
                pool = str(src.target)
                pools[name] = pool
                inner = root(src.args[0])
                if isinstance(inner, fx.Node):
                    root_of.setdefault(pool, inner.name)
    groups: dict[str, list[str]] = {}
    for n in [*layer_names, *dict.fromkeys(pools.values())]:
        groups.setdefault(root_of.get(n, f"point:{n}"), []).append(n)
    return ActivationPoints(list(groups.values()), pools)


def activation_groups(model: nn.Module, layer_names: list[str]) -> list[list[str]]:
    """Groups of points sharing one activation quantizer (see :class:`ActivationPoints`)."""
    return activation_points(model, layer_names).groups


def group_ranges(
    acts: dict[str, np.ndarray], groups: list[list[str]], method: str = "mse", bits: int = 8
) -> dict[str, tuple[float, float]]:
    """One range per group of :func:`activation_groups`, calibrated on all its members' inputs
    (``acts``: flattened input per point, :func:`collect_inputs`), for every member."""
    out: dict[str, tuple[float, float]] = {}
    for g in groups:
        members = [n for n in g if n in acts]
        if not members:
            continue
        data = acts[members[0]] if len(members) == 1 else np.concatenate([acts[n] for n in members])
        r = _range(data, method, bits)
        out.update(dict.fromkeys(members, r))
    return out


def calibrate_activations(
    model: nn.Module, layer_names: list[str], calib_x: np.ndarray, method: str = "mse", bits: int = 8
) -> dict[str, tuple[float, float]]:
    """Input activation range (lo, hi) of each layer on calibration data, and of the global average
    pools they read (keyed by module name); points of one group share their range
    (:func:`activation_points`)."""
    pts = activation_points(model, layer_names)
    names = [n for g in pts.groups for n in g]
    acts = collect_inputs(model, names, calib_x)
    return group_ranges(acts, pts.groups, method, bits)


# --------------------------------------------------------------------------------------------
# a plan's exact quantization parameters, and its simulation


@dataclass
class LayerQuant:
    name: str
    weight_bits: int | None
    weight_scale: np.ndarray | None  # per output channel, symmetric, zero point 0
    act: ActQuant | None  # quantizer of the layer's input activation
    act_range: tuple[float, float] | None = None
    pool: str | None = None  # the global average pool the layer reads (ActivationPoints.pools)
    pool_act: ActQuant | None = None  # quantizer of that pool's input (used while ``act`` is set)
    bias_delta: np.ndarray | None = None  # empirical bias correction, added to the layer's bias
    # the quantized weights (torch layout, on the ``weight_scale`` grid) when they are not the
    # round-to-nearest ones (GPTQ rounding, edge_compress.quant.rounding); None: round to nearest
    weight_values: np.ndarray | None = None


def compute_quant_spec(
    model: nn.Module,
    plan: CompressionPlan,
    calib_x: np.ndarray,
    ranges: dict[str, tuple[float, float]] | None = None,
    quantizer: WeightQuantizer | None = None,
) -> dict[str, LayerQuant]:
    """Exact scales (and GPTQ weights, ``plan.weight_rounding``) for ``plan`` on a BN-folded
    ``model`` (see :func:`fold_batchnorm`). ``quantizer``: a cache of the weights to reuse (it must
    have the plan's rounding)."""
    mods = dict(model.named_modules())
    names = [n for n in plan.layers if n in mods]
    missing = [n for n in plan.layers if n not in mods]
    if missing:
        raise UserError(f"plan names layer {missing[0]!r}, which the model does not have.")
    need = [n for n in names if plan.layers[n].act_bits is not None]
    pools = activation_points(model, need).pools if need else {}
    if ranges is None:
        bits = max((plan.layers[n].act_bits or 8) for n in need) if need else 8
        ranges = (
            calibrate_activations(model, need, calib_x, plan.activation_calibration, bits) if need else {}
        )
    from edge_compress.quant.rounding import WeightQuantizer

    wnames = [n for n in names if plan.layers[n].weight_bits is not None]
    wq = quantizer or WeightQuantizer(model, plan.weight_rounding, calib_x, wnames)
    spec: dict[str, LayerQuant] = {}
    for n in names:
        d = plan.layers[n]
        ws = wv = None
        if d.weight_bits is not None:
            ws = wq.scale(n, d.weight_bits, d.per_channel, d.weight_clip)
            wv = wq.values(n, d.weight_bits, d.per_channel, d.weight_clip)
        act = pool_act = None
        if d.act_bits is not None:
            lo, hi = ranges[n]
            act = act_quant_from_range(lo, hi, d.act_bits)
            if pools.get(n) in ranges:
                pool_act = act_quant_from_range(*ranges[pools[n]], d.act_bits)
        pool = pools.get(n) if pool_act is not None else None
        spec[n] = LayerQuant(n, d.weight_bits, ws, act, ranges.get(n), pool, pool_act, weight_values=wv)
    if plan.bias_correction:
        spec = add_bias_deltas(model, spec, calib_x)
    return spec


# --------------------------------------------------------------------------------------------
# empirical bias correction


def _channel_mean(mod: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """Mean of a layer's output per output channel (dim 1 of a convolution, the last of a Linear)."""
    if isinstance(mod, nn.Linear) or out.dim() < 2:
        return out.reshape(-1, out.shape[-1]).mean(0)
    return out.transpose(0, 1).reshape(out.shape[1], -1).mean(1)


def _channel_shape(mod: nn.Module, out: torch.Tensor) -> list[int]:
    if isinstance(mod, nn.Linear) or out.dim() < 2:
        return [out.shape[-1]]
    return [-1] + [1] * (out.dim() - 2)


def correctable(model: nn.Module, names: list[str]) -> list[str]:
    """The layers among ``names`` whose output mean a bias correction can move: those with a bias
    (every BN-folded convolution has one). A layer without one is left as it is, so the exported
    files keep the parameters the planner budgeted."""
    mods = dict(model.named_modules())
    return [n for n in names if getattr(mods.get(n), "bias", None) is not None]


@torch.no_grad()
def output_means(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel output means of these layers on one batch (the reference of a correction)."""
    mods = dict(model.named_modules())
    got: dict[str, torch.Tensor] = {}
    hooks = [
        mods[n].register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, _channel_mean(m, o.detach())))
        for n in names
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return got


@contextlib.contextmanager
def recentered(model: nn.Module, ref: dict[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    """While active, each layer named in ``ref`` has its output moved, per channel, to the mean
    ``ref`` gives for it, on the batch being run: the same as adding to its bias the delta that
    sequential empirical bias correction computes on that batch (layers run in order, so each
    sees the ones before it corrected). Yields the deltas of the last batch, filled in as the
    forward pass runs."""
    mods = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}

    def hook(m: nn.Module, i: tuple[torch.Tensor, ...], o: torch.Tensor, n: str) -> torch.Tensor:
        d = ref[n].to(o.dtype) - _channel_mean(m, o)
        out[n] = d
        return o + d.reshape(_channel_shape(m, o))

    hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n: hook(m, i, o, n)) for n in ref]
    try:
        yield out
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def bias_deltas(
    model: nn.Module, spec: dict[str, LayerQuant], calib_x: np.ndarray, names: list[str]
) -> dict[str, np.ndarray]:
    """Empirical bias correction of the quantized ``spec`` on a BN-folded ``model``: for each layer
    of ``names`` in execution order, the float model's per-channel output mean minus the quantized
    model's (with the layers before it already corrected), over all of ``calib_x`` (one batch)."""
    x = torch.from_numpy(np.ascontiguousarray(calib_x))
    ref = output_means(model, names, x)
    plain = {n: replace(lq, bias_delta=None) for n, lq in spec.items()}
    sim = simulate(model, plain)
    with recentered(sim, ref) as deltas:
        sim(x)
    return {n: deltas[n].numpy().astype(np.float32) for n in names if n in deltas}


def add_bias_deltas(
    model: nn.Module, spec: dict[str, LayerQuant], calib_x: np.ndarray
) -> dict[str, LayerQuant]:
    """``spec`` with the bias deltas of every layer of it that has a bias (:func:`bias_deltas`). A
    layer kept in float is corrected too (for the quantized layers before it): the noise model
    measures every term with all layers corrected, so a plan is corrected the same way."""
    if all(lq.weight_bits is None and lq.act is None for lq in spec.values()):
        return spec
    names = correctable(model, list(spec))
    if not names:
        return spec
    deltas = bias_deltas(model, spec, calib_x, names)
    return {n: replace(lq, bias_delta=deltas.get(n)) for n, lq in spec.items()}


def materialize(model: nn.Module, spec: dict[str, LayerQuant]) -> tuple[nn.Module, dict[str, LayerQuant]]:
    """(a copy of ``model`` whose biases include the spec's bias corrections and whose weights are
    the spec's GPTQ weights, the spec without either): the same simulation, in the form the
    exporters take. The corrected biases are the float biases of the file; the GPTQ weights are on
    the spec's grids, so every exporter's round-to-nearest on those scales gives them back exactly."""
    if all(lq.bias_delta is None and lq.weight_values is None for lq in spec.values()):
        return model, spec
    out = copy.deepcopy(model).eval()
    mods = dict(out.named_modules())
    with torch.no_grad():
        for n, lq in spec.items():
            if lq.bias_delta is not None:
                mods[n].bias.add_(torch.from_numpy(lq.bias_delta))
            if lq.weight_values is not None:
                mods[n].weight.copy_(torch.from_numpy(lq.weight_values))
    return out, {n: replace(lq, bias_delta=None, weight_values=None) for n, lq in spec.items()}


def simulate(
    model: nn.Module, spec: dict[str, LayerQuant], *, weights: bool = True, activations: bool = True
) -> nn.Module:
    """A copy of (BN-folded) ``model`` with weights replaced by their quantized values and each
    layer's input activation fake-quantized (and the input of a global average pool it reads,
    ``LayerQuant.pool``), exactly as an integer runtime would see them. The bias corrections
    (``LayerQuant.bias_delta``) are added when both weights and activations are simulated: they
    were computed for the two together."""
    sim = copy.deepcopy(model).eval()
    mods = dict(sim.named_modules())
    pools: dict[str, ActQuant] = {}
    with torch.no_grad():
        for n, lq in spec.items():
            m = mods[n]
            if weights and lq.weight_values is not None:
                m.weight.copy_(torch.from_numpy(lq.weight_values))
            elif weights and lq.weight_bits is not None and lq.weight_scale is not None:
                s = torch.from_numpy(lq.weight_scale)
                m.weight.copy_(_fake_sym(m.weight, s, qmax_weight(lq.weight_bits)))
            if weights and activations and lq.bias_delta is not None:
                m.bias.add_(torch.from_numpy(lq.bias_delta))
            if activations and lq.act is not None:
                m.register_forward_pre_hook(input_quant_hook(lq.act))
                if lq.pool is not None and lq.pool_act is not None:
                    pools.setdefault(lq.pool, lq.pool_act)
    for p, aq in pools.items():
        mods[p].register_forward_pre_hook(input_quant_hook(aq))
    return sim


def input_quant_hook(aq: ActQuant):  # noqa: ANN202 - a forward pre-hook fake-quantizing a layer's input
    return lambda mod, inp: (aq.fake(inp[0]),) + tuple(inp[1:])


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
    return error_energies(q, w, scale)


@torch.no_grad()
def error_energies(q: torch.Tensor, w: torch.Tensor, scale: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(measured, modelled)`` per output channel for quantized weights ``q`` of ``w`` on the
    per-channel grid ``scale``: ``||q_c - w_c||^2`` and ``n_c step_c^2 / 12``."""
    d = (q - w).reshape(w.shape[0], -1).double()
    measured = (d**2).sum(dim=1).numpy()
    modelled = d.shape[1] * (torch.as_tensor(scale).double().numpy() ** 2) / 12.0
    return measured, modelled


def act_error(x: np.ndarray, aq: ActQuant) -> tuple[float, float]:
    """Mean squared error per element of an activation quantizer on data ``x``: (measured, step^2/12)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    measured = float(((aq.fake(t) - t).double() ** 2).mean())
    return measured, aq.scale**2 / 12.0
