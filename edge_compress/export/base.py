"""Types and helpers shared by the exporters: what an export produced, and what it could not honour.

An exporter turns a (BN-folded) model and a plan into one runnable file. Where the runtime cannot
honour a layer's planned precision it falls back (e.g. depthwise int4 -> int8 in TFLite) and
says so in a :class:`Fallback`; the compiler copies fallbacks into the plan's
``LayerDecision.fallback`` and the manifest. Nothing is downgraded silently.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_compress.plan import CompressionPlan

FORMATS = ("onnx", "tflite")


def bits_label(weight_bits: int | None, act_bits: int | None) -> str:
    w = "fp32" if weight_bits is None else f"int{weight_bits}"
    a = "fp32" if act_bits is None else f"int{act_bits}"
    return f"w:{w} a:{a}"


@dataclass(frozen=True)
class Fallback:
    """One layer of one exported file that does not run at the planned precision."""

    layer: str
    format: str
    variant: str
    planned: str  # e.g. "w:int4 a:int8"
    actual: str  # e.g. "w:int8 a:int8"
    reason: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    def describe(self) -> str:
        return f"{self.format}/{self.variant}: {self.planned} -> {self.actual} ({self.reason})"


@dataclass
class ExportedFile:
    """A runnable model file and what it contains."""

    path: Path
    format: str  # onnx | tflite
    variant: str  # qdq | int8 | int8-full | weight-only | float
    planned_bytes: int
    layer_bits: dict[str, tuple[int | None, int | None]]  # effective (weight, act) bits per layer
    fallbacks: list[Fallback] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    io: dict[str, Any] = field(default_factory=dict)  # input/output name, dtype, quantization
    layer_map: dict[str, str] = field(default_factory=dict)  # plan layer -> node / op in the file
    sidecars: dict[str, Path] = field(default_factory=dict)  # e.g. the ai-edge-quantizer recipe

    @property
    def bytes(self) -> int:
        return self.path.stat().st_size


def effective_plan(
    plan: CompressionPlan, layer_bits: dict[str, tuple[int | None, int | None]]
) -> CompressionPlan:
    """A copy of ``plan`` with the bits a file really uses (after fallbacks): what its simulation is."""
    eff = copy.deepcopy(plan)
    for name, (wb, ab) in layer_bits.items():
        if name in eff.layers:
            eff.layers[name].weight_bits = wb
            eff.layers[name].act_bits = ab
    return eff


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def quiet(enabled: bool = True) -> Iterator[list[str]]:
    """Silence stdout / stderr of noisy converters (including C++ logging on file descriptors 1 and 2).

    Yields a list that receives the captured text when the block exits, for error messages. Keeps
    ``--json`` output clean: converters print progress bars and absl logs on the real descriptors.
    """
    captured: list[str] = []
    if not enabled:
        yield captured
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as log:
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            with contextlib.redirect_stdout(sys.__stdout__), contextlib.redirect_stderr(sys.__stderr__):
                yield captured
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            log.seek(0)
            captured.append(log.read().decode("utf-8", "replace"))


def last_error_line(text: str) -> str:
    """The most informative line of a converter's log (the last one mentioning an error)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower():
            return ln[:300]
    return lines[-1][:300] if lines else ""


def effective_spec(
    folded: Any,
    plan: CompressionPlan,
    spec: dict[str, Any],
    layer_bits: dict[str, tuple[int | None, int | None]],
) -> dict[str, Any]:
    """The simulation's quantization spec for what a file really runs (after fallbacks).

    Activation grids of layers that keep their input quantized are reused as they are (same
    calibration); layers whose weights fell back to another bit-width get that width's scales.
    """
    import dataclasses

    from edge_compress.quant.fakequant import weight_scales

    mods = dict(folded.named_modules())
    out = dict(spec)
    for name, (wb, ab) in layer_bits.items():
        lq = spec[name]
        new = lq
        if ab is None and lq.act is not None:
            new = dataclasses.replace(new, act=None)
        if wb != lq.weight_bits:
            d = plan.layers[name]
            scale = None
            if wb is not None:
                scale = (
                    weight_scales(mods[name].weight, wb, d.per_channel, d.weight_clip)
                    .numpy()
                    .astype("float32")
                )
            new = dataclasses.replace(new, weight_bits=wb, weight_scale=scale)
        out[name] = new
    return out


def fake_quant_weight(w: Any, scale: Any, bits: int) -> Any:
    """A torch weight on the symmetric per-channel grid ``scale`` (numpy, torch layout): the values
    the simulation uses (:func:`edge_compress.quant.fakequant.simulate`)."""
    import torch

    qmax = 2 ** (bits - 1) - 1
    t = w.detach()
    s = torch.as_tensor(scale).reshape([-1] + [1] * (t.dim() - 1))
    return (torch.clamp(torch.round(t / s), -qmax, qmax) * s).numpy()
