"""Predict latency, energy and peak memory of a (model graph, plan) on a device before it runs.

The unit of prediction is a *fused kernel*: one Conv / Linear layer with what a runtime fuses
into it (bias, ReLU, the Q/DQ pairs around it, the element-wise tail up to the next layer: pools,
residual adds), plus one ``io`` kernel for the model's input / output conversions.

* Uncalibrated target (``calibrated: false``): a roofline from the device profile per kernel,
  ``max(MACs / peak MAC/s[precision, threads], bytes moved / memory bandwidth) + launch``.
* Calibrated target: a per-device linear model on roofline terms, non-negative coefficients per
  kernel class (``kind/precision``) plus a few shared by all classes or by one precision (the
  operators a runtime inserts around kernels), fitted by NNLS on relative error from the target's
  measurements: (a) per-operator timings from onnxruntime's profiler, attributed to kernels
  (:mod:`edge_compress.costmodel_ort`), and (b) whole-model timings (any runner). See
  :mod:`edge_compress.costmodel_fit` for the terms; the coefficients are JSON and live per target
  with every observation they were fitted on, in the result store and / or a file
  (:mod:`edge_compress.costmodel_store`), so a refit after new measurements uses all of them;
  nightly runs feed their measurements in (the kernels of a measured file are read from the file
  itself: :mod:`edge_compress.costmodel_onnx`). With enough whole-model measurements the model
  latency is a fitted power of the kernels' sum (``CostModel.to_latency``; measured latency on a
  shared host is not additive in the kernels): the per-kernel times and the planner's
  coefficients live on the additive scale, budgets are mapped onto it (``from_latency``).

Energy per inference = (idle_w + (active_w - idle_w) x cores_used / cores) x latency, labelled an
estimate unless scaled by measured energy. Peak memory = runtime base + weight bytes + the largest
live activation pair (the base is fitted from measured peak RSS when there is one). The p99 is the
median times the target's measured p99 / median ratio.

:func:`budget_constraints` turns the latency / energy budgets into linear constraints of the
bit-allocation ILP (``plan_model(..., extra_constraints=[...])``); the compiler prices them with
the profile's best stored model (:func:`edge_compress.costmodel_store.planner_constraints`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_compress.graph import LayerInfo, ModelGraph
    from edge_compress.plan import CompressionPlan, LayerDecision
    from edge_compress.profiles import DeviceProfile
    from runners.base import Measurement

# Defaults used before a device is calibrated (one x86/ARM CPU runtime call, one kernel launch).
DEFAULT_LAUNCH_MS = 0.005
DEFAULT_BASE_MS = 0.03
DEFAULT_P99_RATIO = 1.3
DEFAULT_RUNTIME_BASE_BYTES = {"onnxruntime": 40e6, "litert": 20e6, "tflite_runtime": 15e6}
UNCALIBRATED_REL_ERROR = 0.5  # a roofline is often off by 2x: the optimistic bound is wide
# The coefficients' meaning (term set, sharing): stored documents of another version are refitted.
COEFFS_VERSION = 2

KINDS = ("conv", "depthwise_conv", "linear", "io")  # io: the model's input / output conversions
PRECISIONS = ("fp32", "int8", "int4", "int16", "wonly")
# When a class has no fitted coefficients, borrow the nearest one.
_PRECISION_FALLBACK = {"int4": "int8", "wonly": "int4", "int16": "int8", "int8": "fp32", "fp32nchwc": "fp32"}


def layer_precision(d: LayerDecision | None) -> str:
    """The kernel class precision a plan decision runs at.

    fp32 (no weight quantization), int8 (w<=8, a8), int4 (w<=4: on CPU runtimes weights are
    unpacked to 8 bits or dequantized), int16 (16-bit activations or weights), wonly
    (quantized weights, float activations: the weights are dequantized at run time).
    """
    if d is None or d.weight_bits is None:
        return "fp32"
    if d.act_bits is None:
        return "wonly"
    if d.act_bits > 8 or d.weight_bits > 8:
        return "int16"
    if d.weight_bits <= 4:
        return "int4"
    return "int8"


def _act_bytes(prec: str) -> float:
    return {"fp32": 4.0, "wonly": 4.0, "int16": 2.0}.get(prec, 1.0)


def _weight_bits(prec: str, d: LayerDecision | None) -> float:
    if d is None or d.weight_bits is None:
        return 32.0
    return float(d.weight_bits)


@dataclass(frozen=True)
class Kernel:
    """One fused kernel: what the cost model sees of a layer (or of half a factorized layer)."""

    name: str
    layer: str
    kind: str  # conv | depthwise_conv | linear
    precision: str  # fp32 | int8 | int4 | int16 | wonly
    macs: int
    weight_params: int
    weight_bytes: float
    in_elems: int
    out_elems: int
    cin: int
    cout: int
    groups: int
    kernel_area: int
    out_spatial: int
    stride: int
    dims: int  # 0 linear, 1 conv1d, 2 conv2d
    next_in_elems: int = 0  # input elements of the next kernel (less than out_elems: a pool follows)
    joins: bool = False  # its output meets another branch (residual add / concat)
    # The next kernel's kind and precision ("" for the last one): a runtime adds layout / precision
    # conversions (transposes, quantize / dequantize, flatten) where they change.
    next_kind: str = ""
    next_precision: str = ""
    # output elements of a local max / average pool right after the kernel (0: none, or not known:
    # then a next kernel reading fewer elements than this one writes stands for a pool)
    pooled_elems: int = 0

    @property
    def act_bytes(self) -> float:
        return (self.in_elems + self.out_elems) * _act_bytes(self.precision)

    @property
    def bytes_moved(self) -> float:
        return self.weight_bytes + self.act_bytes

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Kernel:
        return cls(**{k: v for k, v in d.items() if k in _KERNEL_FIELDS})


def kernels_from_json(items: list[dict[str, Any]]) -> list[Kernel]:
    """Kernels of one model from JSON; the next-kernel context is filled in from their order when
    the JSON predates it (observations stored by older versions)."""
    ks = [Kernel.from_json(d) for d in items]
    if ks and not any(k.next_kind for k in ks):
        ks = _with_context(ks)
    return ks


def _with_context(ks: list[Kernel]) -> list[Kernel]:
    from dataclasses import replace

    layers = [k for k in ks if k.kind != "io"]
    nxt = {a.name: b for a, b in zip(layers, layers[1:], strict=False)}
    return [
        replace(k, next_kind=nxt[k.name].kind, next_precision=nxt[k.name].precision) if k.name in nxt else k
        for k in ks
    ]


_KERNEL_FIELDS = frozenset(Kernel.__dataclass_fields__)


def _channel_changes(
    graph: ModelGraph, plan: CompressionPlan | None
) -> tuple[dict[str, int], dict[str, int]]:
    """(layer -> output channels after pruning, layer -> input channels after pruning)."""
    out_c = {li.name: li.out_channels for li in graph.layers}
    in_c = {li.name: li.in_channels for li in graph.layers}
    if plan is None:
        return out_c, in_c
    for g in graph.channel_groups:
        keeps = [
            len(plan.layers[p].keep_channels)  # type: ignore[arg-type]
            for p in g.producers
            if p in plan.layers and plan.layers[p].keep_channels is not None
        ]
        if not keeps:
            continue
        kept = min(keeps)
        removed = max(0, g.channels - kept)
        for p in g.producers:
            out_c[p] = kept
        for name in g.passthrough:
            out_c[name] = kept
            in_c[name] = kept
        for c in g.consumers:
            if c.layer in g.passthrough:
                continue
            in_c[c.layer] = max(1, in_c[c.layer] - removed * c.flatten_factor)
    for name, d in plan.layers.items():  # pruning without a channel group (untraced graphs)
        if d.keep_channels is not None and name in out_c and out_c[name] == graph.layer(name).out_channels:
            out_c[name] = len(d.keep_channels)
    return out_c, in_c


def _make_kernel(
    name: str,
    li: LayerInfo,
    kind: str,
    prec: str,
    wbits: float,
    cin: int,
    cout: int,
    groups: int,
    karea: int,
    out_spatial: int,
    in_spatial: int,
    stride: int,
    bias: bool,
) -> Kernel:
    wp = cout * (cin // max(1, groups)) * karea
    macs = out_spatial * wp
    wbytes = math.ceil(wp * wbits / 8) + (cout * 4 if bias else 0) + (cout * 4 if wbits < 32 else 0)
    dims = 0 if li.kind == "linear" else len(li.kernel)
    return Kernel(
        name,
        li.name,
        kind,
        prec,
        int(macs),
        int(wp),
        float(wbytes),
        int(cin * in_spatial),
        int(cout * out_spatial),
        int(cin),
        int(cout),
        int(groups),
        int(karea),
        int(out_spatial),
        int(stride),
        dims,
    )


def kernels_of(
    graph: ModelGraph,
    plan: CompressionPlan | None = None,
    float_compute: set[str] | frozenset[str] = frozenset(),
) -> list[Kernel]:
    """The fused kernels of ``graph`` under ``plan`` (pruned channels, ranks and precisions applied).

    ``float_compute``: layers the exporter runs as float convolutions whatever their planned bits
    (onnxruntime's integer kernels are slow on tiny reductions; see ``export.onnx.tiny_layers``).
    """
    out_c, in_c = _channel_changes(graph, plan)
    ks: list[Kernel] = []
    for li in graph.layers:
        d = plan.layers.get(li.name) if plan is not None else None
        prec = "fp32" if li.name in float_compute else layer_precision(d)
        wbits = _weight_bits(prec, d)
        cin, cout = in_c[li.name], out_c[li.name]
        if li.kind == "linear":
            in_sp = max(1, math.prod(li.input_shape) // max(1, li.in_channels))
            out_sp = max(1, math.prod(li.output_shape) // max(1, li.out_channels))
            karea, groups, stride = 1, 1, 1
        else:
            in_sp = max(1, math.prod(li.input_shape[1:]))
            out_sp = max(1, math.prod(li.output_shape[1:]))
            karea, stride = math.prod(li.kernel), max(li.stride)
            groups = cin if li.kind == "depthwise_conv" else li.groups
        if d is not None and d.rank is not None:
            r = max(1, int(d.rank))
            how = d.factorization or "svd"
            if li.kind == "linear" or how == "svd":
                ks.append(
                    _make_kernel(
                        f"{li.name}#0", li, li.kind, prec, wbits, cin, r, 1, 1, out_sp, in_sp, 1, False
                    )
                )
                ks.append(
                    _make_kernel(
                        f"{li.name}#1",
                        li,
                        li.kind,
                        prec,
                        wbits,
                        r,
                        cout,
                        1,
                        1,
                        out_sp,
                        out_sp,
                        1,
                        li.has_bias,
                    )
                )
            else:
                kh = li.kernel[0]
                kw = li.kernel[1] if len(li.kernel) > 1 else 1
                sw = li.stride[1] if len(li.stride) > 1 else 1
                mid_sp = out_sp * sw
                a1, a2 = (kh, kw) if how == "spatial" else (kh * kw, 1)
                ks.append(
                    _make_kernel(
                        f"{li.name}#0", li, "conv", prec, wbits, cin, r, 1, a1, mid_sp, in_sp, stride, False
                    )
                )
                ks.append(
                    _make_kernel(
                        f"{li.name}#1",
                        li,
                        "conv",
                        prec,
                        wbits,
                        r,
                        cout,
                        1,
                        a2,
                        out_sp,
                        mid_sp,
                        1,
                        li.has_bias,
                    )
                )
            continue
        ks.append(
            _make_kernel(
                li.name,
                li,
                li.kind,
                prec,
                wbits,
                cin,
                cout,
                groups,
                karea,
                out_sp,
                in_sp,
                stride,
                li.has_bias,
            )
        )
    return _link(graph, ks)


def _link(graph: ModelGraph, ks: list[Kernel]) -> list[Kernel]:
    """Fill ``next_in_elems`` / ``joins`` and prepend the model's io kernel."""
    from dataclasses import replace

    joined = {n for g in graph.precision_groups for n in g}
    pooled = {li.name: li.pooled_elems for li in graph.layers}
    out = []
    for i, k in enumerate(ks):
        nxt = ks[i + 1].in_elems if i + 1 < len(ks) else int(math.prod(graph.output_shape) or k.out_elems)
        nk, npr = (ks[i + 1].kind, ks[i + 1].precision) if i + 1 < len(ks) else ("", "")
        last_half = not k.name.endswith("#0")  # a factorized layer's pool follows its second half
        out.append(
            replace(
                k,
                next_in_elems=int(nxt),
                joins=k.layer in joined,
                next_kind=nk,
                next_precision=npr,
                pooled_elems=int(pooled.get(k.layer, 0)) if last_half else 0,
            )
        )
    if not ks:
        return out
    first = ks[0]
    n_in = int(math.prod(graph.input_shape) or first.in_elems)
    n_out = int(math.prod(graph.output_shape) or ks[-1].out_elems)
    io = Kernel(
        "(io)", "(io)", "io", first.precision, 0, 0, 0.0, n_in, n_out, 1, 1, 1, 1, 1, 1, 0, n_out, False
    )
    return [io] + out


# ---------------------------------------------------------------------------------------------
# roofline


def peak_macs_per_s(profile: DeviceProfile, precision: str, threads: int = 1) -> float:
    """Peak MAC/s of ``threads`` cores at ``precision`` (the profile's all-core peak, scaled)."""
    peaks = profile.compute.peak_macs_per_s
    key = {"wonly": "fp32", "int16": "int16" if "int16" in peaks else "int8"}.get(precision, precision)
    peak = peaks.get(key) or peaks.get("int8" if key == "int4" else "fp32") or peaks["fp32"]  # type: ignore[call-overload]
    cores = max(1, profile.compute.cores)
    return float(peak) * min(max(1, threads), cores) / cores


def roofline_ms(
    k: Kernel, profile: DeviceProfile, threads: int = 1, launch_ms: float = DEFAULT_LAUNCH_MS
) -> float:
    """max(compute time, memory time) + launch overhead, in milliseconds."""
    t_compute = k.macs / peak_macs_per_s(profile, k.precision, threads)
    t_memory = k.bytes_moved / (profile.memory.bandwidth_gb_s * 1e9)
    return max(t_compute, t_memory) * 1e3 + launch_ms


def activation_peak_bytes(kernels: list[Kernel]) -> float:
    """The largest live activation pair (a kernel's input and output buffers)."""
    return max((k.act_bytes for k in kernels), default=0.0)


def weights_bytes(kernels: list[Kernel]) -> float:
    return float(sum(k.weight_bytes for k in kernels))


# ---------------------------------------------------------------------------------------------
# predictions


@dataclass
class CostPrediction:
    """What a (graph, plan) is predicted to cost on a target; ``calibrated`` says on what basis."""

    target: str
    profile: str
    latency_ms: float  # median
    latency_p99_ms: float
    energy_mj: float
    peak_memory_bytes: float
    model_bytes: float
    calibrated: bool
    rel_error: float  # typical relative error of this predictor (for optimistic / pessimistic bounds)
    energy_basis: str  # "estimate: profile power model" | "fitted from measured energy"
    memory_basis: str
    kernels_ms: dict[str, float] = field(default_factory=dict)

    def optimistic(self, metric: str) -> float:
        """A lower bound of a predicted metric (what the candidate might achieve at best)."""
        return getattr(self, metric) / (1.0 + 2.0 * self.rel_error)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CostModel:
    """A per-target cost model. Uncalibrated until :meth:`fit` has measurements to use.

    Use :func:`edge_compress.costmodel_store.load_costmodel` to get the stored model of a target
    and :meth:`observe` + :meth:`fit` + ``save`` to improve it with new measurements.
    """

    profile: DeviceProfile
    target: str = "local"
    runtime: str = "onnxruntime"
    threads: int = 1
    coeffs: dict[str, dict[str, float]] = field(default_factory=dict)  # class -> term -> coefficient
    base_ms: float = DEFAULT_BASE_MS
    p99_ratio: float = DEFAULT_P99_RATIO
    memory_base_bytes: float | None = None  # fitted runtime base (None: default per runtime)
    energy_scale: float | None = None  # measured / estimated energy (None: not fitted)
    rel_error: float = UNCALIBRATED_REL_ERROR
    observations: list[dict[str, Any]] = field(default_factory=list)
    fit_info: dict[str, Any] = field(default_factory=dict)
    # Measured latency = g(additive time), g(t) = ref x (t / ref)^power up to ``latency_linear_above``
    # and its tangent beyond (no power-law extrapolation past the measured range). Power 1: g = id.
    latency_power: float = 1.0
    latency_ref_ms: float = 1.0
    latency_linear_above: float | None = None

    @property
    def calibrated(self) -> bool:
        return bool(self.coeffs)

    def to_latency(self, t_ms: float) -> float:
        """The latency (ms) of a model whose kernels add up to ``t_ms`` (base included)."""
        return latency_curve(t_ms, self.latency_power, self.latency_ref_ms, self.latency_linear_above)

    def from_latency(self, ms: float) -> float:
        """The additive time whose latency is ``ms`` (inverse of :meth:`to_latency`)."""
        b, ref, knee = self.latency_power, self.latency_ref_ms, self.latency_linear_above
        if b == 1.0 or ms <= 0:
            return max(0.0, ms)
        if knee is not None:
            g_knee = latency_curve(knee, b, ref, None)
            if ms > g_knee:
                return knee + (ms - g_knee) / (b * (knee / ref) ** (b - 1.0))
        return ref * (ms / ref) ** (1.0 / b)

    # -- latency -------------------------------------------------------------------------
    def kernel_ms(self, k: Kernel) -> float:
        if not self.calibrated:
            return roofline_ms(k, self.profile, self.threads)
        from edge_compress.costmodel_fit import kernel_time_ms

        return kernel_time_ms(self, k)

    def predict_kernels(self, kernels: list[Kernel]) -> float:
        """Median latency in ms of a list of kernels (one model)."""
        return self.to_latency(self.base_ms + sum(self.kernel_ms(k) for k in kernels))

    def predict(self, graph: ModelGraph, plan: CompressionPlan | None = None) -> CostPrediction:
        return self.predict_from_kernels(kernels_of(graph, plan))

    def predict_from_kernels(self, kernels: list[Kernel]) -> CostPrediction:
        per = {k.name: self.kernel_ms(k) for k in kernels}  # on the additive scale
        lat = self.to_latency(self.base_ms + sum(per.values()))
        p = self.profile
        energy = self.energy_j(lat) * 1e3
        return CostPrediction(
            target=self.target,
            profile=p.name,
            latency_ms=lat,
            latency_p99_ms=lat * self.p99_ratio,
            energy_mj=energy,
            peak_memory_bytes=self.memory_bytes(kernels),
            model_bytes=weights_bytes(kernels),
            calibrated=self.calibrated,
            rel_error=self.rel_error,
            energy_basis="fitted from measured energy"
            if self.energy_scale
            else "estimate: profile power model",
            memory_basis="fitted runtime base"
            if self.memory_base_bytes is not None
            else "estimate: default runtime base",
            kernels_ms=per,
        )

    # -- energy / memory -----------------------------------------------------------------
    def power_w(self) -> float:
        pw = self.profile.power
        cores = max(1, self.profile.compute.cores)
        return pw.idle_w + (pw.active_w - pw.idle_w) * min(self.threads, cores) / cores

    def energy_j(self, latency_ms: float) -> float:
        return self.power_w() * latency_ms / 1e3 * (self.energy_scale or 1.0)

    def memory_bytes(self, kernels: list[Kernel]) -> float:
        base = self.memory_base_bytes
        if base is None:
            base = DEFAULT_RUNTIME_BASE_BYTES.get(self.runtime, 30e6)
        return base + weights_bytes(kernels) + activation_peak_bytes(kernels)

    # -- learning ------------------------------------------------------------------------
    def observe(
        self,
        kernels: list[Kernel],
        measurement: Measurement | None = None,
        *,
        latency_ms: float | None = None,
        p99_ms: float | None = None,
        kernel_ms: dict[str, float] | None = None,
        label: str = "",
        source: str = "",
    ) -> dict[str, Any]:
        """Record one measured model (whole-model timing, optional per-kernel timings).

        The observation keeps the kernels' features, so any later refit can use it. Returns it.
        """
        obs: dict[str, Any] = {
            "label": label,
            "source": source or (measurement.target if measurement is not None else "manual"),
            "kernels": [k.to_json() for k in kernels],
            "latency_ms": latency_ms,
            "p99_ms": p99_ms,
            "kernel_ms": dict(kernel_ms or {}),
            "rss_bytes": None,
            "energy_j": None,
            "energy_measured": False,
        }
        if measurement is not None and measurement.ok and measurement.stats is not None:
            obs["latency_ms"] = latency_ms if latency_ms is not None else measurement.stats.median_ms
            obs["p99_ms"] = p99_ms if p99_ms is not None else measurement.stats.p99_ms
            obs["rss_bytes"] = measurement.peak_rss_bytes
            if measurement.energy is not None:
                obs["energy_j"] = measurement.energy.joules_per_inference
                obs["energy_measured"] = bool(measurement.energy.measured)
        if obs["latency_ms"] is None and not obs["kernel_ms"]:
            raise ValueError("an observation needs a whole-model latency or per-kernel timings")
        self.observations.append(obs)
        return obs

    def fit(self, **kw: Any) -> dict[str, Any]:
        """Refit every coefficient on all stored observations; returns fit statistics."""
        from edge_compress.costmodel_fit import fit_costmodel

        return fit_costmodel(self, **kw)

    def refit_if_stale(self) -> bool:
        """Fit again when there are observations but no coefficients (a document of an older term
        set); True when it did."""
        if self.coeffs or not self.observations:
            return False
        self.fit()
        return bool(self.coeffs)

    # -- serialisation -------------------------------------------------------------------
    def to_json(self, with_observations: bool = True) -> dict[str, Any]:
        return {
            "version": COEFFS_VERSION,
            "target": self.target,
            "profile": self.profile.name,
            "runtime": self.runtime,
            "threads": self.threads,
            "calibrated": self.calibrated,
            "coeffs": self.coeffs,
            "base_ms": self.base_ms,
            "p99_ratio": self.p99_ratio,
            "memory_base_bytes": self.memory_base_bytes,
            "energy_scale": self.energy_scale,
            "rel_error": self.rel_error,
            "latency_power": self.latency_power,
            "latency_ref_ms": self.latency_ref_ms,
            "latency_linear_above": self.latency_linear_above,
            "fit_info": self.fit_info,
            "observations": self.observations if with_observations else [],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], profile: DeviceProfile) -> CostModel:
        """The model a document describes. Coefficients of an older term set are dropped (the
        observations are kept: :meth:`refit_if_stale` fits them again)."""
        current = int(d.get("version", 1)) == COEFFS_VERSION
        return cls(
            profile=profile,
            target=d.get("target", "local"),
            runtime=d.get("runtime", "onnxruntime"),
            threads=int(d.get("threads", 1)),
            coeffs={c: dict(v) for c, v in (d.get("coeffs") or {}).items()} if current else {},
            base_ms=float(d.get("base_ms", DEFAULT_BASE_MS)),
            p99_ratio=float(d.get("p99_ratio", DEFAULT_P99_RATIO)),
            memory_base_bytes=d.get("memory_base_bytes"),
            energy_scale=d.get("energy_scale"),
            rel_error=float(d.get("rel_error", UNCALIBRATED_REL_ERROR)),
            latency_power=float(d.get("latency_power", 1.0)) if current else 1.0,
            latency_ref_ms=float(d.get("latency_ref_ms", 1.0)),
            latency_linear_above=d.get("latency_linear_above") if current else None,
            observations=list(d.get("observations") or []),
            fit_info=dict(d.get("fit_info") or {}),
        )


