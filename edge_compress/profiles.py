"""Device profiles: what a class of device can do and what a model must fit in.

A profile is data (``device_profiles/*.yaml``), validated into a frozen :class:`DeviceProfile`.
User profiles from other directories (``--profiles-dir`` or ``EDGE_COMPRESS_PROFILES``, several
separated by ``os.pathsep``) override built-ins of the same name, and may ``extends: <name>``
another profile: the child's keys are deep-merged over the parent's.

Profiles hold capabilities and budgets only: host names, keys and serials live in the inventory.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_compress.errors import UserError

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "device_profiles"
ENV_VAR = "EDGE_COMPRESS_PROFILES"

Precision = Literal["fp32", "fp16", "int16", "int8", "int4"]
OpKind = Literal["conv", "depthwise_conv", "linear", "activations"]
Runtime = Literal["onnxruntime", "litert", "tflite_runtime", "benchmark_model"]
Transport = Literal["local", "ssh", "adb"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Cluster(_Frozen):
    """One CPU cluster (big.LITTLE devices have several)."""

    core: str
    cores: int = Field(gt=0)
    clock_ghz: float = Field(gt=0)
    core_mask: str | None = Field(default=None, description="hex taskset mask selecting this cluster")


class IntegerKernels(_Frozen):
    """Measured cost of one runtime's integer (QDQ) convolution / matmul kernels on this CPU, relative to
    its float ones: an integer kernel takes ``float_ratio`` x its float time, plus ``ns_per_output`` per
    output element (quantize / requantize, layout) and ``us_per_kernel`` per kernel (the Q/DQ nodes
    around it). Fitted by ``edge_compress.export.kernel_fit`` on single convolutions of a grid of widths
    and sizes, each timed as a float file and as an integer file (``scripts/fit_integer_kernels.py``)."""

    float_ratio: float = Field(gt=0)
    ns_per_output: float = Field(ge=0)
    us_per_kernel: float = Field(ge=0)
    int8_weights: Literal["int8", "int7", "uint8"] | None = Field(
        default=None,
        description="how the measured integer files store 8-bit weights (int7: onnxruntime's reduce-range "
        "grid, the fast exact path on x86 without VNNI); the integer exports use the same",
    )
    int4_float_ratio: float | None = Field(
        default=None,
        gt=0,
        description="an int4-weight kernel's time in the integer file over its float time (median over the "
        "grid); absent: int4 kernels are costed like int8 ones",
    )
    ratio_error_pct: float = Field(
        default=0.0,
        ge=0,
        lt=100,
        description="the fit's mean relative error on a kernel's integer/float ratio; compute: auto picks "
        "integer only where it is predicted faster by more than this (operators the model does not see, "
        "such as integer pooling kernels, make whole-model errors larger still)",
    )
    source: str = Field(min_length=3)


class Compute(_Frozen):
    cpu: str
    clusters: tuple[Cluster, ...] = Field(min_length=1)
    peak_macs_per_s: dict[Precision, float] = Field(
        description="peak multiply-accumulates per second per precision, all cores"
    )
    source: str = Field(min_length=3, description="where the numbers come from")
    channel_multiple: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="the runtimes' kernels block output channels in multiples of this (8: XNNPACK's NEON "
        "tiles, onnxruntime's AVX2 NCHWc blocks); structured pruning rounds kept channel counts to it",
    )
    integer_speedup: dict[Runtime, float] | None = Field(
        default=None,
        description="measured latency of a model's float export divided by that of its int8 export, per "
        "runtime, on this CPU at batch 1 (quantize / dequantize and layout costs included); below 1 where "
        "int8 kernels lose to float ones. Absent: the ratio of peak_macs_per_s. Exports use it to choose "
        "integer or float compute (edge_compress.export.compute)",
    )
    integer_kernels: dict[Runtime, IntegerKernels] | None = Field(
        default=None,
        description="per runtime, a measured per-kernel model of integer vs float kernel time (width "
        "dependent); where present it replaces integer_speedup for that runtime",
    )

    @model_validator(mode="after")
    def _peaks_positive(self) -> Compute:
        for k, v in self.peak_macs_per_s.items():
            if v <= 0:
                raise ValueError(f"peak_macs_per_s.{k} must be > 0")
        if "fp32" not in self.peak_macs_per_s:
            raise ValueError("peak_macs_per_s needs at least fp32")
        for k, v in (self.integer_speedup or {}).items():
            if v <= 0:
                raise ValueError(f"integer_speedup.{k} must be > 0")
        return self

    @property
    def cores(self) -> int:
        return sum(c.cores for c in self.clusters)


class Memory(_Frozen):
    ram_mb: float = Field(gt=0)
    bandwidth_gb_s: float = Field(gt=0)
    storage_mb: float = Field(gt=0)
    source: str = Field(min_length=3)


class PowerModel(_Frozen):
    """Board power: idle, and with all cores busy. Energy estimates interpolate per busy core."""

    idle_w: float = Field(ge=0)
    active_w: float = Field(gt=0)
    sensor: str | None = Field(default=None, description="power sensor the device has, if any")
    source: str = Field(min_length=3)

    @model_validator(mode="after")
    def _active_above_idle(self) -> PowerModel:
        if self.active_w < self.idle_w:
            raise ValueError("active_w must be >= idle_w")
        return self


class Budget(_Frozen):
    """Limits a deployed model must respect; every field optional (None = no limit)."""

    model_bytes: int | None = Field(default=None, gt=0)
    latency_p99_ms: float | None = Field(default=None, gt=0)
    peak_memory_mb: float | None = Field(default=None, gt=0)
    energy_per_inference_mj: float | None = Field(default=None, gt=0)
    avg_power_w: float | None = Field(default=None, gt=0)
    duty_cycle_hz: float | None = Field(
        default=None, gt=0, description="inferences per second at which avg_power_w applies"
    )
    flops_ratio: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _power_needs_duty(self) -> Budget:
        if self.avg_power_w is not None and self.duty_cycle_hz is None:
            raise ValueError("avg_power_w needs duty_cycle_hz (inferences per second)")
        return self

    def active(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class DeviceProfile(_Frozen):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    description: str
    device_class: Literal["phone", "sbc", "ecu", "satellite", "server", "mcu", "accelerator"]
    compute: Compute
    memory: Memory
    power: PowerModel
    budgets: Budget = Budget()
    precisions: dict[OpKind, tuple[Precision, ...]]
    runtimes: tuple[Runtime, ...] = Field(min_length=1)
    transport: Transport
    sources: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _precisions_complete(self) -> DeviceProfile:
        missing = {"conv", "depthwise_conv", "linear", "activations"} - set(self.precisions)
        if missing:
            raise ValueError(f"precisions is missing {sorted(missing)}")
        for kind, precs in self.precisions.items():
            if not precs:
                raise ValueError(f"precisions.{kind} must list at least one precision")
        return self

    def weight_bits(self, op_kind: str) -> tuple[int, ...]:
        """Integer weight bit-widths allowed for a layer kind, highest first."""
        kind = op_kind if op_kind in self.precisions else "conv"
        bits = [int(p[3:]) for p in self.precisions[kind] if p.startswith("int")]  # type: ignore[index]
        return tuple(sorted(set(bits), reverse=True))

    def activation_bits(self) -> tuple[int, ...]:
        bits = [int(p[3:]) for p in self.precisions["activations"] if p.startswith("int")]
        return tuple(sorted(set(bits)))

    @cached_property
    def cores(self) -> int:
        return self.compute.cores

    def with_budget(self, **overrides: float | None) -> DeviceProfile:
        merged = {**self.budgets.model_dump(), **{k: v for k, v in overrides.items()}}
        return self.model_copy(update={"budgets": Budget(**merged)})


# ---------------------------------------------------------------------------------------------
# loading


def _search_dirs(extra: list[str | Path] | None = None) -> list[Path]:
    """Directories in increasing priority: built-ins, then env var, then explicit ones."""
    dirs = [BUILTIN_DIR]
    env = os.environ.get(ENV_VAR)
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in (extra or [])]
    return dirs


# parsed profile files by (path, mtime, size): a nightly run resolves the same profiles for every
# cell, and parsing is most of a cached run's host-side time otherwise
_PARSED: dict[tuple[str, int, int], dict[str, Any]] = {}


def _read_yaml(path: Path) -> dict[str, Any]:
    import copy

    try:
        st = path.stat()
    except OSError as e:
        raise UserError(f"{path}: cannot read profile ({e.strerror}).") from None
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _PARSED:
        _PARSED[key] = _parse_yaml(path)
    return copy.deepcopy(_PARSED[key])  # callers merge into it (extends:)


def _parse_yaml(path: Path) -> dict[str, Any]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when the wheel has it
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read profile ({e.strerror}).") from None
    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}:{where}: not valid YAML ({problem}).") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a profile must be a YAML mapping of fields, got {type(data).__name__}.")
    return data


def profile_files(extra_dirs: list[str | Path] | None = None) -> dict[str, Path]:
    """name -> file, later directories overriding earlier ones."""
    found: dict[str, Path] = {}
    for d in _search_dirs(extra_dirs):
        if not d.is_dir():
            if d != BUILTIN_DIR and d.exists():
                raise UserError(f"{d}: profiles directory is not a directory.")
            continue
        for f in sorted(d.glob("*.y*ml")):
            found[f.stem] = f
    return found


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _resolve_raw(
    name: str, files: dict[str, Path], chain: tuple[str, ...] = ()
) -> tuple[dict[str, Any], Path]:
    if name in chain:
        raise UserError(f"profile {name!r}: 'extends' forms a cycle ({' -> '.join(chain + (name,))}).")
    path = files[name]
    raw = _read_yaml(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw, path
    if not isinstance(parent, str) or parent not in files:
        known = ", ".join(sorted(files))
        raise UserError(f"{path}: field 'extends': unknown profile {parent!r} (known: {known}).")
    if parent == name:  # a user file overriding a built-in of the same name extends the built-in
        builtin = BUILTIN_DIR / path.name
        if not builtin.exists() or builtin == path:
            raise UserError(f"{path}: a profile cannot extend itself.")
        base = _read_yaml(builtin)
        base.pop("extends", None)
        base.pop("name", None)
        return _deep_merge(base, raw), path
    base, _ = _resolve_raw(parent, files, chain + (name,))
    base.pop("name", None)
    return _deep_merge(base, raw), path


def _format_validation(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "missing":
        msg = "required field is missing"
    elif first["type"] == "extra_forbidden":
        msg = "unknown field (check spelling)"
    got = first.get("input")
    got_s = "" if first["type"] in ("missing",) or isinstance(got, dict) else f", got {got!r}"
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"{path}: field '{loc}': {msg}{got_s}{more}."


def load_profile_file(path: str | Path, extra_dirs: list[str | Path] | None = None) -> DeviceProfile:
    """Load and validate one profile file (resolving ``extends`` against the known profiles)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such profile file.")
    files = profile_files(extra_dirs)
    files[path.stem] = path
    raw, _ = _resolve_raw(path.stem, files)
    raw.setdefault("name", path.stem)
    try:
        return DeviceProfile(**raw)
    except ValidationError as e:
        raise UserError(_format_validation(path, e)) from None
    except TypeError as e:
        raise UserError(f"{path}: {e}.") from None


