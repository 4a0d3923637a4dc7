"""Budget-constrained model selection with device feedback in the loop (NetAdapt / HAQ style).

1. :func:`generate_candidates` sweeps plans over one or more models (float, uniform int8 / int4,
   mixed precision at several precision budgets through the planner, L1 pruning ratios,
   factorization ranks: each technique when its package is present) and scores each candidate's
   accuracy with the fast simulation (fake quantization on the test split).
2. :func:`select` predicts every candidate's cost with the target's cost model, measures the most
   accurate candidate that could still meet every budget (its *optimistic* prediction does),
   feeds the measurement back (refit of the cost model + a per-model correction), re-ranks, and
   stops when no unmeasured candidate that is more accurate than the best measured feasible one
   can still meet the budgets. Without a measuring function it chooses on predictions and says so.
3. The result holds the choice, the Pareto front (accuracy vs latency / energy / bytes), and for
   every rejected candidate the budget it broke and by how much (measured or predicted).

Budgets are :class:`edge_compress.profiles.Budget` fields, plus ``latency_median_ms`` (a budget
on the median latency, for machines where the p99 is set by other tenants, as on a shared CI host).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_compress.costmodel import CostModel, CostPrediction, Kernel, kernel_class_shares
from edge_compress.errors import BudgetError, UserError

if TYPE_CHECKING:
    from edge_compress.profiles import DeviceProfile
    from runners.base import Measurement

# budget field -> (metric of a cost record, unit shown, scale from the metric to the budget unit)
BUDGET_METRICS: dict[str, tuple[str, str, float]] = {
    "latency_p99_ms": ("latency_p99_ms", "ms", 1.0),
    "latency_median_ms": ("latency_ms", "ms", 1.0),
    "energy_per_inference_mj": ("energy_mj", "mJ", 1.0),
    "peak_memory_mb": ("peak_memory_bytes", "MB", 1e-6),
    "model_bytes": ("model_bytes", "B", 1.0),
    "avg_power_w": ("avg_power_w", "W", 1.0),
    "flops_ratio": ("flops_ratio", "", 1.0),
}
EXTRA_BUDGETS = {"latency_median": "latency_median_ms", "latency_median_ms": "latency_median_ms"}


def parse_select_budget(text: str | None) -> dict[str, float]:
    """``--budget`` text: the profile budget grammar plus ``latency_median=<ms>``."""
    from edge_compress.profiles import _num, parse_budget

    rest, extra = [], {}
    for part in (text or "").split(","):
        key = part.split("=", 1)[0].strip().lower()
        if key in EXTRA_BUDGETS and "=" in part:
            extra[EXTRA_BUDGETS[key]] = _num("latency_p99_ms", part.split("=", 1)[1])
        elif part.strip():
            rest.append(part)
    out = parse_budget(",".join(rest))
    out.update(extra)
    return out


# ---------------------------------------------------------------------------------------------
# candidates and costs


@dataclass
class Costs:
    """One candidate's costs, either all predicted or all measured (``basis``)."""

    basis: str  # "predicted" | "measured"
    latency_ms: float
    latency_p99_ms: float
    energy_mj: float
    energy_basis: str
    peak_memory_bytes: float
    model_bytes: float
    avg_power_w: float | None = None
    flops_ratio: float | None = None

    def metric(self, name: str) -> float | None:
        return getattr(self, name)


@dataclass
class Candidate:
    """A model + plan to choose from. ``build`` returns (nn.Module, plan or None) for export."""

    id: str
    model_name: str
    technique: str
    accuracy: float  # percent, from the fast simulation
    kernels: list[Kernel]
    macs: int = 0
    base_macs: int = 0
    build: Callable[[], tuple[Any, Any]] | None = None
    calib_x: Any = None
    plan_json: dict[str, Any] | None = None
    predicted: Costs | None = None
    prediction: CostPrediction | None = None
    measured: Costs | None = None
    measurement: dict[str, Any] | None = None  # summary of the runner's Measurement
    correction: float = 1.0  # measured/predicted latency learned from measured siblings
    notes: list[str] = field(default_factory=list)

    @property
    def costs(self) -> Costs:
        c = self.measured or self.predicted
        if c is None:
            raise RuntimeError(f"candidate {self.id} has no costs yet")
        return c