def latency_curve(t_ms: float, power: float, ref_ms: float, linear_above: float | None) -> float:
    """``ref x (t / ref)^power``, continued by its tangent above ``linear_above`` (see CostModel)."""
    if power == 1.0 or t_ms <= 0:
        return max(0.0, t_ms)
    if linear_above is not None and t_ms > linear_above:
        g = ref_ms * (linear_above / ref_ms) ** power
        return g + power * (linear_above / ref_ms) ** (power - 1.0) * (t_ms - linear_above)
    return ref_ms * (t_ms / ref_ms) ** power


def precision_fallback(prec: str) -> str | None:
    return _PRECISION_FALLBACK.get(prec)


def kernel_class_shares(kernels: list[Kernel], kernels_ms: dict[str, float]) -> dict[str, float]:
    """Share of predicted time per kernel class (``kind/precision``): what a model's time is made of."""
    total = sum(kernels_ms.get(k.name, 0.0) for k in kernels) or 1.0
    out: dict[str, float] = {}
    for k in kernels:
        key = f"{k.kind}/{k.precision}"
        out[key] = out.get(key, 0.0) + kernels_ms.get(k.name, 0.0) / total
    return out


# ---------------------------------------------------------------------------------------------
# constraints for the bit-allocation ILP (edge_compress.quant.allocate.Constraint)


