"""Nightly regression suites: a YAML file of models x compile settings x budgets x targets.

Format (every section but ``models`` and ``targets`` is optional)::

    name: host-nightly                 # runs of a suite are compared with runs of the same name
    models:                            # zoo names, module:factory, or .onnx/.tflite files
      - lenet5                         #   (relative paths are relative to the suite file)
      - models/kws.onnx
      - {model: mypkg.nets:build, name: tiny}   # mapping form: a short label for the cell keys
      - {model: kws.onnx, accuracy: kws_test.npz} # .npz with x, y: accuracy measured on the device
    compile:                           # compile settings; each model is compiled once per entry
      - {name: int8, method: hessian, formats: [onnx]}
      - {name: asis, method: none}     # 'none': measure the model file as it is (files only)
    budgets: [null, "bytes=60KB,latency_p99=5ms"]   # compile budgets (cross product); null: profile's
    targets: [local, pi5]              # inventory names
    measure: {threads: 1, min_count: 50, min_duration_s: 1.0, warmup: 10, accuracy: false}
    thresholds:                        # practical thresholds, percent (accuracy: points)
      alpha: 0.01
      latency_median: 5%
      latency_p99: 10%
      peak_memory: 10%
      energy: 10%
      accuracy: 1.0
      bytes: 1%
    baseline: {policy: last_accepted}  # or {policy: pinned, run_id: 42}
    interleave: {rounds: 6, max_rounds: 12, trigger: 0.5}  # paired A/B re-measure if a metric looks regressed

Errors name the file, the line and the field (``suite.yaml: line 7: field 'measure.threads': ...``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_compress.errors import UserError

MODEL_SUFFIXES = (".onnx", ".tflite")
FORMATS = ("onnx", "tflite")
RAW_METHOD = "none"
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$"


def _pct(v: Any) -> Any:
    """``"5%"`` / ``"5"`` / ``5`` -> 5.0 (percent)."""
    if isinstance(v, str):
        text = v.strip().rstrip("%").strip()
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a percentage like 5% or 5, got {v!r}") from None
    return v


def _check_budget(text: str) -> str:
    from edge_compress.profiles import parse_budget

    try:
        parse_budget(text)
    except UserError as e:
        raise ValueError(str(e).rstrip(".")) from None
    return text


BudgetText = Annotated[str, AfterValidator(_check_budget)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Strict):
    model: str = Field(min_length=1)
    name: str | None = Field(default=None, pattern=_NAME)
    accuracy: str | None = Field(default=None, description=".npz with arrays x, y for on-device accuracy")
    data: str | None = Field(
        default=None, description="data set for calibration: digits | mnist1d | breast_cancer | an .npz"
    )


class CompileSettings(_Strict):
    """One way of compiling every model of the suite."""

    name: str = Field(default="default", pattern=_NAME)
    method: str = Field(
        default="hessian",
        min_length=1,
        description="compiler method (edge-compress compile --method), or 'none'",
    )
    formats: tuple[Literal["onnx", "tflite"], ...] = Field(default=("onnx",), min_length=1)
    parity_threshold: float | None = Field(default=None, gt=0)
    force: bool = False


class MeasureSettings(_Strict):
    threads: int = Field(default=1, ge=1)
    min_count: int = Field(default=50, ge=1)
    min_duration_s: float = Field(default=1.0, ge=0)
    warmup: int = Field(default=10, ge=0)
    max_count: int = Field(default=100_000, ge=1)
    cooldown_s: float = Field(default=5.0, ge=0)
    detect_throttle: bool = Field(
        default=True, description="re-measure a cell once (after cooldown_s) when its latency drifts up"
    )
    timeout_s: float = Field(default=600.0, gt=0)
    runtime: str = "auto"
    core_mask: str | None = Field(default=None, pattern=r"^(0[xX])?[0-9a-fA-F]+$")
    energy: bool = True
    accuracy: bool = Field(default=False, description="on-device accuracy on the zoo test split")
    format: Literal["onnx", "tflite"] | None = Field(default=None, description="file of the artifact")


class Thresholds(_Strict):
    """Practical thresholds (percent of the baseline; accuracy in percentage points) and alpha."""

    alpha: float = Field(default=0.01, gt=0, lt=0.5)
    latency_median: float = Field(default=5.0, gt=0)
    latency_p99: float = Field(default=10.0, gt=0)
    peak_memory: float = Field(default=10.0, gt=0)
    energy: float = Field(default=10.0, gt=0)
    accuracy: float = Field(default=1.0, gt=0, description="percentage points of accuracy drop")
    bytes: float = Field(default=1.0, gt=0)
    noise_k: float = Field(default=3.0, ge=0, description="widen by k x the run-to-run spread of history")
    history: int = Field(default=10, ge=0, description="accepted runs used for the run-to-run spread")

    @field_validator(
        "latency_median", "latency_p99", "peak_memory", "energy", "accuracy", "bytes", mode="before"
    )
    @classmethod
    def _percentages(cls, v: Any) -> Any:
        return _pct(v)

    def for_metric(self, metric: str) -> float:
        return float(getattr(self, metric))


class BaselinePolicy(_Strict):
    policy: Literal["last_accepted", "pinned"] = "last_accepted"
    run_id: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _pinned_needs_id(self) -> BaselinePolicy:
        if self.policy == "pinned" and self.run_id is None:
            raise ValueError("policy 'pinned' needs run_id")
        return self


class InterleaveSettings(_Strict):
    enabled: bool = True
    rounds: int = Field(default=6, ge=2, le=50)
    max_rounds: int = Field(
        default=12,
        ge=2,
        le=100,
        description="rounds after one extension (effect above threshold, not yet significant)",
    )
    trigger: float = Field(
        default=0.5, gt=0, le=1, description="re-measure when an effect exceeds trigger x threshold"
    )
    min_duration_s: float | None = Field(default=None, ge=0, description="per run; default: measure's")
    # Where the runner can load both models in one agent process (ssh, local), rounds cost no
    # process start: many short blocks, close together in time, beat a few long runs on a busy
    # device (measured on a shared 2-core host: a round's log-ratio SD ~3% with 0.03-0.05 s blocks
    # vs 5-10% with 0.3 s blocks).
    block_s: float = Field(default=0.05, gt=0, le=10, description="one-process mode: each timed block")
    block_rounds: int = Field(default=40, ge=2, le=1000, description="one-process mode: rounds")
    max_block_rounds: int = Field(
        default=120, ge=2, le=5000, description="one-process mode: rounds after one extension"
    )

    @model_validator(mode="after")
    def _max_rounds(self) -> InterleaveSettings:
        if self.max_rounds < self.rounds:
            raise ValueError("max_rounds must be >= rounds")
        if self.max_block_rounds < self.block_rounds:
            raise ValueError("max_block_rounds must be >= block_rounds")
        return self


class Suite(_Strict):
    name: str = Field(pattern=_NAME)
    models: tuple[ModelEntry, ...] = Field(min_length=1)
    compile: tuple[CompileSettings, ...] = (CompileSettings(),)
    budgets: tuple[BudgetText | None, ...] = (None,)
    targets: tuple[str, ...] = Field(min_length=1)
    measure: MeasureSettings = MeasureSettings()
    thresholds: Thresholds = Thresholds()
    baseline: BaselinePolicy = BaselinePolicy()
    interleave: InterleaveSettings = InterleaveSettings()
    fail_on_budget_violation: bool = False
    artifacts_dir: str | None = None

    # set by load_suite (not part of the YAML)
    path: str | None = Field(default=None, exclude=True)

    @field_validator("models", mode="before")
    @classmethod
    def _model_strings(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"model": x} if isinstance(x, str) else x for x in v]
        return v

    @field_validator("budgets", mode="before")
    @classmethod
    def _budget_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) or v is None else v

    @model_validator(mode="after")
    def _unique(self) -> Suite:
        for what, names in (
            ("compile", [c.name for c in self.compile]),
            ("targets", list(self.targets)),
            ("models", [m.name or m.model for m in self.models]),
        ):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what} has duplicate name(s) {', '.join(dup)}")
        return self

    # -- derived ------------------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        return Path(self.path).resolve().parent if self.path else Path.cwd()

    def _path(self, text: str) -> str:
        p = Path(text).expanduser()
        return str(p if p.is_absolute() else (self.base_dir / p).resolve())

    def _data(self, data: str | None) -> str | None:
        return self._path(data) if data and data.lower().endswith(".npz") else data

    def model_ref(self, entry: ModelEntry) -> str:
        """What the compiler / runner gets: an absolute path for files, the text otherwise."""
        if entry.model.lower().endswith(MODEL_SUFFIXES):
            return self._path(entry.model)
        return entry.model

    def cells(self) -> list[CellSpec]:
        """Every (model, compile settings, budget, target) combination, in a stable order."""
        from edge_compress.profiles import parse_budget

        out = []
        for m in self.models:
            for c in self.compile:
                for b in self.budgets:
                    for t in self.targets:
                        label = m.name or m.model
                        blabel = b.replace(" ", "") if b else "profile"
                        out.append(
                            CellSpec(
                                key=f"{label}|{c.name}|{blabel}|{t}",
                                model=label,
                                model_ref=self.model_ref(m),
                                variant=c.name,
                                budget=b,
                                budget_fields=parse_budget(b) if b else {},
                                target=t,
                                accuracy_npz=self._path(m.accuracy) if m.accuracy else None,
                                data=self._data(m.data),
                            )
                        )
        return out

    def digest(self) -> str:
        """A short hash of the suite's content (the cells and settings it defines)."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CellSpec:
    """One cell of the suite matrix; ``key`` identifies it across runs."""

    key: str
    model: str  # label
    model_ref: str  # zoo name, module:factory or absolute model path
    variant: str  # compile settings name
    budget: str | None
    target: str
    budget_fields: dict[str, float] = field(default_factory=dict)
    accuracy_npz: str | None = None  # absolute path, from the model entry
    data: str | None = None  # the model entry's data set (passed to the compiler)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# loading


