"""CompressionPlan: per-layer decisions keyed by the layer's qualified name, with the reasons.

A plan says, for each quantizable layer, the weight and activation bit-widths (None = float),
the output channels kept by structured pruning, and the rank of a low-rank factorization; what
the compiler predicted (bytes, noise power, accuracy drop) and why it decided so travel with it.
It round-trips through JSON (``plan.json`` next to the exported model) and hashes stably, so an
artifact id can include it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_compress.errors import UserError

if TYPE_CHECKING:
    from edge_compress.graph import LayerInfo, ModelGraph

PLAN_VERSION = 1


@dataclass
class LayerDecision:
    name: str
    kind: str = "conv"  # conv | depthwise_conv | linear
    weight_bits: int | None = 8  # None keeps the weights in float
    act_bits: int | None = 8  # bits of this layer's input activation; None keeps it float
    per_channel: bool = True
    weight_clip: str = "mse"  # minmax | mse: how the per-channel weight range is chosen
    keep_channels: list[int] | None = None  # output channels kept by pruning (None = all)
    rank: int | None = None  # low-rank factorization rank (None = not factorized)
    factorization: str | None = None  # svd (Linear) | spatial | channel (Conv)
    sensitivity: dict[str, float] = field(default_factory=dict)  # e.g. {"4": omega4, "8": omega8}
    predicted: dict[str, float] = field(default_factory=dict)  # e.g. {"noise_power": ..., "bytes": ...}
    why: str = ""
    fallback: str | None = None  # set when an exporter could not honour the decision

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LayerDecision:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"plan layer {d.get('name', '?')!r}: unknown field(s) {sorted(unknown)}.")
        return cls(**d)


@dataclass
class CompressionPlan:
    model: str
    profile: str
    layers: dict[str, LayerDecision]
    method: str = "uniform"
    budget: dict[str, float] = field(default_factory=dict)
    predicted: dict[str, float] = field(default_factory=dict)
    activation_calibration: str = "mse"  # minmax | percentile | mse
    groups: list[list[str]] = field(default_factory=list)  # precision groups honoured by the plan
    # empirical bias correction of the quantized layers (edge_compress.quant.fakequant.bias_deltas)
    bias_correction: bool = True
    # how weights are rounded on their grid: "gptq" (error-compensating, edge_compress.quant.rounding)
    # or "nearest"; plan files written before the field existed were rounded to nearest
    weight_rounding: str = "gptq"
    notes: list[str] = field(default_factory=list)
    version: int = PLAN_VERSION
    # pruning / factorization applied before quantization (the layers above are those of the
    # transformed model): {"prune": {"method", "flops_budget", "kept": {layer: [channels]}, ...},
    # "factorize": {"layers": {layer: {"rank", "how", "into"}}, ...}}
    transforms: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def uniform(
        cls,
        graph: ModelGraph,
        model: str,
        profile: str,
        weight_bits: int | None = 8,
        act_bits: int | None = 8,
    ) -> CompressionPlan:
        layers = {
            li.name: LayerDecision(li.name, li.kind, weight_bits, act_bits, why=f"uniform {weight_bits}-bit")
            for li in graph.layers
        }
        return cls(
            model, profile, layers, method=f"uniform-w{weight_bits}a{act_bits}", groups=graph.precision_groups
        )

    def bits(self) -> dict[str, int | None]:
        return {n: d.weight_bits for n, d in self.layers.items()}

    # ------------------------------------------------------------------ cost
    def layer_bytes(self, li: LayerInfo) -> float:
        """Stored bytes of one layer's parameters under this plan (weights, scales, bias)."""
        d = self.layers.get(li.name)
        bits = 32 if d is None or d.weight_bits is None else d.weight_bits
        n_w = li.weight_params
        out_c = li.out_channels
        if d is not None and d.keep_channels is not None:
            frac = len(d.keep_channels) / max(1, li.out_channels)
            n_w = int(round(n_w * frac))
            out_c = len(d.keep_channels)
        if d is not None and d.rank is not None:
            n_w = factorized_params(li, d.rank, d.factorization or "svd")
        scales = 0 if bits == 32 else (out_c if d is None or d.per_channel else 1) * 4
        bias = out_c * 4 if li.has_bias else 0
        return math.ceil(n_w * bits / 8) + scales + bias

    def model_bytes(self, graph: ModelGraph) -> float:
        return float(sum(self.layer_bytes(li) for li in graph.layers))

    def bops(self, graph: ModelGraph) -> float:
        """Bit operations: MACs x weight bits x activation bits (HAWQ-V3)."""
        total = 0.0
        for li in graph.layers:
            d = self.layers.get(li.name)
            bw = 32 if d is None or d.weight_bits is None else d.weight_bits
            ba = 32 if d is None or d.act_bits is None else d.act_bits
            total += li.macs * bw * ba
        return total

    # ------------------------------------------------------------------ serialization
    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = [asdict(v) for v in self.layers.values()]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str = "plan") -> CompressionPlan:
        if not isinstance(d, dict) or "layers" not in d:
            raise UserError(f"{source}: not a compression plan (no 'layers').")
        if d.get("version", PLAN_VERSION) > PLAN_VERSION:
            raise UserError(
                f"{source}: plan version {d['version']} is newer than this tool ({PLAN_VERSION}); upgrade edge-compress."
            )
        d = dict(d)
        layers = {x["name"]: LayerDecision.from_json(x) for x in d.pop("layers")}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"{source}: unknown plan field(s) {sorted(unknown)}.")
        if not isinstance(d.get("bias_correction", True), bool):
            raise UserError(f"{source}: bias_correction must be true or false, got {d['bias_correction']!r}.")
        from edge_compress.quant.rounding import ROUNDINGS

        d.setdefault("weight_rounding", "nearest")
        if d["weight_rounding"] not in ROUNDINGS:
            raise UserError(
                f"{source}: weight_rounding must be gptq or nearest, got {d['weight_rounding']!r}."
            )
        return cls(layers=layers, **d)

    def quantizer(self) -> dict[str, Any]:
        """How the plan's numbers are made (beyond the per-layer bits): for manifests and reports."""
        return {
            "weight_rounding": self.weight_rounding,
            "bias_correction": self.bias_correction,
            "activation_calibration": self.activation_calibration,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(self.dumps() + "\n", encoding="utf-8")
        return p

    @classmethod
    def load(cls, path: str | Path) -> CompressionPlan:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{p}: no such plan file.") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{p}: not valid JSON (line {e.lineno}: {e.msg}).") from None
        return cls.from_json(data, str(p))

    def digest(self) -> str:
        """Stable hash of the decisions (not of predictions or notes)."""
        core = {
            n: (
                d.weight_bits,
                d.act_bits,
                d.per_channel,
                d.weight_clip,
                d.keep_channels,
                d.rank,
                d.factorization,
            )
            for n, d in sorted(self.layers.items())
        }
        payload: list[Any] = [core, self.activation_calibration, {"bias_correction": self.bias_correction}]
        if self.weight_rounding != "nearest":
            payload.append({"weight_rounding": self.weight_rounding})
        if self.transforms:
            payload.append(self.transforms)
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


def factorized_params(li: LayerInfo, rank: int, how: str) -> int:
    """Weight parameters of a layer after low-rank factorization at ``rank``."""
    if li.kind == "linear" or how == "svd":
        return rank * (li.in_channels + li.out_channels)
    kh = li.kernel[0]
    kw = li.kernel[1] if len(li.kernel) > 1 else 1
    cin = li.in_channels // li.groups
    if how == "spatial":  # (k, cin, kh, 1) then (cout, k, 1, kw)
        return rank * cin * kh + li.out_channels * rank * kw
    if how == "channel":  # (k, cin, kh, kw) then (cout, k, 1, 1)
        return rank * cin * kh * kw + li.out_channels * rank
    raise UserError(f"layer {li.name!r}: unknown factorization {how!r} (use svd, spatial or channel).")