def layer_costs_by_bits(
    cm: CostModel,
    graph: ModelGraph,
    options: dict[str, tuple[int, ...]],
    act_bits: int | None = 8,
    float_compute: set[str] | frozenset[str] = frozenset(),
) -> tuple[dict[tuple[str, int], float], float]:
    """(coeffs[(layer, bits)] = predicted ms of that layer's kernels at those weight bits,
    fixed ms of everything not in ``options``: the io kernel, the call overhead, float layers).

    Both are on the model's additive scale: compare their sum with ``cm.from_latency(limit)``.

    Each layer is priced inside the uniform plan of those bits (its next-kernel context);
    ``float_compute``: layers the exporter runs in float whatever their bits."""
    from edge_compress.plan import CompressionPlan

    all_bits = sorted({b for bs in options.values() for b in bs})
    first = graph.layers[0].name if graph.layers else ""
    coeffs: dict[tuple[str, int], float] = {}
    for b in all_bits:
        plan = CompressionPlan.uniform(graph, "", cm.profile.name, b, act_bits)
        for k in kernels_of(graph, plan, float_compute):
            layer = first if k.kind == "io" else k.layer  # the input conversion follows the first layer
            if layer in options and b in options[layer]:
                coeffs[(layer, b)] = coeffs.get((layer, b), 0.0) + cm.kernel_ms(k)
    fixed = cm.base_ms
    for k in kernels_of(graph, None):
        layer = first if k.kind == "io" else k.layer
        if layer not in options:
            fixed += cm.kernel_ms(k)
    return coeffs, fixed