def load_suite(path: str | Path, *, inventory: Any = None, check_targets: bool = True) -> Suite:
    """Read, validate and check a suite file.

    ``inventory`` (an Inventory, a path or None for the default) is used to check the target names.

    Raises:
        UserError: unreadable file, invalid YAML, an invalid field (file, line and field named),
            an unknown model or target (the known ones listed).
    """
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{p}: no such suite file.") from None
    except OSError as e:
        raise UserError(f"{p}: cannot read the suite ({e.strerror}).") from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{p}:{where} not valid YAML ({problem}).") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: a suite is a YAML mapping with at least 'name', 'models' and 'targets'.")
    if "path" in data:
        raise UserError(
            f"{p}: line {_line_of(root, ['path'])}: field 'path': unknown field (check spelling)."
        )
    try:
        suite = Suite(**data, path=str(p))
    except ValidationError as e:
        raise UserError(_format_error(p, root, e)) from None
    _check_models(suite, p, root)
    if check_targets:
        _check_targets(suite, p, root, inventory)
    return suite


def _format_error(path: Path, root: Any, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = list(first["loc"])
    field_name = ".".join(str(x) for x in loc) or "(top level)"
    msg = first["msg"]
    if first["type"] == "missing":
        msg = "required field is missing"
    elif first["type"] == "extra_forbidden":
        msg = "unknown field (check spelling)"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    got = first.get("input")
    got_s = "" if first["type"] == "missing" or isinstance(got, (dict, list)) else f", got {got!r}"
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"{path}: line {_line_of(root, loc)}: field '{field_name}': {msg}{got_s}{more}."


def _line_of(node: Any, loc: list[Any]) -> int:
    """1-based line of the deepest node along ``loc`` (mapping keys and sequence indices)."""
    import yaml

    line = (node.start_mark.line + 1) if node is not None else 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if str(k.value) == str(key):
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def check_model_text(text: str, base_dir: Path) -> str | None:
    """None when ``text`` names a model we can resolve, else the reason."""
    from edge_compress.zoo import zoo_names

    if text.lower().endswith(MODEL_SUFFIXES):
        p = Path(text).expanduser()
        p = p if p.is_absolute() else base_dir / p
        return None if p.is_file() else f"no such model file {str(p)!r}"
    if _FACTORY.match(text):
        module = text.split(":", 1)[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        return None if found else f"module {module!r} of {text!r} is not importable"
    if text in zoo_names():
        return None
    return "unknown model"


def _check_models(suite: Suite, path: Path, root: Any) -> None:
    from edge_compress.zoo import zoo_names

    for i, m in enumerate(suite.models):
        problem = check_model_text(m.model, suite.base_dir)
        if problem:
            line = _line_of(root, ["models", i])
            raise UserError(
                f"{path}: line {line}: field 'models.{i}': {problem} {m.model!r}; known zoo models: "
                f"{', '.join(zoo_names())} (or a module:factory, or an existing .onnx/.tflite file)."
                if problem == "unknown model"
                else f"{path}: line {line}: field 'models.{i}': {problem}."
            )
        if m.accuracy and not Path(suite._path(m.accuracy)).is_file():
            line = _line_of(root, ["models", i, "accuracy"])
            raise UserError(f"{path}: line {line}: field 'models.{i}.accuracy': no such file {m.accuracy!r}.")
    methods = _compiler_methods()
    for i, c in enumerate(suite.compile):
        if methods and c.method not in (*methods, RAW_METHOD):
            line = _line_of(root, ["compile", i, "method"])
            raise UserError(
                f"{path}: line {line}: field 'compile.{i}.method': unknown method {c.method!r}; "
                f"known methods: {', '.join((*methods, RAW_METHOD))}."
            )
        if c.method == RAW_METHOD:
            for m in suite.models:
                if not m.model.lower().endswith(MODEL_SUFFIXES):
                    line = _line_of(root, ["compile", i, "method"])
                    raise UserError(
                        f"{path}: line {line}: field 'compile.{i}.method': 'none' measures model files "
                        f"as they are, but {m.model!r} is not a .onnx/.tflite file."
                    )


def _compiler_methods() -> tuple[str, ...]:
    """The compiler's planning methods (empty when the compiler is not installed)."""
    try:
        from edge_compress.compiler import METHODS
    except ImportError:
        return ()
    return tuple(METHODS)


def _check_targets(suite: Suite, path: Path, root: Any, inventory: Any) -> None:
    from runners.inventory import Inventory, load_inventory

    inv = inventory if isinstance(inventory, Inventory) else load_inventory(inventory)
    known = inv.names()
    for i, t in enumerate(suite.targets):
        if t not in known:
            where = f" in {inv.path}" if inv.path else " (no inventory file)"
            raise UserError(
                f"{path}: line {_line_of(root, ['targets', i])}: field 'targets.{i}': unknown target "
                f"{t!r}{where}; known targets: {', '.join(known)}."
            )
