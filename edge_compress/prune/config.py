"""Settings of the compiler's pruning stage (``edge-compress compile --prune``), without torch.

``--prune`` takes comma-separated ``key=value`` pairs::

    --prune flops=0.5                       group lasso to half the MACs, 6 fine-tune epochs
    --prune flops=0.5,method=l1             one-shot L1-norm filter pruning, then fine-tuned
    --prune method=l1,finetune=0            no training data needed (FLOPs budget from the profile)
    --prune flops=0.35,channel_multiple=16  kept channel counts rounded to multiples of 16
    --prune none                            ignore the profile's FLOPs budget

Keys: ``flops`` (ratio of the original MACs in (0, 1], also ``50%``), ``method`` (``group_lasso``
| ``l1``), ``finetune`` (fine-tune epochs), ``epochs`` (group lasso's penalized epochs, at most),
``channel_multiple`` (round kept channel counts to multiples of it; default: the profile's
``compute.channel_multiple``, else 1), ``min_keep`` (fraction of each layer's channels that always
stays), ``seed``. Without ``flops`` the budget comes from ``--budget flops=...`` or the profile's
``budgets.flops_ratio``; a profile with such a budget prunes even without ``--prune``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from edge_compress.errors import UserError

PRUNE_METHODS = ("group_lasso", "l1")
_METHOD_ALIASES = {
    "group_lasso": "group_lasso",
    "group-lasso": "group_lasso",
    "gl": "group_lasso",
    "l1": "l1",
}
_KEYS = ("flops", "method", "finetune", "epochs", "channel_multiple", "min_keep", "seed")
_KEY_ALIASES = {"flops_ratio": "flops", "multiple": "channel_multiple", "finetune_epochs": "finetune"}


@dataclass(frozen=True)
class PruneConfig:
    """Structured channel pruning before quantization. ``None`` fields are resolved by the compiler
    (:meth:`resolved`): the FLOPs budget from the request or the profile, the channel multiple from
    the profile."""

    flops: float | None = None
    method: str = "group_lasso"
    finetune_epochs: int = 6  # the library default (GroupLassoConfig), for both methods
    epochs: int = 8  # group lasso: penalized epochs at most (it stops once the budget is reached)
    channel_multiple: int | None = None
    min_keep_frac: float = 0.25
    seed: int = 0
    enabled: bool = True  # False: `--prune none`, the profile's FLOPs budget is not applied
    source: str = "--prune flops"  # where the budget came from (recorded in the manifest)

    def __post_init__(self) -> None:
        if self.flops is not None and not 0 < self.flops <= 1:
            raise UserError(
                f"--prune flops={self.flops:g}: the FLOPs budget is a ratio of the original MACs in (0, 1]."
            )
        if self.method not in PRUNE_METHODS:
            raise UserError(f"--prune method={self.method!r}: use group_lasso or l1.")
        if self.finetune_epochs < 0 or self.epochs < 1:
            raise UserError("--prune: finetune must be >= 0 and epochs >= 1.")
        if self.channel_multiple is not None and not 1 <= self.channel_multiple <= 256:
            raise UserError(
                f"--prune channel_multiple={self.channel_multiple}: use an integer from 1 to 256."
            )
        if not 0 < self.min_keep_frac <= 1:
            raise UserError(f"--prune min_keep={self.min_keep_frac:g}: use a fraction in (0, 1].")

    @property
    def needs_data(self) -> bool:
        """Group lasso trains; any method with fine-tune epochs trains."""
        return self.method == "group_lasso" or self.finetune_epochs > 0

    def resolved(self, flops: float | None, channel_multiple: int | None, source: str) -> PruneConfig:
        return replace(
            self,
            flops=self.flops if self.flops is not None else flops,
            channel_multiple=self.channel_multiple
            if self.channel_multiple is not None
            else (channel_multiple or 1),
            source=self.source if self.flops is not None else source,
        )

    def to_json(self) -> dict[str, Any]:
        """What changes the result (part of the artifact's request key)."""
        d = asdict(self)
        d.pop("enabled")
        d.pop("source")
        return d


def number_value(key: str, text: str, what: str) -> float:
    t = text.strip()
    try:
        return float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise UserError(f"{what} {key}={text!r}: expected a number.") from None


def int_value(key: str, text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise UserError(f"{what} {key}={text!r}: expected a whole number.") from None


def parse_pairs(text: str, what: str, keys: tuple[str, ...], aliases: dict[str, str]) -> dict[str, str]:
    """``"a=1,b=2"`` -> {"a": "1", "b": "2"} with known keys only (UserError naming the bad part)."""
    out: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise UserError(f"{what} {part!r}: expected KEY=VALUE ({', '.join(keys)}).")
        k, v = (s.strip() for s in part.split("=", 1))
        k = aliases.get(k.lower(), k.lower())
        if k not in keys:
            raise UserError(f"{what}: unknown key {k!r}; known: {', '.join(keys)}.")
        if k in out:
            raise UserError(f"{what}: {k} is given twice.")
        out[k] = v
    return out


def parse_prune(text: str | None, flops: float | None = None) -> PruneConfig | None:
    """``--prune TEXT`` and ``--flops RATIO`` -> a PruneConfig (None when neither is given)."""
    if text is None and flops is None:
        return None
    if text is not None and text.strip().lower() in ("none", "off", "no"):
        if flops is not None:
            raise UserError("--prune none and --flops contradict each other; give one of them.")
        return PruneConfig(enabled=False)
    pairs = parse_pairs(text or "", "--prune", _KEYS, _KEY_ALIASES)
    kw: dict[str, Any] = {}
    if "flops" in pairs:
        kw["flops"] = number_value("flops", pairs["flops"], "--prune")
    if flops is not None:
        if "flops" in kw and abs(kw["flops"] - flops) > 1e-12:
            raise UserError(
                f"--flops {flops:g} and --prune flops={kw['flops']:g} disagree; give one of them."
            )
        kw["flops"] = float(flops)
    if "method" in pairs:
        m = _METHOD_ALIASES.get(pairs["method"].lower())
        if m is None:
            raise UserError(f"--prune method={pairs['method']!r}: use group_lasso or l1.")
        kw["method"] = m
    if "finetune" in pairs:
        kw["finetune_epochs"] = int_value("finetune", pairs["finetune"], "--prune")
    if "epochs" in pairs:
        kw["epochs"] = int_value("epochs", pairs["epochs"], "--prune")
    if "channel_multiple" in pairs:
        kw["channel_multiple"] = int_value("channel_multiple", pairs["channel_multiple"], "--prune")
    if "min_keep" in pairs:
        kw["min_keep_frac"] = number_value("min_keep", pairs["min_keep"], "--prune")
    if "seed" in pairs:
        kw["seed"] = int_value("seed", pairs["seed"], "--prune")
    return PruneConfig(**kw, source="--flops" if flops is not None else "--prune flops")


def resolve_prune(
    cfg: PruneConfig | None, profile: Any, budget: dict[str, float] | None
) -> PruneConfig | None:
    """The pruning a compile request runs (None: none), its budget and channel multiple filled in.

    The FLOPs budget is ``--prune flops`` / ``--flops``, else ``flops_ratio`` of ``--budget`` (which
    replaces the profile's budgets, as for the quantization planner), else the profile's
    ``budgets.flops_ratio``. The channel multiple defaults to the profile's ``compute.channel_multiple``.
    """
    if cfg is not None and not cfg.enabled:
        return None
    if budget is not None:
        flops, source = budget.get("flops_ratio"), "--budget flops"
    else:
        flops, source = profile.budgets.flops_ratio, f"profile {profile.name} budgets.flops_ratio"
    multiple = getattr(profile.compute, "channel_multiple", None)
    if cfg is None:
        return (
            None
            if flops is None
            else PruneConfig(flops=float(flops), source=source).resolved(None, multiple, source)
        )
    if cfg.flops is None and flops is None:
        raise UserError(
            f"--prune needs a FLOPs budget: give flops=RATIO (or --flops RATIO) or --budget flops=RATIO; "
            f"profile {profile.name!r} sets no budgets.flops_ratio."
        )
    if cfg.flops is not None and budget is not None and flops is not None and abs(cfg.flops - flops) > 1e-12:
        raise UserError(
            f"{cfg.source}={cfg.flops:g} and --budget flops={flops:g} disagree; give one of them."
        )
    return cfg.resolved(None if flops is None else float(flops), multiple, source)