def latency_constraint(
    cm: CostModel,
    graph: ModelGraph,
    limit_ms: float,
    options: dict[str, tuple[int, ...]],
    act_bits: int | None = 8,
) -> Any:
    """The median-latency budget as a linear constraint of the bit-allocation ILP.

    Pass it to ``plan_model(..., extra_constraints=[...])``; ``options`` are the planner's
    per-layer bit choices (``Planner.options``).
    """
    from edge_compress.quant.allocate import Constraint

    coeffs, fixed = layer_costs_by_bits(cm, graph, options, act_bits)
    return Constraint("latency_ms", coeffs, cm.from_latency(limit_ms) - fixed, " ms")


def energy_constraint(
    cm: CostModel,
    graph: ModelGraph,
    limit_mj: float,
    options: dict[str, tuple[int, ...]],
    act_bits: int | None = 8,
) -> Any:
    """The energy-per-inference budget (mJ) as a linear constraint (power model x latency)."""
    from edge_compress.quant.allocate import Constraint

    coeffs, fixed = layer_costs_by_bits(cm, graph, options, act_bits)
    mj = cm.energy_j(1.0) * 1e3  # mJ per ms of latency
    limit = (cm.from_latency(limit_mj / mj) - fixed) * mj
    return Constraint("energy_mj", {k: v * mj for k, v in coeffs.items()}, limit, " mJ")


