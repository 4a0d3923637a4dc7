"""Bit allocation as an integer linear program (HAWQ-V3 style), solved with HiGHS (scipy.optimize.milp).

Binary ``x[u, b]`` for every allocation unit u (a layer, or a precision group whose layers must
share bits) and candidate bit-width b; exactly one choice per unit; minimise the summed
sensitivity ``sum_u sum_{i in u} Omega_i(b)`` subject to linear budgets
``sum coeff[(layer, b)] * x <= limit`` (model bytes, BOPs, and any :class:`Constraint` a cost
model adds: latency, energy ...). An impossible budget raises :class:`BudgetError` naming the
budget and the smallest value any allocation can reach.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_compress.errors import BudgetError, UserError


@dataclass(frozen=True)
class Constraint:
    """A linear budget: ``sum over layers of coeffs[(layer, chosen bits)] <= limit``.

    Layers missing from ``coeffs`` contribute 0. ``unit`` is used in messages (e.g. " bytes").
    ``offset``: the fixed part of the budgeted quantity that no choice changes (float layers, a
    file's container), already subtracted from ``limit``; messages add it back so they speak of the
    user's budget.
    """

    name: str
    coeffs: Mapping[tuple[str, int], float]
    limit: float
    unit: str = ""
    offset: float = 0.0

    def usage(self, bits: Mapping[str, int]) -> float:
        return float(sum(self.coeffs.get((n, b), 0.0) for n, b in bits.items()))


@dataclass
class Allocation:
    bits: dict[str, int]
    objective: float
    usage: dict[str, float] = field(default_factory=dict)  # constraint name -> value of the chosen allocation
    limits: dict[str, float] = field(default_factory=dict)
    solve_s: float = 0.0
    units: list[list[str]] = field(default_factory=list)

    def binding(self, rel: float = 0.02) -> list[str]:
        """Constraints within ``rel`` of their limit."""
        return [k for k, v in self.usage.items() if v >= self.limits[k] * (1 - rel)]


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.4g}"


def allocation_units(
    options: Mapping[str, Sequence[int]], groups: Sequence[Sequence[str]] = ()
) -> list[list[str]]:
    """Precision groups (restricted to layers in ``options``) first, then the remaining layers alone."""
    seen: set[str] = set()
    units: list[list[str]] = []
    for g in groups:
        members = [n for n in g if n in options and n not in seen]
        if members:
            units.append(members)
            seen.update(members)
    units += [[n] for n in options if n not in seen]
    return units


def unit_bits(unit: Sequence[str], options: Mapping[str, Sequence[int]]) -> list[int]:
    common = set(options[unit[0]])
    for n in unit[1:]:
        common &= set(options[n])
    if not common:
        raise UserError(
            f"layers {', '.join(repr(n) for n in unit)} must share a precision but have no bit-width in common "
            f"({'; '.join(f'{n}: {sorted(options[n])}' for n in unit)})."
        )
    return sorted(common, reverse=True)


def _describe(bits: Mapping[str, int]) -> str:
    counts: dict[int, int] = {}
    for b in bits.values():
        counts[b] = counts.get(b, 0) + 1
    if len(counts) == 1:
        return f"every layer at int{next(iter(counts))}"
    return " and ".join(
        f"{c} layer{'s' if c > 1 else ''} at int{b}" for b, c in sorted(counts.items(), reverse=True)
    )


def min_usage(
    constraint: Constraint, options: Mapping[str, Sequence[int]], groups: Sequence[Sequence[str]] = ()
) -> tuple[float, dict[str, int]]:
    """Smallest value of one constraint over all allocations (separable: per unit minimum) and its argmin."""
    total, choice = 0.0, {}
    for unit in allocation_units(options, groups):
        best = min(
            unit_bits(unit, options), key=lambda b: (sum(constraint.coeffs.get((n, b), 0.0) for n in unit), b)
        )
        total += sum(constraint.coeffs.get((n, best), 0.0) for n in unit)
        choice.update({n: best for n in unit})
    return total, choice


def allocate_bits(
    options: Mapping[str, Sequence[int]],
    cost: Mapping[tuple[str, int], float],
    constraints: Sequence[Constraint] = (),
    groups: Sequence[Sequence[str]] = (),
    *,
    profile: str = "",
    note: str = "",
    time_limit_s: float = 60.0,
) -> Allocation:
    """Minimise ``sum cost[(layer, bits)]`` with one bit-width per unit under ``constraints``.

    ``options``: candidate bits per layer; ``groups``: layers that must share bits. ``profile`` and
    ``note`` (e.g. "depthwise_conv layers are int8-only on this profile") complete the message of
    the :class:`BudgetError` raised when a budget is below what any allocation reaches.
    """
    return allocate_top_k(
        options, cost, constraints, groups, k=1, profile=profile, note=note, time_limit_s=time_limit_s
    )[0]


def allocate_top_k(
    options: Mapping[str, Sequence[int]],
    cost: Mapping[tuple[str, int], float],
    constraints: Sequence[Constraint] = (),
    groups: Sequence[Sequence[str]] = (),
    *,
    k: int = 5,
    profile: str = "",
    note: str = "",
    time_limit_s: float = 60.0,
) -> list[Allocation]:
    """The ``k`` best distinct allocations (fewer when fewer exist), best first: each solve adds a
    no-good cut excluding the allocations already found."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    t0 = time.perf_counter()
    units = allocation_units(options, groups)
    choices = [unit_bits(u, options) for u in units]
    for c in constraints:  # separable lower bound: exact smallest value of each budget alone
        low, argmin = min_usage(c, options, groups)
        if low > c.limit * (1 + 1e-12) + 1e-9:
            where = f"the {profile} profile" if profile else "the allowed bit-widths"
            extra = f"; {note}" if note else ""
            raise BudgetError(
                f"budget {c.name}={_fmt(c.limit + c.offset)} is below the smallest plan {where} allows "
                f"({_fmt(low + c.offset)}{c.unit} with {_describe(argmin)}{extra})."
            )
    var: list[tuple[int, int]] = [(u, b) for u, bs in enumerate(choices) for b in bs]
    n_var = len(var)
    raw = np.array([sum(cost[(n, b)] for n in units[u]) for u, b in var], dtype=np.float64)
    if not np.all(np.isfinite(raw)):
        bad = next(var[i] for i in range(n_var) if not np.isfinite(raw[i]))
        raise UserError(f"layer {units[bad[0]][0]!r}: sensitivity at {bad[1]} bits is not finite.")
    # conditioning: shift each unit's costs to start at 0 and scale the spread to ~1; a tiny
    # preference for more bits breaks exact ties deterministically
    unit_of = np.array([u for u, _ in var])
    c = raw.copy()
    for u in range(len(units)):
        c[unit_of == u] -= raw[unit_of == u].min()
    scale = float(c.max()) if c.max() > 0 else 1.0
    c = c / scale - 1e-12 * np.array([b for _, b in var])
    a_eq = np.zeros((len(units), n_var))
    a_eq[unit_of, np.arange(n_var)] = 1.0
    rows = [LinearConstraint(a_eq, 1, 1)]
    if constraints:
        a_ub = np.array(
            [[sum(con.coeffs.get((n, b), 0.0) for n in units[u]) for u, b in var] for con in constraints]
        )
        lims = np.array([con.limit for con in constraints], dtype=np.float64)
        norm = np.maximum(np.abs(a_ub).max(axis=1), 1e-300)
        rows.append(LinearConstraint(a_ub / norm[:, None], -np.inf, lims / norm))
    found: list[Allocation] = []
    cuts: list[np.ndarray] = []
    for _ in range(max(k, 1)):
        extra_rows = [LinearConstraint(np.array(cuts), -np.inf, len(units) - 1)] if cuts else []
        res = milp(
            c,
            integrality=np.ones(n_var),
            bounds=Bounds(0, 1),
            constraints=rows + extra_rows,
            options={"time_limit": time_limit_s, "mip_rel_gap": 1e-9},
        )
        if res.x is None:
            if found:
                break
            names = " and ".join(f"{con.name}={_fmt(con.limit + con.offset)}" for con in constraints)
            raise BudgetError(
                f"budgets {names} cannot be met together by any allocation of the allowed bit-widths "
                f"(each alone is reachable); relax one of them."
            )
        x = np.round(res.x)
        cuts.append((x > 0.5).astype(np.float64))
        best: dict[str, int] = {}
        for i in np.flatnonzero(x > 0.5):
            u, b = var[i]
            best.update({n: b for n in units[u]})
        usage = {con.name: con.usage(best) for con in constraints}
        for con in constraints:  # guard against solver tolerances
            if usage[con.name] > con.limit * (1 + 1e-6) + 1e-6:
                raise BudgetError(
                    f"budget {con.name}={_fmt(con.limit + con.offset)}: the solver returned "
                    f"{_fmt(usage[con.name] + con.offset)}{con.unit}."
                )
        found.append(
            Allocation(
                {n: best[n] for n in options},
                float(sum(cost[(n, b)] for n, b in best.items())),
                usage,
                {con.name: con.limit for con in constraints},
                time.perf_counter() - t0,
                units,
            )
        )
    return found