def _avg_power(
    profile: DeviceProfile, latency_ms: float, energy_mj: float, rate_hz: float | None
) -> float | None:
    """Average power at ``rate_hz`` inferences per second: idle plus the active share (inf if it cannot keep up)."""
    if not rate_hz:
        return None
    busy = rate_hz * latency_ms / 1e3
    if busy >= 1.0:
        return math.inf
    idle = profile.power.idle_w
    return idle + rate_hz * (energy_mj / 1e3 - idle * latency_ms / 1e3)


def predict_costs(c: Candidate, cm: CostModel, budgets: dict[str, float], refresh: bool = True) -> Costs:
    """Predicted costs: the cost model's prediction (``c.prediction``) times the sibling correction."""
    if refresh or c.prediction is None:
        c.prediction = cm.predict_from_kernels(c.kernels)
    p = c.prediction
    lat = p.latency_ms * c.correction
    energy = p.energy_mj * c.correction
    return Costs(
        "predicted",
        lat,
        p.latency_p99_ms * c.correction,
        energy,
        p.energy_basis,
        p.peak_memory_bytes,
        p.model_bytes,
        _avg_power(cm.profile, lat, energy, budgets.get("duty_cycle_hz")),
        c.macs / c.base_macs if c.base_macs else None,
    )


def measured_costs(c: Candidate, m: Measurement, cm: CostModel, budgets: dict[str, float]) -> Costs:
    assert m.stats is not None
    lat, p99 = m.stats.median_ms, m.stats.p99_ms
    if m.energy is not None:
        energy = m.energy.joules_per_inference * 1e3
        ebasis = m.energy.source if m.energy.measured else f"estimate ({m.energy.source})"
    else:
        energy, ebasis = cm.energy_j(lat) * 1e3, "estimate: profile power model x measured latency"
    pred = c.prediction or cm.predict_from_kernels(c.kernels)
    mem = float(m.peak_rss_bytes) if m.peak_rss_bytes else pred.peak_memory_bytes
    return Costs(
        "measured",
        lat,
        p99,
        energy,
        ebasis,
        mem,
        pred.model_bytes,
        _avg_power(cm.profile, lat, energy, budgets.get("duty_cycle_hz")),
        c.macs / c.base_macs if c.base_macs else None,
    )


def violations(costs: Costs, budgets: dict[str, float], slack: float = 1.0) -> dict[str, dict[str, float]]:
    """budget -> {limit, value, over_pct} for every budget ``costs`` breaks (value > limit x slack)."""
    out = {}
    for b, limit in budgets.items():
        if b not in BUDGET_METRICS:
            continue
        metric, _, scale = BUDGET_METRICS[b]
        v = costs.metric(metric)
        if v is None:
            continue
        v = v * scale
        if v > limit * slack:
            out[b] = {
                "limit": limit,
                "value": v,
                "over_pct": 100.0 * (v / limit - 1.0) if math.isfinite(v) else math.inf,
            }
    return out


def _possibly_feasible(c: Candidate, budgets: dict[str, float], cm: CostModel) -> bool:
    """Could the candidate meet every budget if the prediction errs in its favour?"""
    if c.predicted is None:
        return True
    rel = 1.0 + 2.0 * cm.rel_error
    opt = Costs(
        "predicted",
        c.predicted.latency_ms / rel,
        c.predicted.latency_p99_ms / rel,
        c.predicted.energy_mj / rel,
        c.predicted.energy_basis,
        c.predicted.peak_memory_bytes / rel,
        c.predicted.model_bytes,
        None
        if c.predicted.avg_power_w is None
        else cm.profile.power.idle_w + (c.predicted.avg_power_w - cm.profile.power.idle_w) / rel,
        c.predicted.flops_ratio,
    )
    return not violations(opt, budgets)


# ---------------------------------------------------------------------------------------------
# the loop


