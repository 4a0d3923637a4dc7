"""FLOPs (MACs) of a model as a function of how many channels each channel group keeps.

The MACs of a Conv / Linear layer scale with the fraction of output channels it keeps (when it
produces a pruned group, or carries one or more as a depthwise passthrough, ``m`` output channels
per group channel with a channel multiplier ``m``) times the fraction of input channels it still
reads (when it consumes pruned groups, counting ``flatten_factor`` features per channel). The
total is therefore linear in each group's keep count, so the marginal MACs of one channel is
exact, which the budget greedy and the group-lasso Lagrangian both use.

This module also decides which groups can really be pruned: the graph's own analysis (grouped
convolutions, untraceable layouts, model inputs and outputs), plus checks that need the modules:
a batch norm must hold the group's channels where the graph says (its size covers the slice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_compress.errors import BudgetError, UserError
from edge_compress.graph import ChannelGroup, LayerInfo, ModelGraph


def group_label(g: ChannelGroup) -> str:
    """A human name for a channel group: its producers."""
    return "+".join(g.producers) if g.producers else f"group {g.id}"


def _is_grouped(li: LayerInfo) -> bool:
    return li.kind != "depthwise_conv" and li.groups > 1


def prunable_groups(graph: ModelGraph, model=None) -> tuple[list[ChannelGroup], dict[str, str]]:
    """(groups that can be pruned, {group label: reason} for the others).

    ``model`` (optional) lets the check see batch-norm sizes; without it only the graph is used.
    """
    info = {li.name: li for li in graph.layers}
    bn_sizes: dict[str, int] = {}
    if model is not None:
        for name, m in model.named_modules():
            nf = getattr(m, "num_features", None)
            if nf is not None:
                bn_sizes[name] = int(nf)
    ok: list[ChannelGroup] = []
    skipped: dict[str, str] = {}
    for g in graph.channel_groups:
        reason = "" if g.prunable else (g.reason or "the dependency analysis cannot follow these channels")
        if not reason:
            for p in g.producers:
                if _is_grouped(info[p]):
                    reason = f"producer {p!r} is a grouped convolution (groups={info[p].groups})"
            for c in g.consumers:
                li = info.get(c.layer)
                if li is not None and _is_grouped(li):
                    reason = f"consumer {c.layer!r} is a grouped convolution (groups={li.groups})"
            for d in g.passthrough:
                li = info[d]
                if li.out_channels % li.in_channels:
                    reason = f"depthwise layer {d!r} maps {li.in_channels} to {li.out_channels} channels"
                elif not any(c.layer == d for c in g.consumers):
                    reason = f"depthwise layer {d!r} carries these channels at an unknown offset"
            for bn in g.batchnorms:
                for at in g.bn_positions(bn):
                    end = at.offset + g.channels * at.flatten_factor
                    if bn in bn_sizes and bn_sizes[bn] < end:
                        reason = (
                            f"batch norm {bn!r} normalizes {bn_sizes[bn]} channels, fewer than the "
                            f"{end} the analysis places this group's channels at"
                        )
        if reason:
            skipped[group_label(g)] = reason
        else:
            ok.append(g)
    return ok, skipped


@dataclass
class FlopsModel:
    """MACs of every layer given per-group keep counts (groups not listed keep everything)."""

    graph: ModelGraph
    groups: list[ChannelGroup]  # prunable groups, in graph order
    skipped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from edge_compress.graph import group_slices

        self.gid = [g.id for g in self.groups]
        self.size = {g.id: g.channels for g in self.groups}
        # layer -> [(group, output channels per group channel)]: the groups whose keep counts scale its output
        self._out: dict[str, list[tuple[int, int]]] = {}
        self._in: dict[str, list[tuple[int, int]]] = {}  # layer -> [(group, features per channel)]
        for g in self.groups:
            for sl in group_slices(self.graph, g):
                if sl.role in ("producer", "passthrough"):
                    self._out.setdefault(sl.layer, []).append((g.id, sl.width))
                elif sl.role == "consumer":
                    self._in.setdefault(sl.layer, []).append((g.id, sl.width))
        self.total = float(self.graph.total_macs)

    @classmethod
    def from_graph(cls, graph: ModelGraph, model=None) -> FlopsModel:
        ok, skipped = prunable_groups(graph, model)
        return cls(graph, ok, skipped)

    def full_counts(self) -> dict[int, int]:
        return dict(self.size)

    def _fractions(self, li: LayerInfo, n: dict[int, int]) -> tuple[float, float]:
        segs_out = self._out.get(li.name, [])
        removed_out = sum((self.size[g] - n.get(g, self.size[g])) * w for g, w in segs_out)
        out_f = (li.out_channels - removed_out) / li.out_channels
        if li.kind == "depthwise_conv":
            return out_f, 1.0
        segs = self._in.get(li.name, [])
        if not segs:
            return out_f, 1.0
        removed = sum((self.size[s] - n.get(s, self.size[s])) * ff for s, ff in segs)
        return out_f, (li.in_channels - removed) / li.in_channels

    def layer_macs(self, n: dict[int, int]) -> dict[str, float]:
        out = {}
        for li in self.graph.layers:
            fo, fi = self._fractions(li, n)
            out[li.name] = li.macs * fo * fi
        return out

    def macs(self, n: dict[int, int]) -> float:
        return float(sum(self.layer_macs(n).values()))

    def ratio(self, n: dict[int, int]) -> float:
        return self.macs(n) / self.total

    def marginal(self, n: dict[int, int]) -> dict[int, float]:
        """MACs removed by dropping one more channel of each group (exact: MACs are linear per group)."""
        out = {g: 0.0 for g in self.gid}
        for li in self.graph.layers:
            fo, fi = self._fractions(li, n)
            for g, w in self._out.get(li.name, []):
                out[g] += li.macs * fi * w / li.out_channels
            if li.kind != "depthwise_conv":
                for s, ff in self._in.get(li.name, []):
                    out[s] += li.macs * fo * ff / li.in_channels
        return out

    def polynomial(self) -> tuple[float, dict[int, float], dict[tuple[int, int], float]]:
        """The MACs as a polynomial of the keep counts: ``(c, lin, quad)`` with
        ``macs(n) = c + sum_g lin[g] n_g + sum_(g, h) quad[g, h] n_g n_h`` (``g <= h``).

        Each layer's MACs are its output fraction (linear in the groups it produces or carries)
        times its input fraction (linear in the groups it consumes), so the total is at most
        quadratic, with cross terms only between a layer's producer and consumer groups.
        """
        const = 0.0
        lin: dict[int, float] = {}
        quad: dict[tuple[int, int], float] = {}
        for li in self.graph.layers:
            if not li.macs:
                continue
            a0, a = 1.0, {}
            for g, w in self._out.get(li.name, []):
                a0 -= self.size[g] * w / li.out_channels
                a[g] = a.get(g, 0.0) + w / li.out_channels
            b0, b = 1.0, {}
            if li.kind != "depthwise_conv":
                for s, ff in self._in.get(li.name, []):
                    b0 -= self.size[s] * ff / li.in_channels
                    b[s] = b.get(s, 0.0) + ff / li.in_channels
            m = float(li.macs)
            const += m * a0 * b0
            for g, v in a.items():
                lin[g] = lin.get(g, 0.0) + m * v * b0
            for g, v in b.items():
                lin[g] = lin.get(g, 0.0) + m * v * a0
            for g, va in a.items():
                for h, vb in b.items():
                    key = (min(g, h), max(g, h))
                    quad[key] = quad.get(key, 0.0) + m * va * vb
        return const, lin, quad

    def min_counts(self) -> dict[int, int]:
        return {g: 1 for g in self.gid}

    def min_ratio(self) -> float:
        """The smallest FLOPs ratio reachable: every prunable group keeps one channel."""
        return self.ratio(self.min_counts())

    def check_budget(
        self,
        budget: float,
        floor: dict[int, int] | None = None,
        frac: float | None = None,
        multiple: int = 1,
        tolerance: float = 0.0,
    ) -> None:
        """UserError unless ``budget`` is reachable (with every group keeping ``floor[g]`` channels,
        and with counts in multiples of ``multiple``, to within ``tolerance`` above the budget)."""
        if not 0 < budget <= 1:
            raise UserError(f"FLOPs budget {budget:g} must be a ratio of the original MACs in (0, 1].")
        if not self.groups:
            why = "; ".join(f"{k}: {v}" for k, v in self.skipped.items())
            raise UserError(f"no channel group of this model can be pruned ({why}).")
        lo = self.min_ratio()
        if budget < lo:
            raise BudgetError(
                f"FLOPs budget {budget:g} is below the smallest network reachable by channel pruning "
                f"(every prunable group keeps one channel): {lo:.4f} of the original MACs; ask for at least {lo:.4f}."
            )
        if floor is not None and budget < self.ratio(floor):
            lo = self.ratio(floor)
            raise BudgetError(
                f"FLOPs budget {budget:g} is below {lo:.4f}, the smallest network when every prunable group keeps "
                f"{frac:g} of its channels (min_keep_frac); ask for at least {lo:.4f} or lower min_keep_frac."
            )
        if multiple > 1:
            base = floor or self.min_counts()
            least = {g: allowed_counts(self.size[g], base.get(g, 1), multiple)[0] for g in self.gid}
            lo = self.ratio(least)
            if budget * (1 + tolerance) < lo:
                raise BudgetError(
                    f"FLOPs budget {budget:g} is below {lo:.4f}, the smallest network whose kept channel counts are "
                    f"multiples of {multiple} (every prunable group at its fewest allowed channels); ask for at "
                    f"least {lo / (1 + tolerance):.4f} (within {tolerance:.0%}) or lower channel_multiple."
                )


def min_keep_counts(fm: FlopsModel, frac: float) -> dict[int, int]:
    """Per group: the fewest channels it may keep, ``ceil(frac * channels)`` (at least one)."""
    import math

    return {g: max(1, math.ceil(frac * fm.size[g] - 1e-9)) for g in fm.gid}


def greedy_select(
    fm: FlopsModel,
    scores: dict[int, np.ndarray],
    budget: float,
    start: dict[int, np.ndarray] | None = None,
    min_keep: int | dict[int, int] = 1,
    cost_power: float = 1.0,
) -> dict[int, np.ndarray]:
    """Remove channels by ascending ``score / marginal MACs ** cost_power`` until the FLOPs ratio is <= budget.

    ``scores[g]`` holds one importance per channel of group ``g`` (comparable across groups);
    ``start[g]`` is a boolean mask of channels still kept (default: all). Returns kept masks.
    """
    keep = {
        g: (start[g].copy() if start is not None and g in start else np.ones(fm.size[g], bool))
        for g in fm.gid
    }
    n = {g: int(k.sum()) for g, k in keep.items()}
    while fm.ratio(n) > budget:
        marg = fm.marginal(n)
        best, best_p, best_c = None, np.inf, -1
        for g in fm.gid:
            if n[g] <= (min_keep.get(g, 1) if isinstance(min_keep, dict) else min_keep) or marg[g] <= 0:
                continue
            s = np.where(keep[g], scores[g], np.inf)
            c = int(np.argmin(s))
            p = s[c] / marg[g] ** cost_power
            if p < best_p:
                best, best_p, best_c = g, p, c
        if best is None:
            break
        keep[best][best_c] = False
        n[best] -= 1
    return keep


def greedy_restore(
    fm: FlopsModel, scores: dict[int, np.ndarray], budget: float, keep: dict[int, np.ndarray]
) -> tuple[dict[int, np.ndarray], int]:
    """Add dropped channels back by descending ``score / marginal MACs`` while the ratio stays <= budget."""
    keep = {g: k.copy() for g, k in keep.items()}
    n = {g: int(k.sum()) for g, k in keep.items()}
    added = 0
    while True:
        cur = fm.macs(n)
        marg = fm.marginal(n)
        best, best_p, best_c = None, -np.inf, -1
        for g in fm.gid:
            if n[g] >= fm.size[g]:
                continue
            # adding a channel to g costs the marginal MACs at n[g] + 1 (linear: same slope)
            if (cur + marg[g]) / fm.total > budget:
                continue
            s = np.where(keep[g], -np.inf, scores[g])
            c = int(np.argmax(s))
            p = s[c] / max(marg[g], 1e-12)
            if p > best_p:
                best, best_p, best_c = g, p, c
        if best is None:
            return keep, added
        keep[best][best_c] = True
        n[best] += 1
        added += 1


def snap_to_budget(
    fm: FlopsModel,
    alive: dict[int, np.ndarray],
    alive_score: dict[int, np.ndarray],
    dead_score: dict[int, np.ndarray],
    budget: float,
    tolerance: float,
    cost_power: float = 0.0,
    min_keep: int | dict[int, int] = 1,
) -> tuple[dict[int, np.ndarray], str]:
    """Adjust the live channel set so its FLOPs ratio lands in [budget * (1 - tolerance), budget].

    Above the budget: drop live channels by ascending ``alive_score / MACs ** cost_power``. Below: restore dropped
    channels (highest ``dead_score`` first, -inf = never restorable) that fit; when the cheapest
    fitting ones do not suffice (coarse groups: one channel of a thin early layer can cost 10% of the
    MACs), restore one costlier channel and drop the weakest live ones to pay for it.
    """
    n = lambda k: {g: int(v.sum()) for g, v in k.items()}  # noqa: E731
    ratio = fm.ratio(n(alive))
    lo = budget * (1 - tolerance)
    if ratio > budget:
        keep = greedy_select(fm, alive_score, budget, start=alive, cost_power=cost_power, min_keep=min_keep)
        extra = sum(int(alive[g].sum() - keep[g].sum()) for g in keep)
        note = (
            f"the live channels gave FLOPs ratio {ratio:.3f} > budget {budget:g} after training: "
            f"pruned {extra} more channels by global ranking"
        )
        if fm.ratio(n(keep)) >= lo:
            return keep, note
        # a coarse channel overshot below the band: fill back up from the ranking
        keep, _ = _fill(
            fm,
            keep,
            alive_score,
            {g: np.where(alive[g], alive_score[g], -np.inf) for g in alive},
            budget,
            lo,
            cost_power,
            min_keep,
        )
        return keep, note + f", then re-filled to {fm.ratio(n(keep)):.3f}"
    if ratio >= lo:
        return alive, ""
    keep = _fill(fm, alive, alive_score, dead_score, budget, lo, cost_power, min_keep)[0]
    added = sum(int((keep[g] & ~alive[g]).sum()) for g in keep)
    removed = sum(int((alive[g] & ~keep[g]).sum()) for g in keep)
    return keep, (
        f"the penalty overshot to FLOPs ratio {ratio:.3f} < budget {budget:g}: restored {added} most recently "
        f"dropped channels with their last live weights"
        + (f" and dropped {removed} weak live ones" if removed else "")
        + f" (now {fm.ratio(n(keep)):.3f})"
    )


def _fill(
    fm: FlopsModel,
    start: dict[int, np.ndarray],
    alive_score: dict[int, np.ndarray],
    dead_score: dict[int, np.ndarray],
    budget: float,
    lo: float,
    cost_power: float,
    min_keep: int | dict[int, int],
) -> tuple[dict[int, np.ndarray], int]:
    """Restore channels (by ``dead_score``) while they fit; if still below ``lo``, restore one costlier
    channel and drop the weakest others (by ``alive_score``) to pay for it."""
    n = lambda k: {g: int(v.sum()) for g, v in k.items()}  # noqa: E731
    alive = start
    keep, added = greedy_restore(fm, dead_score, budget, alive)
    if fm.ratio(n(keep)) < lo:
        best: tuple[float, dict[int, np.ndarray]] | None = None
        for g in fm.gid:
            cand = np.where(keep[g], -np.inf, dead_score[g])
            if not np.isfinite(cand).any():
                continue
            trial = {h: v.copy() for h, v in keep.items()}
            trial[g][int(np.argmax(cand))] = True
            protect = {h: np.full(fm.size[h], np.inf) if h == g else alive_score[h] for h in trial}
            trial = greedy_select(fm, protect, budget, start=trial, cost_power=cost_power, min_keep=min_keep)
            trial, _ = greedy_restore(fm, dead_score, budget, trial)
            r = fm.ratio(n(trial))
            lost = sum(float(alive_score[h][keep[h] & ~trial[h]].sum()) for h in trial)
            if lo <= r <= budget and (best is None or lost < best[0]):
                best = (lost, trial)
        if best is not None:
            keep = best[1]
    return keep, added


def allowed_counts(size: int, floor: int, multiple: int) -> list[int]:
    """The kept-channel counts a group of ``size`` channels may take: the multiples of ``multiple``
    from ``floor`` up, and the full count; any count from ``floor`` up when the group is no wider
    than ``multiple`` (a block the runtime pads anyway)."""
    floor = max(1, min(floor, size))
    if multiple <= 1 or size <= multiple:
        return list(range(floor, size + 1))
    return [k for k in range(multiple, size, multiple) if k >= floor] + [size]


FILL_VALUE = 1e-3  # value of a channel outside the pre-aligned set (a whole group's kept set is worth 1)


def _prefix_values(keep: np.ndarray, score: np.ndarray, fill: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(channel order, value of keeping the first k channels for k = 0..C).

    The channels of the pre-aligned set come first (by descending ``score``), worth their share
    of the set's total score, so every group's set is worth 1 whatever its width; the others
    follow (by descending ``fill``), worth ``FILL_VALUE / C`` each: they only fill a chunk up.
    """
    c = len(keep)
    kept, drop = np.flatnonzero(keep), np.flatnonzero(~keep)
    kept = kept[np.argsort(-score[kept], kind="stable")]
    drop = drop[np.argsort(-fill[drop], kind="stable")]
    s = np.clip(np.nan_to_num(score[kept], nan=0.0, posinf=0.0), 0.0, None)
    share = s / s.sum() if s.sum() > 0 else np.full(len(kept), 1.0 / max(1, len(kept)))
    value = np.concatenate([share, np.full(len(drop), FILL_VALUE / c)])
    return np.concatenate([kept, drop]), np.concatenate([[0.0], np.cumsum(value)])