def load_profile(name: str, extra_dirs: list[str | Path] | None = None) -> DeviceProfile:
    """Load a profile by name (or by path when ``name`` ends in .yaml / .yml)."""
    if name.endswith((".yaml", ".yml")):
        return load_profile_file(name, extra_dirs)
    files = profile_files(extra_dirs)
    if name not in files:
        known = ", ".join(sorted(files)) or "none"
        raise UserError(f"unknown profile {name!r}; known profiles: {known}.")
    raw, path = _resolve_raw(name, files)
    raw.setdefault("name", name)
    if raw["name"] != name:
        raise UserError(f"{path}: field 'name' is {raw['name']!r} but the file is named {name!r}.")
    try:
        return DeviceProfile(**raw)
    except ValidationError as e:
        raise UserError(_format_validation(path, e)) from None


def list_profiles(extra_dirs: list[str | Path] | None = None) -> dict[str, Path]:
    return profile_files(extra_dirs)


# ---------------------------------------------------------------------------------------------
# budget strings on the command line: "bytes=200KB,latency_p99=15ms,energy=5mJ,power=2W@10Hz"

_UNIT = {
    "b": 1,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_ALIASES = {
    "bytes": "model_bytes",
    "model_bytes": "model_bytes",
    "size": "model_bytes",
    "latency": "latency_p99_ms",
    "latency_p99": "latency_p99_ms",
    "latency_p99_ms": "latency_p99_ms",
    "memory": "peak_memory_mb",
    "peak_memory": "peak_memory_mb",
    "peak_memory_mb": "peak_memory_mb",
    "energy": "energy_per_inference_mj",
    "energy_per_inference": "energy_per_inference_mj",
    "energy_per_inference_mj": "energy_per_inference_mj",
    "power": "avg_power_w",
    "avg_power": "avg_power_w",
    "avg_power_w": "avg_power_w",
    "duty_cycle_hz": "duty_cycle_hz",
    "rate": "duty_cycle_hz",
    "flops": "flops_ratio",
    "flops_ratio": "flops_ratio",
}


def _num(field: str, text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z%]*)\s*", text)
    if not m:
        raise UserError(f"budget {field}={text!r}: expected a number with an optional unit.")
    value, unit = float(m.group(1)), m.group(2).lower()
    if field == "model_bytes":
        if unit not in _UNIT and unit:
            raise UserError(f"budget bytes={text!r}: unknown unit {unit!r} (use B, KB, MB, KiB, MiB).")
        return value * _UNIT.get(unit, 1)
    if field == "latency_p99_ms":
        scale = {"": 1, "ms": 1, "s": 1e3, "us": 1e-3}
    elif field == "peak_memory_mb":
        scale = {"": 1, "mb": 1, "gb": 1e3, "kb": 1e-3, "mib": 1.048576}
    elif field == "energy_per_inference_mj":
        scale = {"": 1, "mj": 1, "j": 1e3, "uj": 1e-3}
    elif field == "avg_power_w":
        scale = {"": 1, "w": 1, "mw": 1e-3}
    elif field == "duty_cycle_hz":
        scale = {"": 1, "hz": 1}
    else:  # flops_ratio
        scale = {"": 1, "%": 0.01}
    if unit not in scale:
        raise UserError(
            f"budget {field}={text!r}: unknown unit {unit!r} (use one of {sorted(k for k in scale if k)})."
        )
    return value * scale[unit]


def parse_budget(text: str | None) -> dict[str, float]:
    """Parse ``--budget`` text into Budget fields. ``power=2W@10Hz`` sets the duty cycle too."""
    out: dict[str, float] = {}
    if not text:
        return out
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise UserError(f"budget {part!r}: expected NAME=VALUE (e.g. latency_p99=15ms).")
        key, value = (s.strip() for s in part.split("=", 1))
        field = _ALIASES.get(key.lower())
        if field is None:
            raise UserError(f"budget {key!r}: unknown budget; known: {', '.join(sorted(set(_ALIASES)))}.")
        if field == "avg_power_w" and "@" in value:
            value, rate = value.split("@", 1)
            out["duty_cycle_hz"] = _num("duty_cycle_hz", rate)
        out[field] = _num(field, value)
    if "model_bytes" in out:
        out["model_bytes"] = int(out["model_bytes"])
    try:
        Budget(**out)
    except ValidationError as e:
        first = e.errors()[0]
        raise UserError(f"budget {'.'.join(map(str, first['loc']))}: {first['msg']}.") from None
    return out
