"""Settings of the compiler's factorization stage (``edge-compress compile --factorize``), without torch.

``--factorize`` takes comma-separated ``key=value`` pairs, exactly one of ``energy``, ``params``
or ``flops``::

    --factorize energy=0.95            per layer, the smallest rank keeping 95% of the singular-value energy
    --factorize params=0.6             global rank selection: 60% of the weight parameters
    --factorize flops=0.7,how=channel  70% of the MACs, convolutions by channel SVD only
    --factorize energy=0.9,finetune=0  no fine-tuning (no training data needed)

``params`` and ``flops`` are ratios of the model entering the stage (after pruning when both run).
Layers where factorization would not save parameters and MACs are left as they are. Other keys:
``how`` (``auto``: spatial SVD for k x k Conv2d, channel SVD for other convs, SVD for Linear |
``spatial`` | ``channel``), ``finetune`` (epochs after factorizing; default 2), ``seed``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edge_compress.errors import UserError
from edge_compress.prune.config import int_value, number_value, parse_pairs

FACTORIZE_MODES = ("energy", "params", "flops")
HOW = ("auto", "spatial", "channel")
_KEYS = (*FACTORIZE_MODES, "how", "finetune", "seed")


@dataclass(frozen=True)
class FactorizeConfig:
    """Low-rank factorization before quantization: ranks by ``mode`` (energy | params | flops) at ``value``."""

    mode: str
    value: float
    how: str = "auto"
    finetune_epochs: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in FACTORIZE_MODES:
            raise UserError(f"--factorize {self.mode}=...: use energy, params or flops.")
        if not 0 < self.value <= 1:
            what = "an energy threshold" if self.mode == "energy" else "a ratio"
            raise UserError(f"--factorize {self.mode}={self.value:g}: {what} in (0, 1].")
        if self.how not in HOW:
            raise UserError(f"--factorize how={self.how!r}: use auto, spatial or channel.")
        if self.finetune_epochs < 0:
            raise UserError("--factorize finetune must be >= 0.")

    @property
    def needs_data(self) -> bool:
        return self.finetune_epochs > 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_factorize(text: str | None) -> FactorizeConfig | None:
    """``--factorize TEXT`` -> a FactorizeConfig (None when not given)."""
    if text is None:
        return None
    pairs = parse_pairs(text, "--factorize", _KEYS, {"finetune_epochs": "finetune"})
    modes = [k for k in FACTORIZE_MODES if k in pairs]
    if len(modes) != 1:
        raise UserError(
            "--factorize needs exactly one of energy=TAU, params=RATIO or flops=RATIO "
            f"(got {', '.join(modes) or 'none'})."
        )
    mode = modes[0]
    kw: dict[str, Any] = {"mode": mode, "value": number_value(mode, pairs[mode], "--factorize")}
    if "how" in pairs:
        kw["how"] = pairs["how"].lower()
    if "finetune" in pairs:
        kw["finetune_epochs"] = int_value("finetune", pairs["finetune"], "--factorize")
    if "seed" in pairs:
        kw["seed"] = int_value("seed", pairs["seed"], "--factorize")
    return FactorizeConfig(**kw)