@dataclass
class SelectionResult:
    chosen: Candidate | None
    basis: str  # "measured" | "predicted"
    candidates: list[Candidate]
    budgets: dict[str, float]
    measurements: int
    calibrated: bool
    rel_error: float
    trace: list[dict[str, Any]] = field(default_factory=list)  # one entry per measurement
    notes: list[str] = field(default_factory=list)

    def pareto(self, metric: str = "latency_ms") -> list[Candidate]:
        """Candidates no other candidate beats on both accuracy and ``metric``."""
        return pareto_front(self.candidates, metric)

    def rejections(self) -> list[dict[str, Any]]:
        out = []
        for c in self.candidates:
            if c is self.chosen:
                continue
            v = violations(c.costs, self.budgets)
            if v:
                reason = "breaks " + ", ".join(f"{b} by {x['over_pct']:+.1f}%" for b, x in v.items())
            elif self.chosen is not None and c.accuracy <= self.chosen.accuracy:
                reason = "meets the budgets, less accurate than the choice"
            else:
                reason = "meets the budgets"
            out.append({"id": c.id, "basis": c.costs.basis, "violations": v, "reason": reason})
        return out

    def to_json(self) -> dict[str, Any]:
        def row(c: Candidate) -> dict[str, Any]:
            return {
                "id": c.id,
                "model": c.model_name,
                "technique": c.technique,
                "accuracy_pct": c.accuracy,
                "predicted": None if c.predicted is None else vars(c.predicted),
                "measured": None if c.measured is None else vars(c.measured),
                "basis": c.costs.basis,
                "violations": violations(c.costs, self.budgets),
                "pareto_latency": c in self.pareto("latency_ms"),
                "pareto_energy": c in self.pareto("energy_mj"),
                "pareto_bytes": c in self.pareto("model_bytes"),
                "notes": c.notes,
            }

        return {
            "chosen": None if self.chosen is None else row(self.chosen),
            "basis": self.basis,
            "numbers": "measured on the target"
            if self.basis == "measured"
            else "predicted (no target given)",
            "budgets": self.budgets,
            "measurements": self.measurements,
            "candidates_total": len(self.candidates),
            "cost_model": {
                "calibrated": self.calibrated,
                "rel_error": self.rel_error,
                "refitted_with_measurements": self.measurements,
            },
            "candidates": [row(c) for c in sorted(self.candidates, key=lambda c: -c.accuracy)],
            "rejections": self.rejections(),
            "trace": self.trace,
            "notes": self.notes,
        }


def pareto_front(cands: list[Candidate], metric: str) -> list[Candidate]:
    pts = sorted(cands, key=lambda c: (c.costs.metric(metric) or 0.0, -c.accuracy))
    front, best = [], -math.inf
    for c in pts:
        if c.accuracy > best:
            front.append(c)
            best = c.accuracy
    return front


def _apply_corrections(cands: list[Candidate], shrink: float = 0.5) -> None:
    """Measured/predicted ratios of measured candidates carried to similar unmeasured siblings.

    Siblings are candidates of the same source model; each measured one counts more the more
    similar its kernel-class time shares are (cosine; a quarter of the weight regardless, for the
    error all siblings share: call overhead, input conversion), shrunk toward 1 with few of them.
    """
    measured = [c for c in cands if c.measured is not None and c.prediction is not None]
    for c in cands:
        if c.measured is not None:
            continue
        sib = [m for m in measured if m.model_name == c.model_name]
        if not sib or c.prediction is None:
            c.correction = 1.0
            continue
        mine = kernel_class_shares(c.kernels, c.prediction.kernels_ms)
        num = den = 0.0
        for m in sib:
            theirs = kernel_class_shares(m.kernels, m.prediction.kernels_ms)  # type: ignore[union-attr]
            keys = set(mine) | set(theirs)
            dot = sum(mine.get(k, 0) * theirs.get(k, 0) for k in keys)
            norm = math.sqrt(sum(v * v for v in mine.values()) * sum(v * v for v in theirs.values())) or 1.0
            w = 0.25 + 0.75 * max(0.0, dot / norm) ** 4  # part of any error is shared by all siblings
            num += w * math.log(m.measured.latency_ms / m.prediction.latency_ms)  # type: ignore[union-attr]
            den += w
        c.correction = math.exp(num / (den + shrink)) if den > 0 else 1.0