def planner_options(
    graph: ModelGraph, profile: DeviceProfile
) -> tuple[dict[str, tuple[int, ...]], int | None]:
    """(layer -> weight bit-widths, activation bits) as the quantization planner chooses them
    (``Planner.options`` / ``Planner.act_bits``): what a cost constraint must price."""
    options = {}
    for li in graph.layers:
        bits = tuple(b for b in profile.weight_bits(li.kind) if 2 <= b <= 16)
        if bits:
            options[li.name] = bits
    ab = profile.activation_bits()
    return options, (8 if 8 in ab else (min(ab) if ab else None))


# budgets the cost model turns into bit-allocation constraints (latency_median_ms: select's budget)
PLANNER_BUDGETS = ("latency_p99_ms", "latency_median_ms", "energy_per_inference_mj")


def budget_constraints(
    cm: CostModel,
    graph: ModelGraph,
    budget: dict[str, float],
    *,
    float_compute: set[str] | frozenset[str] = frozenset(),
) -> tuple[list[Any], list[str]]:
    """The latency and energy budgets of ``budget`` as linear constraints of the bit allocation
    (pass them to ``plan_model(..., extra_constraints=...)``), with notes saying on what basis.

    A calibrated model enforces its prediction; an uncalibrated one (the profile roofline, often off
    by 2x) only its optimistic bound, so it rejects only plans that are over the budget whatever
    the error. ``float_compute``: layers the exporter runs in float whatever their bits.
    """
    from dataclasses import fields

    from edge_compress.quant.allocate import Constraint

    wanted = {k: float(v) for k, v in budget.items() if k in PLANNER_BUDGETS}
    if not wanted:
        return [], []
    options, act_bits = planner_options(graph, cm.profile)
    if not options:
        return [], []
    coeffs, fixed = layer_costs_by_bits(cm, graph, options, act_bits, float_compute)
    slack = 1.0 if cm.calibrated else 1.0 / (1.0 + 2.0 * cm.rel_error)
    has_offset = "offset" in {f.name for f in fields(Constraint)}
    out, notes = [], []
    for name, limit in wanted.items():
        if name == "latency_p99_ms":
            scale, unit = cm.p99_ratio * slack, " ms"
        elif name == "latency_median_ms":
            scale, unit = slack, " ms"
        else:
            scale, unit = cm.energy_j(1.0) * 1e3 * slack, " mJ"  # mJ per ms of latency
        c = {k: v * scale for k, v in coeffs.items()}
        kw = {"offset": fixed * scale} if has_offset else {}
        # the budget on the additive scale the coefficients live on (identity unless the fit
        # found measured latency to grow non-linearly with the kernels' sum)
        limit_add = cm.from_latency(limit / scale) * scale
        out.append(Constraint(name, c, limit_add - fixed * scale, unit, **kw))
    basis = (
        f"the calibrated cost model of {cm.target!r}"
        if cm.calibrated
        else "the uncalibrated cost model (profile roofline; optimistic bound)"
    )
    notes.append(f"budget(s) {', '.join(wanted)} enforced by {basis}")
    return out, notes