def choose_counts(
    fm: FlopsModel,
    allowed: dict[int, list[int]],
    value: dict[int, np.ndarray],
    lo: float,
    hi: float,
    closest_to: float | None = None,
) -> dict[int, int] | None:
    """Keep counts (one of ``allowed[g]`` per group) maximizing ``sum_g value[g][n_g]`` with the
    FLOPs ratio in ``[lo, hi]``, by a small integer program (None when no choice fits).

    With ``closest_to``, the band is ignored: the counts minimize ``|ratio - closest_to|`` (the value
    only breaks ties). The FLOPs are exact: one binary per (group, count), and for every pair of
    groups meeting in a layer (producer and consumer) a continuous variable per pair of counts,
    tied to the binaries by its marginals, which carries the bilinear term.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    const, lin, quad = fm.polynomial()
    total = fm.total
    col: dict[tuple[int, int], int] = {}
    for g in fm.gid:
        for j in range(len(allowed[g])):
            col[g, j] = len(col)
    pairs = [(g, h) for (g, h) in quad if g != h]
    pcol: dict[tuple[int, int], int] = {}
    nvar = len(col)
    for g, h in pairs:
        pcol[g, h] = nvar
        nvar += len(allowed[g]) * len(allowed[h])
    t_col = nvar if closest_to is not None else None
    nvar += t_col is not None

    rows: list[np.ndarray] = []
    rlo: list[float] = []
    rhi: list[float] = []

    def row() -> np.ndarray:
        r = np.zeros(nvar)
        rows.append(r)
        return r

    for g in fm.gid:  # one count per group
        r = row()
        r[[col[g, j] for j in range(len(allowed[g]))]] = 1
        rlo.append(1)
        rhi.append(1)
    for g, h in pairs:  # y[g, j, h, l] = x[g, j] x[h, l] through its marginals
        kg, kh, base = len(allowed[g]), len(allowed[h]), pcol[g, h]
        for j in range(kg):
            r = row()
            r[base + j * kh : base + (j + 1) * kh] = 1
            r[col[g, j]] = -1
            rlo.append(0)
            rhi.append(0)
        for m in range(kh):
            r = row()
            r[base + m : base + kg * kh : kh] = 1
            r[col[h, m]] = -1
            rlo.append(0)
            rhi.append(0)
    flops = np.zeros(nvar)  # the FLOPs ratio minus its constant part
    for g in fm.gid:
        sq = quad.get((g, g), 0.0)
        for j, k in enumerate(allowed[g]):
            flops[col[g, j]] = (lin.get(g, 0.0) * k + sq * k * k) / total
    for g, h in pairs:
        kh = len(allowed[h])
        for j, a in enumerate(allowed[g]):
            for m, b in enumerate(allowed[h]):
                flops[pcol[g, h] + j * kh + m] = quad[g, h] * a * b / total
    c0 = const / total
    objective = np.zeros(nvar)
    for g in fm.gid:
        for j, k in enumerate(allowed[g]):
            objective[col[g, j]] = -float(value[g][k])
    if t_col is None:
        rows.append(flops)
        rlo.append(lo - c0)
        rhi.append(hi - c0)
    else:  # t >= |ratio - target|; minimize t first, the value only breaks ties
        above, below = flops.copy(), flops.copy()
        above[t_col], below[t_col] = -1, 1
        rows += [above, below]
        rlo += [-np.inf, closest_to - c0]
        rhi += [closest_to - c0, np.inf]
        objective *= 1e-6
        objective[t_col] = 1
    integrality = np.zeros(nvar)
    integrality[: len(col)] = 1
    upper = np.ones(nvar)
    if t_col is not None:
        upper[t_col] = np.inf
    res = milp(
        objective,
        integrality=integrality,
        bounds=Bounds(np.zeros(nvar), upper),
        constraints=LinearConstraint(np.array(rows), np.array(rlo), np.array(rhi)),
        options={"time_limit": 60, "mip_rel_gap": 1e-9},
    )
    if res.x is None:
        return None
    return {g: allowed[g][int(np.argmax([res.x[col[g, j]] for j in range(len(allowed[g]))]))] for g in fm.gid}


def align_keep(
    fm: FlopsModel,
    keep: dict[int, np.ndarray],
    scores: dict[int, np.ndarray],
    budget: float,
    multiple: int,
    tolerance: float = 0.05,
    *,
    fill_scores: dict[int, np.ndarray] | None = None,
    min_keep: int | dict[int, int] = 1,
) -> tuple[dict[int, np.ndarray], str, dict[str, list[int]]]:
    """Choose every group's kept-channel count among the multiples of ``multiple`` (see
    :func:`allowed_counts`) so that the FLOPs ratio lands in ``[budget * (1 - tolerance), budget]``.

    ``keep`` is the unaligned choice (training's live set, or the L1 greedy's); its channels rank
    first within their group (by ``scores``), then the others (by ``fill_scores``, default
    ``scores``), and a group keeping ``k`` channels keeps the first ``k``. The counts maximize the
    share of each group's pre-aligned score that stays, summed over groups (so a narrow layer
    losing half its channels costs more than a wide one losing a few), under the FLOPs band,
    solved exactly as a small integer program over all groups at once. When no aligned choice
    lands in the band (the multiple is too coarse for the budget), the choice closest to the
    budget is taken and the note says so.

    Returns (kept masks, note, {group: [count before, count after]} for the groups rounded).

    Runtimes block channels (onnxruntime's NCHWc convolutions work on blocks of 8 floats with
    AVX2, 16 with AVX-512): a layer with 45 channels runs like one with 48 plus repacking, so
    unaligned pruning buys far less latency than its FLOPs say.
    """
    if multiple <= 1:
        return keep, "", {}
    fill_scores = fill_scores if fill_scores is not None else scores
    floor = min_keep if isinstance(min_keep, dict) else {g: min_keep for g in fm.gid}
    allowed = {g: allowed_counts(fm.size[g], floor.get(g, 1), multiple) for g in fm.gid}
    order, value = {}, {}
    for g in fm.gid:
        order[g], value[g] = _prefix_values(keep[g], scores[g], fill_scores[g])
    lo, hi = budget * (1 - tolerance), budget
    eps = 1e-9  # keep the solver's feasibility tolerance inside the band
    counts = choose_counts(fm, allowed, value, lo + eps, hi - eps)
    outside = counts is None
    if outside:
        counts = choose_counts(fm, allowed, value, lo, hi, closest_to=budget)
        if counts is None:
            raise RuntimeError("the channel-count integer program found no solution")
    out = {}
    for g in fm.gid:
        mask = np.zeros(fm.size[g], bool)
        mask[order[g][: counts[g]]] = True
        out[g] = mask
    labels = {g.id: group_label(g) for g in fm.groups}
    before = {g: int(keep[g].sum()) for g in fm.gid}
    rounded = {labels[g]: [before[g], counts[g]] for g in fm.gid if counts[g] != before[g]}
    r, r0 = fm.ratio(counts), fm.ratio(before)
    note = (
        f"channel counts chosen among multiples of {multiple} (integer program over {len(fm.gid)} groups): "
        f"FLOPs ratio {r0:.3f} -> {r:.3f} for budget {budget:g}"
    )
    if rounded:
        note += "; rounded " + ", ".join(f"{k} {a}->{b}" for k, (a, b) in rounded.items())
    if outside:
        note += (
            f" (no choice of multiples of {multiple} lands in [{lo:.3f}, {hi:g}]: took the closest, "
            f"{r / budget - 1:+.1%} of the budget)"
        )
    return out, note, rounded