def select(
    candidates: list[Candidate],
    budgets: dict[str, float],
    cm: CostModel,
    measure: Callable[[Candidate], Measurement] | None = None,
    *,
    max_measurements: int | None = None,
    refit: bool = True,
    progress: Callable[[str], None] | None = None,
) -> SelectionResult:
    """Choose the most accurate candidate meeting every budget (see the module docstring).

    ``measure`` runs a candidate on the target and returns the runner's Measurement (failures are
    recorded and the candidate excluded). Without it, numbers are predictions and labelled so.
    The candidates' ``predicted`` / ``measured`` fields are (re)set by this call; ``cm`` is refitted
    in place with every measurement (save it with ``costmodel_store.save_costmodel``).

    Raises:
        BudgetError: no candidate meets the budgets; names the binding budget and the closest one.
    """
    if not candidates:
        raise UserError("no candidates to select from.")
    for c in candidates:  # a fresh start: numbers from an earlier call are not this target's
        c.measured, c.measurement, c.correction = None, None, 1.0
        c.predicted = predict_costs(c, cm, budgets)
    calibrated_at_start = cm.calibrated
    loop = _Loop(candidates, budgets, cm, measure, refit, progress)
    if measure is not None:
        while max_measurements is None or loop.n < max_measurements:
            nxt = _next_to_measure(candidates, budgets, cm, loop)
            if nxt is None:
                break
            loop.measure(nxt)
        else:
            loop.notes.append(
                f"stopped at --max-measurements {max_measurements}; unmeasured candidates may be better."
            )
    basis = "measured" if measure is not None else "predicted"
    usable = [c for c in candidates if c.id not in loop.failed]
    feasible = [c for c in usable if c.costs.basis == basis and not violations(c.costs, budgets)]
    res = SelectionResult(
        None, basis, candidates, budgets, loop.n, calibrated_at_start, cm.rel_error, loop.trace, loop.notes
    )
    if not feasible:
        raise BudgetError(_no_feasible_message(usable or candidates, budgets, basis))
    res.chosen = max(feasible, key=lambda c: (c.accuracy, -c.costs.latency_ms))
    return res


CLOSEST_MAX_OVER = 1.5  # keep checking the closest candidates while their optimistic cost is within this


def _next_to_measure(
    cands: list[Candidate], budgets: dict[str, float], cm: CostModel, loop: _Loop
) -> Candidate | None:
    """The most accurate unmeasured candidate that could still beat the best measured feasible one;
    when nothing measured is feasible and nothing is predicted to be, the closest one (predictions
    can be wrong both ways: checked while it is within ``CLOSEST_MAX_OVER`` of the budgets, and
    always once, so an impossible budget is reported with a measured number)."""
    ok = [c for c in cands if c.measured is not None and not violations(c.measured, budgets)]
    best = max((c.accuracy for c in ok), default=-math.inf)
    open_ = [c for c in cands if c.measured is None and c.id not in loop.failed]
    pool = [c for c in open_ if c.accuracy > best and _possibly_feasible(c, budgets, cm)]
    if pool:
        return max(pool, key=lambda c: (c.accuracy, -_worst_ratio(c.costs, budgets)))
    if ok or not open_:
        return None
    closest = min(open_, key=lambda c: _worst_ratio(c.costs, budgets))
    optimistic_over = _worst_ratio(closest.costs, budgets) / (1 + 2 * cm.rel_error)
    if loop.n == 0 or optimistic_over <= CLOSEST_MAX_OVER:
        return closest
    return None


class _Loop:
    """One on-target measurement with its feedback: the cost model is refitted on all observations,
    every prediction refreshed, and what the refit still misses on measured siblings carried over."""

    def __init__(
        self,
        cands: list[Candidate],
        budgets: dict[str, float],
        cm: CostModel,
        fn: Callable[[Candidate], Measurement] | None,
        refit: bool,
        progress: Callable[[str], None] | None,
    ) -> None:
        self.cands, self.budgets, self.cm, self.fn = cands, budgets, cm, fn
        self.refit, self.progress = refit, progress
        self.n = 0
        self.failed: set[str] = set()
        self.trace: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def measure(self, c: Candidate) -> None:
        assert self.fn is not None
        m = self.fn(c)
        self.n += 1
        if not m.ok or m.stats is None:
            self.failed.add(c.id)
            c.notes.append(f"measurement failed: {m.error}")
            self.trace.append({"id": c.id, "ok": False, "error": m.error})
            return
        cm, budgets = self.cm, self.budgets
        c.measured = measured_costs(c, m, cm, budgets)
        c.measurement = {
            "median_ms": m.stats.median_ms,
            "p99_ms": m.stats.p99_ms,
            "count": m.stats.count,
            "peak_rss_bytes": m.peak_rss_bytes,
            "target": m.target,
        }
        pred_lat = c.predicted.latency_ms if c.predicted else float("nan")
        self.trace.append(
            {
                "id": c.id,
                "ok": True,
                "accuracy": c.accuracy,
                "predicted_ms": pred_lat,
                "measured_ms": c.measured.latency_ms,
                "measured_p99_ms": c.measured.latency_p99_ms,
                "feasible": not violations(c.measured, budgets),
            }
        )
        if self.progress:
            self.progress(f"measured {c.id}: {c.measured.latency_ms:.3f} ms (predicted {pred_lat:.3f})")
        if self.refit:
            cm.observe(c.kernels, m, label=c.id, source=f"select:{m.target}")
            cm.fit(folds=0, update_error=False)
        for u in self.cands:  # the refitted model's own predictions, measured ones included
            u.prediction = cm.predict_from_kernels(u.kernels)
        _apply_corrections(self.cands)  # what it still gets wrong on measured siblings
        for u in self.cands:
            if u.measured is None:
                u.predicted = predict_costs(u, cm, budgets, refresh=False)


