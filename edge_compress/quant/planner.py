"""The quantization planner: model + device profile (+ budgets) -> mixed-precision CompressionPlan.

    plan = plan_model(model, graph, profile, calib_x, eval_x=xv, eval_y=yv, alpha=0.5)

Steps: fold BatchNorm; allowed weight bits per layer from the profile (per op kind) and shared
bits for precision groups; sensitivities (``hessian``: HAWQ-V2 Hutchinson trace x quantizer
error, ``noise``: noise-model output noise power); an ILP over bits under the budgets (model
bytes, BOPs, extra linear constraints from a cost model); with evaluation data, the 5 best ILP
allocations are simulated and the one closest to the float model (KL divergence of the outputs) kept
(``refine_top_k``); then the additive noise
model predicts the plan's output noise, SQNR and (with evaluation data) accuracy drop.

:class:`Planner` keeps the analysis so many budgets can be planned cheaply (:func:`pareto_sweep`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_compress.errors import BudgetError, UserError
from edge_compress.quant.allocate import Allocation, Constraint, allocate_top_k, allocation_units, unit_bits

if TYPE_CHECKING:
    from torch import nn

    from edge_compress.graph import ModelGraph
    from edge_compress.plan import CompressionPlan
    from edge_compress.profiles import DeviceProfile
    from edge_compress.quant.noise import NoiseModel

METHODS = ("hessian", "noise", "uniform8", "uniform4")
ENFORCED_BUDGETS = ("model_bytes", "bops")
# Budget fields the quantization planner cannot evaluate without a cost model (pass extra_constraints).
COST_MODEL_BUDGETS = (
    "latency_p99_ms",
    "peak_memory_mb",
    "energy_per_inference_mj",
    "avg_power_w",
    "duty_cycle_hz",
    "flops_ratio",
)
_NORM_MODULES = (
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "LayerNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
)


# --------------------------------------------------------------------------------------------
# input checks


def check_quantizable(model: nn.Module, graph: ModelGraph) -> None:
    """UserError naming the layer when the model cannot be planned: untraceable (precision groups
    unknown) or a module holding weights that no quantization rule covers."""
    from edge_compress.graph import QUANTIZABLE

    if not graph.traced:
        culprit = _untraceable_module(model)
        where = f"layer {culprit!r}" if culprit else "the model"
        raise UserError(
            f"{where} cannot be traced by torch.fx ({graph.trace_error.split('(', 1)[-1].rstrip(')')}), so the layers "
            "that must share a precision cannot be found; remove data-dependent control flow from its forward()."
        )
    in_graph = set(graph.names)
    for name, m in model.named_modules():
        own = [p for p in m.parameters(recurse=False)]
        if not own:
            continue
        if isinstance(m, QUANTIZABLE):
            if name not in in_graph:
                continue  # never executed on the example input: nothing to quantize
            continue
        if type(m).__name__ in _NORM_MODULES:
            continue
        raise UserError(
            f"layer {name or '(root)'!r} ({type(m).__name__}) holds weights but has no quantization rule "
            "(supported: Conv1d, Conv2d, Linear; normalization layers are folded or kept float)."
        )


def _untraceable_module(model: nn.Module) -> str | None:
    """The deepest submodule torch.fx fails to trace on its own."""
    import torch.fx as fx

    failing = []
    for name, m in model.named_modules():
        if not name:
            continue
        try:
            fx.symbolic_trace(m)
        except Exception:  # noqa: BLE001 - any tracing failure marks the module
            failing.append(name)
    if not failing:
        return None
    return max(failing, key=lambda n: n.count("."))


# --------------------------------------------------------------------------------------------
# the planner


@dataclass
class ParetoPoint:
    alpha: float | None
    budget_bytes: float
    model_bytes: float
    predicted: dict[str, float]
    measured: dict[str, float]
    plan: CompressionPlan


class Planner:
    """Analysis of one model on one profile (sensitivities, noise model, accuracy curve), reusable
    for many budgets: ``Planner(...).plan(alpha=0.5)``."""

    def __init__(
        self,
        model: nn.Module,
        graph: ModelGraph,
        profile: DeviceProfile,
        calib_x: np.ndarray,
        *,
        calib_y: np.ndarray | None = None,
        eval_x: np.ndarray | None = None,
        eval_y: np.ndarray | None = None,
        method: str = "hessian",
        model_name: str = "",
        seed: int = 0,
        weight_clip: str = "mse",
        act_calibration: str = "mse",
        hutchinson_samples: int = 8,
        hessian_samples: int = 128,
        noise_draws: int = 8,
        noise_samples: int = 128,
        gain_method: str = "adjoint",
        fit_plans: int = 8,
        curve: str = "auto",
        refine_top_k: int = 5,
        noise_model: NoiseModel | None = None,
        bias_correction: bool = True,
        weight_rounding: str = "gptq",
    ) -> None:
        from edge_compress.quant.fakequant import fold_batchnorm
        from edge_compress.quant.noise import NoiseModel

        if method not in METHODS:
            raise UserError(f"unknown quantization method {method!r}; use one of {', '.join(METHODS)}.")
        if calib_x is None or len(calib_x) == 0:
            raise UserError("quantization needs calibration data (calib_x is empty).")
        if (eval_x is None) != (eval_y is None):
            raise UserError("give both eval_x and eval_y (or neither) to predict the accuracy drop.")
        check_quantizable(model, graph)
        self.graph, self.profile, self.method = graph, profile, method
        self.model_name, self.seed = model_name, seed
        self.weight_clip, self.act_calibration = weight_clip, act_calibration
        self.calib_x = np.ascontiguousarray(calib_x)
        self.eval_x, self.eval_y = eval_x, eval_y
        self.refine_top_k = refine_top_k
        self.folded = fold_batchnorm(model)
        self.info = {li.name: li for li in graph.layers}
        self.options: dict[str, tuple[int, ...]] = {}
        self.float_layers: list[str] = []
        for li in graph.layers:
            bits = tuple(b for b in profile.weight_bits(li.kind) if 2 <= b <= 16)
            if bits:
                self.options[li.name] = bits
            else:
                self.float_layers.append(li.name)
        ab = profile.activation_bits()
        self.act_bits: int | None = 8 if 8 in ab else (min(ab) if ab else None)
        self.units = allocation_units(self.options, graph.precision_groups)
        for u in self.units:
            unit_bits(u, self.options)  # UserError when a tied group has no common bit-width
        if noise_model is None:
            noise_model = NoiseModel.build(
                self.folded,
                graph,
                self.calib_x,
                options=self.options,
                act_bits=(self.act_bits,) if self.act_bits else (),
                weight_clip=weight_clip,
                act_calibration=act_calibration,
                gain_method=gain_method,
                draws=noise_draws,
                max_samples=noise_samples,
                seed=seed,
                folded=True,
                model_name=model_name,
                profile_name=profile.name,
                bias_correction=bias_correction,
                weight_rounding=weight_rounding,
            )
        self.noise_model = noise_model
        if eval_x is not None and eval_y is not None and noise_model.curve is None:
            noise_model.fit_accuracy(eval_x, eval_y, n_random=max(fit_plans - 2, 0), seed=seed, kind=curve)
        self.traces = None
        self.sens: dict[tuple[str, int], float] = {}
        if method == "hessian":
            from edge_compress.quant.sensitivity import hessian_sensitivity, hessian_traces

            self.traces = hessian_traces(
                self.folded,
                list(self.options),
                self.calib_x[:hessian_samples],
                None if calib_y is None else np.asarray(calib_y)[:hessian_samples],
                n_samples=hutchinson_samples,
                seed=seed,
            )
            self.sens = hessian_sensitivity(
                self.folded,
                self.options,
                self.traces,
                weight_clip,
                quantizer=noise_model.weight_quantizer(noise_model.weight_rounding),
            )
        else:
            self.sens = {(n, b): noise_model.sensitivity(n, b) for n, bs in self.options.items() for b in bs}

    # ---------------------------------------------------------------- costs
    def layer_bytes(self, name: str, bits: int | None) -> float:
        from edge_compress.plan import CompressionPlan, LayerDecision

        li = self.info[name]
        p = CompressionPlan("", "", {name: LayerDecision(name, li.kind, bits, self.act_bits)})
        return p.layer_bytes(li)

    def layer_bops(self, name: str, bits: int | None) -> float:
        li = self.info[name]
        return float(li.macs * (bits or 32) * (self.act_bits or 32))

    def file_constraint(self, limit: float, fmt: str, variant: str) -> Constraint:
        """A model-bytes budget on one exported file's predicted size (parameters as ``fmt`` stores
        them, plus the fitted container: per quantized channel, per layer, constant)."""
        from edge_compress.export import size
        from edge_compress.plan import CompressionPlan, LayerDecision

        coef = size.coefficients(fmt, variant)
        mods = dict(self.folded.named_modules())
        biased = {n for n in self.info if getattr(mods.get(n), "bias", None) is not None}

        def cost(name: str, bits: int | None) -> float:
            li = self.info[name]
            p = CompressionPlan("", "", {name: LayerDecision(name, li.kind, bits, self.act_bits)})
            per_ch = coef.get("q_channels", 0.0) * li.out_channels if bits is not None else 0.0
            return size.layer_payload(p, li, fmt, li.has_bias or name in biased) + per_ch

        fixed = sum(cost(n, None) for n in self.float_layers)
        fixed += coef.get("layers", 0.0) * len(self.graph.layers) + coef.get("const", 0.0)
        coeffs = {(n, b): cost(n, b) for n, bs in self.options.items() for b in bs}
        return Constraint(
            f"model_bytes[{size.key(fmt, variant)}]", coeffs, float(limit) - fixed, " bytes", offset=fixed
        )

    def constraint(self, kind: str, limit: float) -> Constraint:
        """The model-bytes or BOPs budget as a linear constraint (float layers folded into the limit)."""
        if kind == "model_bytes":
            fixed = sum(self.layer_bytes(n, None) for n in self.float_layers)
            coeffs = {(n, b): self.layer_bytes(n, b) for n, bs in self.options.items() for b in bs}
            return Constraint("model_bytes", coeffs, float(limit) - fixed, " bytes", offset=fixed)
        if kind == "bops":
            fixed = sum(self.layer_bops(n, None) for n in self.float_layers)
            coeffs = {(n, b): self.layer_bops(n, b) for n, bs in self.options.items() for b in bs}
            return Constraint("bops", coeffs, float(limit) - fixed, " BOPs", offset=fixed)
        raise UserError(f"budget {kind!r} is not a quantization budget (use model_bytes or bops).")

    def bounds_bytes(self) -> tuple[float, float]:
        """(smallest plan bytes the profile allows, bytes with every layer at int8 or its nearest allowed)."""
        lo = hi = sum(self.layer_bytes(n, None) for n in self.float_layers)
        for n, bs in self.options.items():
            lo += self.layer_bytes(n, min(bs))
            hi += self.layer_bytes(n, min(bs, key=lambda b: (abs(b - 8), -b)))
        return lo, hi

    def restriction_note(self) -> str:
        """Which op kinds the profile keeps from the lowest bit-width (for messages)."""
        lowest = min(min(bs) for bs in self.options.values()) if self.options else 8
        kinds = sorted({self.info[n].kind for n, bs in self.options.items() if min(bs) > lowest})
        if not kinds:
            return ""
        desc = ", ".join(
            f"{k} layers are {'/'.join(f'int{b}' for b in self.profile.weight_bits(k))}-only" for k in kinds
        )
        return f"{desc} on this profile"

    # ---------------------------------------------------------------- planning
    def plan(
        self,
        budget: dict[str, float] | None = None,
        *,
        alpha: float | None = None,
        extra_constraints: list[Constraint] | None = None,
        file_formats: list[tuple[str, str]] | None = None,
    ) -> CompressionPlan:
        """Plan under ``budget`` (None: the profile's) or at ``alpha`` between all-int4 and all-int8.

        ``file_formats``: the (format, variant) files that will be exported, e.g. ``[("onnx", "qdq"),
        ("tflite", "int8")]``. A model-bytes budget then bounds each file's predicted size (the
        parameters as that format stores them plus its container, :mod:`edge_compress.export.size`),
        one constraint per file; without it (and for ``alpha``) it bounds the parameter bytes.
        """
        from edge_compress.plan import CompressionPlan, LayerDecision

        notes: list[str] = []
        raw = dict(self.profile.budgets.active() if budget is None else budget)
        resolved: dict[str, float] = {}
        for k, v in raw.items():
            if k in ENFORCED_BUDGETS:
                resolved[k] = float(v)
            elif k in COST_MODEL_BUDGETS:
                if any(c.name == k for c in extra_constraints or []):
                    continue  # a cost model enforces it
                notes.append(
                    f"budget {k}={v:g} is not enforced by the quantization planner (no cost model; pass it as an extra constraint)"
                )
            else:
                raise UserError(f"unknown budget {k!r}; quantization budgets: {', '.join(ENFORCED_BUDGETS)}.")
        lo, hi = self.bounds_bytes()
        if alpha is not None:
            if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
                raise UserError(f"alpha must be between 0 (smallest plan) and 1 (all int8), got {alpha}.")
            by_alpha = math.floor(lo + alpha * (hi - lo))
            if "model_bytes" in resolved and resolved["model_bytes"] < by_alpha:
                notes.append(
                    f"model_bytes={resolved['model_bytes']:,.0f} is tighter than alpha={alpha:g} ({by_alpha:,} bytes)"
                )
            else:
                resolved["model_bytes"] = float(by_alpha)
        constraints = []
        for k, v in resolved.items():
            if k == "model_bytes" and file_formats and alpha is None:
                constraints += [self.file_constraint(v, fmt, variant) for fmt, variant in file_formats]
            else:
                constraints.append(self.constraint(k, v))
        constraints += list(extra_constraints or [])
        if self.method in ("uniform8", "uniform4"):
            target = 8 if self.method == "uniform8" else 4
            bits = {}
            for u in self.units:
                common = unit_bits(u, self.options)
                b = min(common, key=lambda b: (abs(b - target), -b))
                bits.update({n: b for n in u})
            for c in constraints:
                used = c.usage(bits)
                if used > c.limit * (1 + 1e-9) + 1e-9:
                    fixed = c.offset
                    raise BudgetError(
                        f"budget {c.name}={c.limit + fixed:,.0f} is below the uniform int{target} plan "
                        f"({used + fixed:,.0f}{c.unit}); use a mixed-precision method (hessian or noise)."
                    )
            alloc = Allocation(
                bits,
                float(sum(self.sens[(n, b)] for n, b in bits.items())),
                {c.name: c.usage(bits) for c in constraints},
                {c.name: c.limit for c in constraints},
            )
        else:
            allocs = allocate_top_k(
                self.options,
                self.sens,
                constraints,
                self.graph.precision_groups,
                k=self.refine_top_k if self.eval_x is not None else 1,
                profile=self.profile.name,
                note=self.restriction_note(),
            )
            alloc = self._refine(allocs, notes)
        why = self._why(alloc, constraints)
        layers: dict[str, LayerDecision] = {}
        for li in self.graph.layers:
            n = li.name
            b = alloc.bits.get(n)
            d = LayerDecision(n, li.kind, b, self.act_bits, per_channel=True, weight_clip=self.weight_clip)
            if b is not None:
                d.sensitivity = {str(bb): float(self.sens[(n, bb)]) for bb in self.options[n]}
                lnm = self.noise_model.layers[n]
                d.predicted = {
                    "bytes": self.layer_bytes(n, b),
                    "bops": self.layer_bops(n, b),
                    "noise_power": lnm.weight_noise(b),
                    "noise_power_step": lnm.weight_noise(b, step=True),
                }
                if self.traces is not None:
                    d.predicted["hessian_trace"] = self.traces[n].trace
            else:
                d.act_bits = None
                d.predicted = {"bytes": self.layer_bytes(n, None), "bops": self.layer_bops(n, None)}
            d.why = why.get(n, "")
            layers[n] = d
        plan = CompressionPlan(
            self.model_name,
            self.profile.name,
            layers,
            method=self.method,
            budget=resolved,
            activation_calibration=self.act_calibration,
            groups=[list(g) for g in self.graph.precision_groups],
            notes=notes,
            bias_correction=self.noise_model.bias_correction,
            weight_rounding=self.noise_model.weight_rounding,
        )
        pred = self.noise_model.predict(plan)
        fp32 = sum(self.layer_bytes(n, None) for n in self.info)
        plan.predicted = {
            "model_bytes": plan.model_bytes(self.graph),
            "bops": plan.bops(self.graph),
            "fp32_bytes": fp32,
            "min_bytes": lo,
            "int8_bytes": hi,
            "objective": alloc.objective,
            "solve_s": alloc.solve_s,
            **pred,
        }
        curve = self.noise_model.curve
        if curve is not None:
            plan.predicted["acc_curve_fit_mae_pp"] = curve.fit_mae_pp
            plan.predicted["eval_fp32_acc"] = curve.fp32_acc
            plan.predicted.update({f"acc_curve_{k}": v for k, v in curve.params.items()})
            plan.notes.append(
                f"acc_drop_pp from a {curve.kind} curve in predicted SQNR fitted on {len(curve.fit_points)} measured plans "
                f"(fit MAE {curve.fit_mae_pp:.2f} pp)"
            )
        else:
            plan.notes.append("no evaluation data: accuracy drop not predicted (give eval_x and eval_y)")
        if self.float_layers:
            plan.notes.append(
                f"kept float (no integer weight precision on the {self.profile.name} profile): {', '.join(self.float_layers)}"
            )
        return plan

    def _refine(self, allocs: list[Allocation], notes: list[str]) -> Allocation:
        """Among the best ILP allocations, the one whose simulation stays closest to the float model on
        the evaluation data: the lowest mean KL divergence of its softmax outputs from fp32's (output
        noise power where the outputs are not class scores). The sensitivities rank plans by a
        second-order / linear model; simulating a handful of them catches what that misses (e.g.
        int4 layers that compound). KL rather than top-1 accuracy: on a few hundred samples, accuracy
        differences between near-equal plans are mostly sampling noise that does not carry over to
        new data, while the KL divergence is a continuous average over every sample and class and
        needs no labels."""
        if len(allocs) == 1 or self.eval_x is None:
            return allocs[0]
        scored = []
        for rank, a in enumerate(allocs):
            trial = self.noise_model.plan_for({**a.bits, **dict.fromkeys(self.float_layers)}, self.act_bits)
            for n in self.float_layers:
                trial.layers[n].act_bits = None
            m = self.noise_model.measure(trial, self.eval_x, self.eval_y)
            scored.append((m, rank, a))
        use_kl = all(math.isfinite(m["kl_to_fp32"]) for m, _, _ in scored)
        key = "kl_to_fp32" if use_kl else "output_noise_power"
        m, idx, chosen = min(scored, key=lambda s: (s[0][key], s[0]["output_noise_power"], s[1]))
        first = scored[0][0]
        what = "KL divergence from fp32" if use_kl else "output noise power"
        msg = (
            f"chosen allocation: #{idx + 1} of the {len(allocs)} best by sensitivity, by simulated {what} on "
            f"{len(self.eval_x)} evaluation samples ({m[key]:.4g} vs {first[key]:.4g} for the ILP optimum"
        )
        if "acc" in m:
            msg += f"; accuracy {100 * m['acc']:.2f}% vs {100 * first['acc']:.2f}%"
        notes.append(msg + ")")
        return chosen

    def _why(self, alloc: Allocation, constraints: list[Constraint]) -> dict[str, str]:
        out: dict[str, str] = {}
        binding = set(alloc.binding(0.05)) if constraints else set()
        # sensitivity increase per byte saved going from a unit's highest to its lowest bits
        ratios: dict[int, float] = {}
        for k, u in enumerate(self.units):
            bs = unit_bits(u, self.options)
            if len(bs) < 2:
                continue
            d_omega = sum(self.sens[(n, bs[-1])] - self.sens[(n, bs[0])] for n in u)
            d_bytes = sum(self.layer_bytes(n, bs[0]) - self.layer_bytes(n, bs[-1]) for n in u)
            ratios[k] = d_omega / max(d_bytes, 1e-9)
        order = sorted(ratios, key=lambda k: ratios[k])
        tag = "Omega" if self.method == "hessian" else "noise"
        for k, u in enumerate(self.units):
            bs = unit_bits(u, self.options)
            b = alloc.bits[u[0]]
            tied = (
                f" (tied with {', '.join(x for x in u[1:])}: they share a grid at a residual add or concat)"
                if len(u) > 1
                else ""
            )
            for n in u:
                kind = self.info[n].kind
                if len(bs) == 1:
                    text = f"int{b}: the {self.profile.name} profile allows only int{b} for {kind} layers"
                elif self.method in ("uniform8", "uniform4"):
                    text = f"int{b}: uniform plan"
                elif k in ratios:
                    rank = order.index(k) + 1
                    per = f"{tag} +{ratios[k]:.3g} per byte saved at int{bs[-1]}, rank {rank}/{len(order)} cheapest"
                    if b == bs[-1]:
                        text = f"int{b}: {per}"
                    elif not binding and b == bs[0]:
                        text = f"int{b}: no budget requires fewer bits ({per})"
                    else:
                        text = (
                            f"int{b}: lowering it costs more {tag} per byte than the layers lowered to meet "
                            f"{', '.join(sorted(binding)) or 'the budget'} ({per})"
                        )
                else:
                    text = f"int{b}"
                out[n] = text + (tied if n == u[0] else f" (tied with {u[0]})" if len(u) > 1 else "")
        return out

    # ---------------------------------------------------------------- evaluation
    def measure(self, plan: CompressionPlan, x: np.ndarray, y: np.ndarray | None = None) -> dict[str, float]:
        """Simulated (fake-quant) output noise / SQNR / accuracy of ``plan`` on ``(x, y)``."""
        return self.noise_model.measure(plan, x, y)


# --------------------------------------------------------------------------------------------
# public entry points


def plan_model(
    model: nn.Module,
    graph: ModelGraph,
    profile: DeviceProfile,
    calib_x: np.ndarray,
    *,
    eval_x: np.ndarray | None = None,
    eval_y: np.ndarray | None = None,
    budget: dict[str, float] | None = None,
    method: str = "hessian",
    alpha: float | None = None,
    model_name: str = "",
    seed: int = 0,
    extra_constraints: list[Constraint] | None = None,
    calib_y: np.ndarray | None = None,
    file_formats: list[tuple[str, str]] | None = None,
    **planner_options: Any,
) -> CompressionPlan:
    """A mixed-precision plan for ``model`` on ``profile`` under ``budget`` (None: the profile's budgets).

    ``budget`` holds Budget fields (``model_bytes``; ``bops`` too); ``alpha`` sets the model-bytes
    budget at that fraction between the smallest allowed plan (all int4 where allowed) and all int8.
    ``method``: hessian | noise | uniform8 | uniform4. ``eval_x`` / ``eval_y`` (a validation split)
    let the plan predict its accuracy drop. ``calib_y``: labels for the Hessian loss (default: the
    model's own predictions). ``file_formats``: the files that will be exported, so a model-bytes
    budget bounds each file's size (see :meth:`Planner.plan`). ``planner_options`` go to
    :class:`Planner` (e.g. hutchinson_samples).
    """
    key = _fingerprint(
        model, graph, profile, calib_x, calib_y, eval_x, eval_y, method, model_name, seed, planner_options
    )
    planner = _PLANNERS.get(key)
    if planner is None:
        planner = Planner(
            model,
            graph,
            profile,
            calib_x,
            calib_y=calib_y,
            eval_x=eval_x,
            eval_y=eval_y,
            method=method,
            model_name=model_name,
            seed=seed,
            **planner_options,
        )
        _PLANNERS[key] = planner
        while len(_PLANNERS) > _CACHE_SIZE:
            _PLANNERS.pop(next(iter(_PLANNERS)))
    return planner.plan(budget, alpha=alpha, extra_constraints=extra_constraints, file_formats=file_formats)


# plan_model keeps the analysis of the last few (model, data, profile, method) it saw, so a sweep over
# budgets (e.g. several alphas) pays for sensitivities and the noise model once.
_CACHE_SIZE = 4
_PLANNERS: dict[str, Planner] = {}


def _fingerprint(model: nn.Module, graph: ModelGraph, profile: DeviceProfile, *parts: Any) -> str:
    import hashlib

    import torch

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(graph.names).encode())
    h.update(repr(graph.precision_groups).encode())
    h.update(profile.model_dump_json().encode())
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(repr((p.shape, str(p.dtype))).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode())
    return h.hexdigest()


def predict(plan: CompressionPlan, noise_model: NoiseModel) -> dict[str, float]:
    """The noise model's prediction for ``plan`` (output noise power, SQNR, accuracy drop)."""
    return noise_model.predict(plan)


def pareto_sweep(
    model: nn.Module,
    graph: ModelGraph,
    profile: DeviceProfile,
    calib_x: np.ndarray,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
    *,
    alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0),
    budgets_bytes: list[float] | None = None,
    method: str = "hessian",
    model_name: str = "",
    seed: int = 0,
    test_x: np.ndarray | None = None,
    test_y: np.ndarray | None = None,
    planner: Planner | None = None,
    **planner_options: Any,
) -> list[ParetoPoint]:
    """Allocations over a range of byte budgets (``alphas`` or explicit ``budgets_bytes``), each with
    its predicted accuracy drop and its measured (simulated) accuracy on ``test_x`` (default: eval)."""
    pl = planner or Planner(
        model,
        graph,
        profile,
        calib_x,
        eval_x=eval_x,
        eval_y=eval_y,
        method=method,
        model_name=model_name,
        seed=seed,
        **planner_options,
    )
    mx, my = (test_x, test_y) if test_x is not None else (eval_x, eval_y)
    points: list[ParetoPoint] = []
    targets: list[tuple[float | None, dict[str, float] | None]]
    if budgets_bytes is not None:
        targets = [(None, {"model_bytes": float(b)}) for b in budgets_bytes]
    else:
        targets = [(a, {}) for a in alphas]
    for a, bud in targets:
        p = pl.plan(bud, alpha=a)
        meas = pl.measure(p, mx, my)
        points.append(
            ParetoPoint(
                a,
                p.budget.get("model_bytes", float("nan")),
                p.predicted["model_bytes"],
                dict(p.predicted),
                meas,
                p,
            )
        )
    return points


def layer_table(plan: CompressionPlan, graph: ModelGraph) -> list[dict[str, Any]]:
    """Rows for a terminal / report table: layer, kind, bits, bytes, sensitivity, why."""
    rows = []
    for li in graph.layers:
        d = plan.layers[li.name]
        rows.append(
            {
                "layer": li.name,
                "kind": li.kind,
                "weight_bits": d.weight_bits,
                "act_bits": d.act_bits,
                "bytes": d.predicted.get("bytes"),
                "noise_power": d.predicted.get("noise_power"),
                "why": d.why,
            }
        )
    return rows