def _worst_ratio(costs: Costs, budgets: dict[str, float]) -> float:
    worst = 0.0
    for b, limit in budgets.items():
        if b in BUDGET_METRICS:
            metric, _, scale = BUDGET_METRICS[b]
            v = costs.metric(metric)
            if v is not None:
                worst = max(worst, v * scale / limit)
    return worst


def _no_feasible_message(cands: list[Candidate], budgets: dict[str, float], basis: str) -> str:
    closest = min(cands, key=lambda c: _worst_ratio(c.costs, budgets))
    v = violations(closest.costs, budgets)
    if not v:
        return f"no candidate meets the budgets on {basis} numbers."
    binding = max(v, key=lambda b: v[b]["over_pct"])
    x = v[binding]
    unit = BUDGET_METRICS[binding][1]
    others = sum(1 for c in cands if binding in violations(c.costs, budgets))
    return (
        f"no candidate meets {binding} <= {x['limit']:g} {unit} ({others} of {len(cands)} break it): the closest, "
        f"{closest.id}, is at {x['value']:.4g} {unit} ({x['over_pct']:+.1f}%, {closest.costs.basis}); "
        f"relax {binding} or add smaller models."
    )


# ---------------------------------------------------------------------------------------------
# candidate generation


def parse_models(text: str) -> list[tuple[str, float]]:
    """``lenet5,resnet@0.5`` -> [(zoo name, width)]."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, w = part.partition("@")
        try:
            width = float(w) if w else 1.0
        except ValueError:
            raise UserError(
                f"model {part!r}: the width after '@' must be a number (e.g. resnet@0.5)."
            ) from None
        out.append((name, width))
    if not out:
        raise UserError("no model given (e.g. lenet5 or lenet5,resnet@0.5).")
    return out


@dataclass
class Variant:
    """A transformed model before its plan is applied (the float model, a pruned one, ...)."""

    label: str
    model: Any
    graph: Any
    note: str = ""


def _supports(profile: DeviceProfile, bits: int) -> bool:
    return all(bits in profile.weight_bits(k) for k in ("conv", "linear"))


def _variants(
    zm: Any,
    graph: Any,
    prune_ratios: tuple[float, ...],
    ranks: tuple[float, ...],
    notes: list[str],
    finetune_epochs: int = 3,
) -> list[Variant]:
    """The float model plus L1-pruned (fine-tuned) and low-rank factorized variants."""
    from edge_compress.graph import extract_graph

    out = [Variant("", zm.model, graph)]
    ds = zm.dataset
    for r in prune_ratios:
        try:
            from edge_compress.prune import l1_prune

            res = l1_prune(zm.model, graph, r, ds.x_train, ds.y_train, finetune_epochs=finetune_epochs)
        except Exception as e:  # noqa: BLE001 - one failing variant must not stop the sweep
            notes.append(
                f"{zm.name}: L1 pruning to {r:g} of the FLOPs skipped ({type(e).__name__}: {str(e)[:120]})."
            )
            continue
        m = res.model.eval()
        out.append(Variant(f"l1prune{r:g}", m, extract_graph(m, zm.example_input()), "; ".join(res.notes)))
    for r in ranks:
        try:
            from edge_compress.factorize import factorize_model, ranks_by_budget

            rk = ranks_by_budget(zm.model, graph, flops_ratio=r)
            if not rk:
                raise ValueError("no layer is worth factorizing")
            m = factorize_model(zm.model, graph, rk).eval()
        except Exception as e:  # noqa: BLE001
            notes.append(
                f"{zm.name}: factorization to {r:g} of the FLOPs skipped ({type(e).__name__}: {str(e)[:120]})."
            )
            continue
        out.append(Variant(f"lowrank{r:g}", m, extract_graph(m, zm.example_input())))
    return out


def _plans(
    variant: Variant,
    zm: Any,
    profile: DeviceProfile,
    alphas: tuple[float, ...],
    calib: Any,
    notes: list[str],
    planner_options: dict[str, Any] | None = None,
    constraints: list[Any] | None = None,
) -> list[tuple[str, Any]]:
    from edge_compress.plan import CompressionPlan

    g = variant.graph
    plans: list[tuple[str, Any]] = [("fp32", None)]
    if _supports(profile, 8):
        plans.append(("w8a8", CompressionPlan.uniform(g, zm.name, profile.name, 8, 8)))
    if _supports(profile, 4):
        plans.append(("w4a8", CompressionPlan.uniform(g, zm.name, profile.name, 4, 8)))
    if not alphas:
        return plans
    try:
        from edge_compress.quant.planner import Planner
    except ImportError:
        if not any("planner" in n for n in notes):
            notes.append("mixed-precision candidates skipped: edge_compress.quant.planner is not available.")
        return plans
    ds = zm.dataset
    try:  # one analysis (sensitivities, noise model) serves every precision budget
        planner = Planner(
            variant.model,
            g,
            profile,
            calib,
            eval_x=ds.x_val,
            eval_y=ds.y_val,
            model_name=zm.name,
            **(planner_options or {}),
        )
    except Exception as e:  # noqa: BLE001 - report and keep sweeping
        notes.append(f"{zm.name}: the mixed-precision planner failed ({type(e).__name__}: {str(e)[:120]}).")
        return plans
    for a in alphas:
        try:
            p = planner.plan(None, alpha=a, extra_constraints=constraints or None)
        except Exception as e:  # noqa: BLE001
            notes.append(f"{zm.name}: plan(alpha={a:g}) failed ({type(e).__name__}: {str(e)[:120]}).")
            continue
        if any(p.digest() == q.digest() for _, q in plans if q is not None):
            continue  # the same bits as a plan already in the list
        plans.append((f"mixed-a{a:g}", p))
    return plans


def generate_candidates(
    models: list[tuple[str, float]] | str,
    profile: DeviceProfile,
    *,
    alphas: tuple[float, ...] = (0.25, 0.5, 0.75),
    prune_ratios: tuple[float, ...] = (0.7, 0.5),
    ranks: tuple[float, ...] = (0.6,),
    mixed_on_variants: bool = False,
    finetune_epochs: int = 3,
    planner_options: dict[str, Any] | None = None,
    use_project_exporter: bool = True,
    calib_n: int = 256,
    notes: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
    cost_model: CostModel | None = None,
    budgets: dict[str, float] | None = None,
) -> list[Candidate]:
    """Every (model variant x plan) candidate with its simulated accuracy and kernels.

    ``use_project_exporter`` must match how candidates will be exported (see :func:`runner_measure`):
    it decides which layers run in float. With ``cost_model`` and ``budgets``, the mixed-precision
    plans are allocated under the latency / energy budgets as that model predicts them (extra
    constraints of the bit allocation), not only under the precision budgets.
    """
    from edge_compress.costmodel import kernels_of
    from edge_compress.costmodel_export import float_compute_layers, project_exporter_available
    from edge_compress.graph import extract_graph
    from edge_compress.quant.fakequant import quantize_plan
    from edge_compress.zoo import load_zoo

    notes = notes if notes is not None else []
    specs = parse_models(models) if isinstance(models, str) else models
    out: list[Candidate] = []
    for name, width in specs:
        zm = load_zoo(name, width=width)
        label = name if width == 1.0 else f"{name}@{width:g}"
        graph = extract_graph(zm.model, zm.example_input())
        calib = zm.calibration(calib_n)
        for v in _variants(zm, graph, prune_ratios, ranks, notes, finetune_epochs):
            # the project exporter runs tiny-reduction convolutions in float: their kernels are float
            project = use_project_exporter and project_exporter_available()
            fc = float_compute_layers(v.graph) if project else set()
            mixed = alphas if (mixed_on_variants or not v.label) else ()
            cons: list[Any] = []
            if cost_model is not None and budgets and mixed:
                from edge_compress.costmodel import budget_constraints

                cons, _ = budget_constraints(cost_model, v.graph, budgets, float_compute=fc)
            for tech, plan in _plans(v, zm, profile, mixed, calib, notes, planner_options, cons):
                if plan is None:
                    acc = zm.evaluate(v.model)
                else:
                    sim, _ = quantize_plan(v.model, plan, calib)
                    acc = zm.evaluate(sim)
                cid = "/".join(x for x in (label, v.label, tech) if x)
                out.append(
                    Candidate(
                        cid,
                        label,
                        "+".join(x for x in (v.label, tech) if x),
                        100.0 * acc,
                        kernels_of(v.graph, plan, fc if plan is not None else set()),
                        macs=v.graph.total_macs,
                        base_macs=graph.total_macs,
                        build=lambda m=v.model, p=plan: (m, p),
                        calib_x=calib,
                        plan_json=None if plan is None else plan.to_json(),
                    )
                )
                if progress:
                    progress(f"candidate {cid}: accuracy {100 * acc:.2f}%")
    return out


def runner_measure(
    runner: Any,
    workdir: Any,
    profile: str,
    *,
    threads: int = 1,
    min_count: int = 200,
    min_duration_s: float = 1.0,
    warmup: int = 20,
    notes: list[str] | None = None,
    use_project_exporter: bool = True,
) -> Callable[[Candidate], Measurement]:
    """A ``measure`` function for :func:`select`: export the candidate (once) and run it on the target.

    ``use_project_exporter=False`` exports with the quick fallback (tests; say so in ``notes``).
    """
    from pathlib import Path

    from edge_compress.costmodel_export import FALLBACK, export_candidate
    from runners.base import RunRequest

    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)

    def measure(c: Candidate) -> Measurement:
        model, plan = c.build() if c.build else (None, None)
        path = wd / (c.id.replace("/", "__").replace("@", "_w") + ".onnx")
        if not path.exists():
            _, how = export_candidate(model, plan, c.calib_x, path, use_project=use_project_exporter)
            if how.startswith(FALLBACK) and notes is not None and how not in notes:
                notes.append(f"exported with the {how}")
        req = RunRequest(
            str(path),
            threads=threads,
            min_count=min_count,
            min_duration_s=min_duration_s,
            warmup=warmup,
            profile=profile,
            label=c.id,
        )
        return runner.run(req)

    return measure


# ---------------------------------------------------------------------------------------------
# reporting


def pareto_plot(res: SelectionResult, path: Any) -> Any:
    """Accuracy vs median latency / energy / model bytes, with each Pareto front, the budgets and
    the choice, as one PNG; measured and predicted points are marked differently."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("latency_ms", "median latency (ms)"),
        ("energy_mj", "energy / inference (mJ)"),
        ("model_bytes", "model bytes"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, (metric, label) in zip(axes, panels, strict=True):
        for basis, marker in (("measured", "o"), ("predicted", "x")):
            cs = [c for c in res.candidates if c.costs.basis == basis]
            ax.scatter(
                [c.costs.metric(metric) for c in cs],
                [c.accuracy for c in cs],
                marker=marker,
                label=f"{basis} ({len(cs)})",
                alpha=0.8,
            )
        front = res.pareto(metric)
        ax.step(
            [c.costs.metric(metric) for c in front],
            [c.accuracy for c in front],
            where="post",
            color="k",
            lw=1,
            label="Pareto front",
        )
        for b, limit in res.budgets.items():
            if b in BUDGET_METRICS and BUDGET_METRICS[b][0] == metric:
                ax.axvline(limit / BUDGET_METRICS[b][2], color="r", ls="--", label=f"budget {b}")
        if res.chosen is not None:
            ax.scatter(
                [res.chosen.costs.metric(metric)],
                [res.chosen.accuracy],
                s=160,
                facecolors="none",
                edgecolors="g",
                lw=2,
                label=f"chosen: {res.chosen.id}",
            )
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%, simulated)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
