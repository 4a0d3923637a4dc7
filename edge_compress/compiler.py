"""The compiler pipeline: model + device profile (+ budgets) -> Artifact (files + plan + manifest).

Stages (timed, in ``manifest["stages_s"]``):

``analyze``        graph (layers, MACs, precision groups), fp32 accuracy
``prune``          structured channel pruning to a FLOPs budget (``--prune`` / ``--flops`` / the
                   profile's ``budgets.flops_ratio``), fine-tuned (:mod:`edge_compress.prune.stage`)
``factorize``      low-rank factorization (``--factorize``), fine-tuned (:mod:`edge_compress.factorize.stage`)
                   -- both are registered :data:`TRANSFORMS`: they replace the float model and its
                   graph before any quantization decision, so the planner, the simulation, the
                   exported files and the parity check all see the smaller model
``plan``           the quantization planner (``edge_compress.quant.planner.plan_model``)
``simulate``       BN folding, the plan's exact scales, the torch simulation
``export_onnx``    QDQ ONNX, or weight-only ONNX (float compute) (:mod:`edge_compress.export.onnx`)
``export_tflite``  static int8 / int4 TFLite (or weight-only: float compute), float-I/O and
                   full-integer variants (:mod:`edge_compress.export.tflite`)
``parity``         every file in its real runtime vs the simulation (:mod:`edge_compress.export.parity`)
``write``          plan.json (with fallbacks), manifest.json, atomic rename into place

A request already compiled into ``out_dir`` is found before any of this (``Artifact.cached``,
no stage timings); ``force=True`` rebuilds it. The request key includes the effective transform
settings (budget, method, epochs, channel multiple, seed); the artifact id includes the weights
of the transformed model and the plan, whose ``transforms`` section records the kept channels
and ranks. Existing .onnx / .tflite inputs take their own
pipeline (:mod:`edge_compress.export.onnx_input`, :mod:`edge_compress.export.tflite_input`).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_compress.artifact import (
    Artifact,
    ArtifactBuilder,
    artifact_id,
    find_cached,
    now_iso,
    stable_hash,
    tool_versions,
)
from edge_compress.errors import UserError
from edge_compress.export.base import FORMATS, ExportedFile, effective_plan, effective_spec

if TYPE_CHECKING:
    from torch import nn

    from edge_compress.graph import ModelGraph
    from edge_compress.modelspec import ModelSpec
    from edge_compress.plan import CompressionPlan
    from edge_compress.profiles import DeviceProfile

METHODS = ("hessian", "noise", "uniform8", "uniform4")


@dataclass(frozen=True)
class ExportOptions:
    """Everything besides the plan that changes the exported bytes (part of the artifact id)."""

    formats: tuple[str, ...] = FORMATS
    tflite_variants: tuple[str, ...] = ("int8", "int8-full")
    # int8 weight storage in ONNX: uint8 (zero point 128: exact everywhere, no faster than float on AVX2 without
    # VNNI) | int8 (fast uint8 x int8 kernels; they saturate on AVX2 without VNNI) | int7 (fast and exact: the
    # 8-bit layers get a 7-bit grid, recorded as fallbacks) | auto (see resolve_int8_weights)
    onnx_int8_weights: str = "auto"
    # first-layer convs with a smaller reduction (cin x kernel area) run float on their weight grid,
    # in ONNX and in the TFLite int8 variant (0: never); the name is kept for existing callers
    onnx_float_compute_k: int = 32
    calibration_samples: int = 256
    # integer | float | auto: the compute precision of the ONNX file and of the TFLite int8 variant
    # (float: integer-stored weights, float activations; auto: per model, from the profile and the cost
    # model, see edge_compress.export.compute). int8-full is integer whatever this says.
    compute: str = "auto"
    # compute auto on a local target (the profile is this machine): export both files of each format,
    # time them here and keep the faster (False: the cost model's prediction alone decides)
    measure_compute: bool = True
    # empirical bias correction of planned torch models (False also turns it off in a given plan);
    # existing ONNX / TFLite files keep their biases
    bias_correction: bool = True
    # weight rounding (gptq | nearest, edge_compress.quant.rounding) of planned torch models and of a
    # given plan; None: gptq for new plans, a given plan's own
    weight_rounding: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def default_int8_weights(profile: DeviceProfile) -> str:
    """How ONNX stores int8 weights for this device: ``uint8`` (zero point 128) on x86 without VNNI,
    where onnxruntime's uint8 x int8 kernels saturate 16-bit sums (exact, but no faster than float);
    plain ``int8`` elsewhere (ARM widens to 32 bits; VNNI accumulates in 32 bits): exact and fast."""
    cpu = profile.compute.cpu.lower()
    x86 = any(k in cpu for k in ("x86", "amd64", "intel", "xeon", "epyc", "ryzen"))
    if x86 and ("no avx-512 vnni" in cpu or "no vnni" in cpu or "vnni" not in cpu):
        return "uint8"
    return "int8"


def resolve_int8_weights(value: str, profile: DeviceProfile) -> str:
    """The ONNX int8 weight storage for ``value`` (an ``ExportOptions.onnx_int8_weights``): ``auto`` is the
    storage the profile's integer kernels were measured with (``compute.integer_kernels.onnxruntime``:
    int7 on x86 without VNNI, the grid whose integer files are the fast ones there), else
    :func:`default_int8_weights`."""
    if value != "auto":
        return value
    from edge_compress.export.compute import integer_int8_weights

    return integer_int8_weights(profile, "onnxruntime") or default_int8_weights(profile)


@dataclass
class CompileContext:
    """What the stages share. Transform stages replace ``model`` and ``graph`` (pruned,
    factorized), append ``notes`` and leave their manifest record in ``records``; ``plan`` is set
    by the plan stage."""

    spec: ModelSpec
    profile: DeviceProfile
    model: nn.Module
    graph: ModelGraph
    calib_x: np.ndarray
    notes: list[str] = field(default_factory=list)
    plan: CompressionPlan | None = None
    records: dict[str, dict[str, Any]] = field(default_factory=dict)


# run(ctx, settings) -> manifest record; resolve(settings | None, profile, budget) -> settings to run | None
Transform = Callable[[CompileContext, Any], "dict[str, Any] | None"]
Resolver = Callable[[Any, "DeviceProfile", "dict[str, float] | None"], Any]


@dataclass(frozen=True)
class TransformStage:
    """A pre-quantization stage. ``resolve`` turns the request's settings for it (None when the
    request names none) into the settings to run, or None to skip (default: run when given).
    Settings need a ``to_json()`` (it goes into the request key)."""

    name: str
    run: Transform
    resolve: Resolver | None = None

    def settings_for(self, given: Any, profile: DeviceProfile, budget: dict[str, float] | None) -> Any:
        return self.resolve(given, profile, budget) if self.resolve is not None else given


# Applied in this order before quantization: pruning, then factorization of the pruned model.
TRANSFORMS: list[TransformStage] = []


def register_transform(name: str, fn: Transform, resolve: Resolver | None = None) -> None:
    """Add (or replace) a pre-quantization stage, e.g. ``register_transform("prune", run, resolve)``;
    ``compile_model(..., transforms={"prune": settings})`` then runs it."""
    stage = TransformStage(name, fn, resolve)
    for i, t in enumerate(TRANSFORMS):
        if t.name == name:
            TRANSFORMS[i] = stage
            return
    TRANSFORMS.append(stage)


def resolve_transforms(
    given: dict[str, Any] | None, profile: DeviceProfile, budget: dict[str, float] | None
) -> dict[str, Any]:
    """Registered stage name -> the settings it runs with, in stage order (stages that skip are left out)."""
    given = dict(given or {})
    unknown = sorted(set(given) - {t.name for t in TRANSFORMS})
    if unknown:
        known = ", ".join(t.name for t in TRANSFORMS) or "none"
        raise UserError(f"unknown transform(s) {', '.join(unknown)}; registered: {known}.")
    out = {}
    for t in TRANSFORMS:
        s = t.settings_for(given.get(t.name), profile, budget)
        if s is not None:
            out[t.name] = s
    return out


class _Timer:
    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.stages: dict[str, float] = {}
        self.progress = progress

    def __call__(self, name: str) -> _Stage:
        return _Stage(self, name)


class _Stage:
    def __init__(self, timer: _Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        if self.timer.progress:
            self.timer.progress(self.name)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.timer.stages[self.name] = round(
            self.timer.stages.get(self.name, 0.0) + time.perf_counter() - self.t0, 3
        )


# --------------------------------------------------------------------------------------------
# helpers


def request_key(
    spec: ModelSpec,
    profile: DeviceProfile,
    budget: dict[str, float] | None,
    method: str,
    alpha: float | None,
    options: ExportOptions,
    plan: CompressionPlan | None,
    versions: dict[str, str],
    transforms: dict[str, Any] | None = None,
) -> str:
    ds = spec.dataset
    calib = spec.calibration(options.calibration_samples)
    return stable_hash(
        {
            "model": {k: v for k, v in spec.describe().items() if k != "source"},
            "data": [
                ds.name,
                len(ds.x_train),
                len(ds.x_val),
                len(ds.x_test),
                stable_hash(calib.tobytes().hex()[:4096]),
                float(calib.sum()),
                float(ds.x_val.sum()),
                float(ds.x_test.sum()),
            ],
            "profile": profile.model_dump(mode="json"),
            "budget": budget or {},
            "method": method,
            "alpha": alpha,
            "plan": plan.digest() if plan is not None else None,
            "options": options.to_json(),
            # [] without transforms (as before they existed): earlier request keys stay valid
            "transforms": [[n, _settings_json(v)] for n, v in (transforms or {}).items()],
            "versions": versions,
        }
    )


def _settings_json(settings: Any) -> Any:
    return settings.to_json() if hasattr(settings, "to_json") else settings


def biased_layers(graph: ModelGraph, folded: nn.Module) -> set[str]:
    """Layers with a bias in the deployable (BatchNorm-folded) model."""
    mods = dict(folded.named_modules())
    return {li.name for li in graph.layers if getattr(mods.get(li.name), "bias", None) is not None}


def file_planned_bytes(
    plan: CompressionPlan, graph: ModelGraph, folded: nn.Module, fmt: str, variant: str
) -> int:
    """Predicted bytes of one exported file (:mod:`edge_compress.export.size`): the parameters as the
    format stores them plus the fitted container model."""
    from edge_compress.export.size import predict_file_bytes

    return predict_file_bytes(plan, graph, fmt, variant, biased=biased_layers(graph, folded))


def planned_bytes(plan: CompressionPlan, graph: ModelGraph, folded: nn.Module | None = None) -> int:
    """Parameter bytes of the plan (weights, scales, biases, plus the bias every conv gains when
    BatchNorm is folded into it): the format-independent figure the planner budgets."""
    total = plan.model_bytes(graph)
    if folded is not None:
        mods = dict(folded.named_modules())
        for li in graph.layers:
            m = mods.get(li.name)
            if not li.has_bias and m is not None and getattr(m, "bias", None) is not None:
                d = plan.layers.get(li.name)
                keep = (
                    len(d.keep_channels) if d is not None and d.keep_channels is not None else li.out_channels
                )
                total += 4 * keep
    return int(math.ceil(total))


def _make_plan(
    ctx: CompileContext,
    budget: dict[str, float] | None,
    method: str,
    alpha: float | None,
    files: list[tuple[str, str]] | None = None,
    bias_correction: bool = True,
    weight_rounding: str = "gptq",
) -> CompressionPlan:
    from edge_compress.plan import CompressionPlan

    try:
        from edge_compress.quant.planner import plan_model
    except ImportError:  # the planner is not part of this build: uniform plans only
        plan_model = None
    ds = ctx.spec.dataset
    if plan_model is None:
        if method not in ("uniform8", "uniform4"):
            ctx.notes.append(
                f"the quantization planner is not available: method {method!r} fell back to uniform int8."
            )
        bits = 4 if method == "uniform4" else 8
        plan = CompressionPlan.uniform(ctx.graph, ctx.spec.name, ctx.profile.name, bits, 8)
        plan.bias_correction = bias_correction
        plan.weight_rounding = weight_rounding
        return plan
    from edge_compress.costmodel_store import planner_constraints

    cost_constraints, cost_notes = planner_constraints(ctx.profile, ctx.graph, budget)  # latency, energy
    ctx.notes += cost_notes
    return plan_model(
        ctx.model,
        ctx.graph,
        ctx.profile,
        ctx.calib_x,
        eval_x=ds.x_val,
        eval_y=ds.y_val,
        budget=budget,
        method=method,
        alpha=alpha,
        model_name=ctx.spec.name,
        file_formats=files or None,
        extra_constraints=cost_constraints or None,
        bias_correction=bias_correction,
        weight_rounding=weight_rounding,
    )


def float_export(
    spec: ModelSpec,
    folded: nn.Module,
    fmt: str,
    versions: dict[str, str],
    model_ids: tuple[str, str] | None = None,
) -> Path:
    """The float export of the folded model, cached by weights + architecture + tool versions.

    ``model_ids``: (weights, architecture) hashes of the model actually exported when it is not
    ``spec``'s own (pruned, factorized)."""
    from edge_compress.zoo.data import cache_dir

    wid, aid = model_ids or (spec.weights_sha256, spec.arch_sha256)
    key = stable_hash(
        [
            wid,
            aid,
            list(spec.dataset.input_shape),
            fmt,
            versions.get("torch"),
            versions.get("onnx"),
            versions.get("litert_torch"),
        ]
    )[:24]
    d = cache_dir() / "export"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{spec.name}-{key}.{fmt}"
    if path.is_file() and path.stat().st_size > 0:
        return path
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    example = spec.example_input(1)
    if fmt == "onnx":
        from edge_compress.export.onnx import export_float_onnx

        export_float_onnx(folded, example, tmp)
    else:
        from edge_compress.export.tflite import convert_float_tflite

        convert_float_tflite(folded, example, tmp)
    os.replace(tmp, path)
    return path


def _sanitize(obj: Any) -> Any:
    """JSON-safe: non-finite floats -> None (an exact match has an infinite SQNR)."""
    if isinstance(obj, dict):
        return {k: _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# --------------------------------------------------------------------------------------------
# the pipeline


def compile_model(
    spec: ModelSpec,
    profile: DeviceProfile,
    *,
    budget: dict[str, float] | None = None,
    method: str = "hessian",
    alpha: float | None = None,
    formats: tuple[str, ...] | list[str] = FORMATS,
    out_dir: str | Path = "artifacts",
    parity_threshold: float = 0.99,
    parity_gate: bool = True,
    force: bool = False,
    plan: CompressionPlan | None = None,
    options: ExportOptions | None = None,
    progress: Callable[[str], None] | None = None,
    keep_float: list[str] | None = None,
    transforms: dict[str, Any] | None = None,
) -> Artifact:
    """Compile ``spec`` for ``profile`` into an artifact under ``out_dir`` (see module docstring).

    ``plan``: use this plan instead of planning (budget / method / alpha are then ignored; its
    layers are those of the transformed model).
    ``keep_float``: ONNX node names to leave unquantized (existing .onnx inputs).
    ``transforms``: settings per pre-quantization stage, e.g. ``{"prune": PruneConfig(flops=0.5),
    "factorize": FactorizeConfig("energy", 0.95)}``; a profile with ``budgets.flops_ratio`` (or a
    ``budget`` with ``flops_ratio``) prunes without one.

    Raises:
        UserError: bad input (exit 2); ParityError: a file disagrees with the simulation (exit 1).
    """
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; use one of {', '.join(METHODS)}.")
    budget = budget or None  # an empty budget means the profile's budgets
    formats = tuple(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"--format {','.join(formats) or '(empty)'}: use onnx, tflite or both.")
    if not 0.0 <= parity_threshold <= 1.0:
        raise UserError(f"--parity-threshold must be between 0 and 1, got {parity_threshold}.")
    opts = options or ExportOptions()
    opts = ExportOptions(**{**asdict(opts), "formats": formats})
    from edge_compress.export.compute import check_choice

    check_choice(opts.compute)
    if keep_float and spec.kind != "onnx":
        raise UserError("--keep-float names nodes of an existing .onnx model; it does not apply here.")
    if plan is not None and spec.kind != "torch":
        raise UserError(
            "--plan applies to torch models (zoo or module:factory); model files are planned from measurements."
        )
    if spec.kind != "torch" and transforms:
        asked = ", ".join(f"--{n}" for n, v in transforms.items() if getattr(v, "enabled", True))
        if asked:
            raise UserError(
                f"{asked} change a torch model before quantization; {spec.source} is an existing .{spec.kind} "
                "file (compile its PyTorch source as module:factory with --weights and --data instead)."
            )
    run_transforms = resolve_transforms(transforms, profile, budget) if spec.kind == "torch" else {}
    if plan is not None:
        _check_plan_transforms(plan, run_transforms)
    if spec.kind != "torch":
        from edge_compress.export.file_input import compile_file

        if opts.weight_rounding == "gptq":
            raise UserError(
                f"{spec.name}: GPTQ rounding needs the PyTorch model's layer inputs; an existing "
                f"{spec.kind.upper()} file is rounded to nearest (drop --rounding gptq, or compile the PyTorch "
                "source as module:factory with --weights and --data)."
            )

        return compile_file(
            spec,
            profile,
            budget=budget,
            method=method,
            formats=formats,
            out_dir=out_dir,
            parity_threshold=parity_threshold,
            parity_gate=parity_gate,
            force=force,
            options=opts,
            progress=progress,
            alpha=alpha,
            keep_float=keep_float,
        )
    versions = tool_versions()
    rkey = request_key(spec, profile, budget, method, alpha, opts, plan, versions, run_transforms)
    if not force:
        hit = find_cached(out_dir, rkey)
        if hit is not None:
            _gate_cached(hit, parity_threshold, parity_gate)
            return hit

    import torch

    from edge_compress.graph import extract_graph
    from edge_compress.quant.fakequant import (
        compute_quant_spec,
        fold_batchnorm,
        materialize,
        plan_layers_check,
        simulate,
    )
    from edge_compress.zoo.train import predict

    timer = _Timer(progress)
    ds = spec.dataset
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:
        assert spec.model is not None
        with timer("analyze"):
            model = spec.model.eval()
            graph = extract_graph(model, spec.example_input(2))
            calib = spec.calibration(opts.calibration_samples)
            ctx = CompileContext(spec, profile, model, graph, calib)
            fp32_acc = float(np.mean(predict(model, ds.x_test).argmax(1) == ds.y_test))
        ref_acc = fp32_acc  # float accuracy of the model that gets quantized
        model_ids = None
        if run_transforms:
            from edge_compress.modelspec import arch_sha256, state_dict_sha256

            stages = {t.name: t for t in TRANSFORMS}
            for name, settings in run_transforms.items():  # prune, then factorize
                with timer(name):
                    record = stages[name].run(ctx, settings)
                    ctx.records[name] = _sanitize(record or {})
            ctx.model.eval()
            ref_acc = float(np.mean(predict(ctx.model, ds.x_test).argmax(1) == ds.y_test))
            model_ids = (state_dict_sha256(ctx.model), arch_sha256(ctx.model))
        with timer("plan"):
            if plan is None:
                from edge_compress.plan import CompressionPlan

                # the files the planner budgets: the integer variants, and the weight-only ones where
                # the compute choice for a uniform int8 plan is float (the choice is made on the final
                # plan below: int4 layers can turn it back to integer)
                pre = _compute_choices(
                    ctx, CompressionPlan.uniform(ctx.graph, spec.name, profile.name, 8, 8), opts, budget
                )
                outputs = [("onnx", v) for v in dict.fromkeys(("qdq", pre["onnx"].variant))] * (
                    "onnx" in formats
                )
                tfl = list(dict.fromkeys([*opts.tflite_variants, *_tflite_variants(opts, pre)]))
                outputs += [("tflite", v) for v in tfl] * ("tflite" in formats)
                pbudget = _planner_budget(budget, profile, run_transforms)
                ctx.plan = _make_plan(
                    ctx, pbudget, method, alpha, outputs, opts.bias_correction, opts.weight_rounding or "gptq"
                )
            else:
                plan_layers_check(ctx.graph, plan)
                ctx.plan = copy.deepcopy(plan) if run_transforms else plan
                if not opts.bias_correction and ctx.plan.bias_correction:
                    ctx.plan = replace(ctx.plan, bias_correction=False)
                if opts.weight_rounding and opts.weight_rounding != ctx.plan.weight_rounding:
                    ctx.plan = replace(ctx.plan, weight_rounding=opts.weight_rounding)
            if run_transforms:
                _record_transforms(ctx.plan, ctx)
            the_plan = ctx.plan
        with timer("simulate"):
            folded0 = fold_batchnorm(ctx.model)
            qspec = compute_quant_spec(folded0, the_plan, calib)
            # the bias corrections become the float biases of the exported files, the GPTQ weights
            # their float weights (on the plan's grids, so each exporter's rounding keeps them)
            folded, qspec = materialize(folded0, qspec)
            export_ids = model_ids
            if folded is not folded0:  # the float export is cached by the corrected weights
                from edge_compress.modelspec import state_dict_sha256

                export_ids = (state_dict_sha256(folded), model_ids[1] if model_ids else spec.arch_sha256)
            sim = simulate(folded, qspec)
            wq = dict(simulate(folded, qspec, activations=False).named_modules())
            grid = {
                n: wq[n].weight.detach().numpy().copy()
                for n, lq in qspec.items()
                if lq.weight_bits is not None
            }
            sim_val, sim_test = predict(sim, ds.x_val), predict(sim, ds.x_test)
            sim_acc = float(np.mean(sim_test.argmax(1) == ds.y_test))
            sim_calib = predict(sim, calib)
            biased = biased_layers(ctx.graph, folded)
            choices = _compute_choices(ctx, the_plan, opts, budget, biased)
            # a local target (the compiler's own machine): both files of each format are timed here
            forced = (
                {
                    c: _compute_choices(ctx, the_plan, replace(opts, compute=c), budget, biased)
                    for c in ("integer", "float")
                }
                if _measures_compute(opts, profile, the_plan)
                else None
            )

        described = spec.describe()
        if model_ids is not None:  # the exported model is the transformed one
            described = {**described, "weights_sha256": model_ids[0], "arch_sha256": model_ids[1]}
        aid = artifact_id(
            described,
            the_plan.digest(),
            profile.model_dump(mode="json"),
            opts.to_json(),
            versions,
            transforms={n: _settings_json(v) for n, v in run_transforms.items()},
        )
        with ArtifactBuilder(out_dir, aid) as builder:
            files: list[ExportedFile] = []
            if "onnx" in formats:
                with timer("export_onnx"):
                    from edge_compress.export.onnx import export_onnx, tiny_layers

                    src = float_export(spec, folded, "onnx", versions, export_ids)
                    fc = (
                        tiny_layers(ctx.graph.layers, opts.onnx_float_compute_k)
                        if opts.onnx_float_compute_k
                        else set()
                    )

                    def onnx_file(choice: Any) -> Any:
                        if choice.compute == "float":
                            from edge_compress.export.onnx import export_onnx_weight_only

                            return export_onnx_weight_only(
                                src,
                                the_plan,
                                qspec,
                                grid,
                                builder.path(f"{spec.name}.weight-only.onnx"),
                                planned_bytes=0,
                            )
                        return export_onnx(
                            src,
                            the_plan,
                            qspec,
                            grid,
                            calib,
                            builder.path(f"{spec.name}.qdq.onnx"),
                            planned_bytes=0,
                            int8_weights=choice.int8_weights,
                            float_compute=fc,
                        )

                    if forced is None:
                        files.append(onnx_file(choices["onnx"]))
                    else:
                        kept, choices["onnx"] = _timed_here("onnx", choices["onnx"], forced, onnx_file, calib)
                        files.append(kept)
            if "tflite" in formats:
                with timer("export_tflite"):
                    from edge_compress.export.onnx import tiny_layers
                    from edge_compress.export.tflite import export_tflite

                    src = float_export(spec, folded, "tflite", versions, export_ids)
                    k = opts.onnx_float_compute_k
                    fc_tfl = tiny_layers(ctx.graph.layers, k) if k else set()
                    lo, hi = float(sim_calib.min()), float(sim_calib.max())
                    margin = 0.1 * (hi - lo)

                    def tflite_file(variant: str, widen: bool) -> Any:
                        return export_tflite(
                            src,
                            folded,
                            the_plan,
                            qspec,
                            grid,
                            calib,
                            builder.path(f"{spec.name}.{variant}.tflite"),
                            planned_bytes=0,
                            variant=variant,
                            output_range=(lo - margin, hi + margin),
                            float_compute=fc_tfl,
                            widen_int4=widen,
                        )

                    default = choices["tflite"].variant
                    for variant in _tflite_variants(opts, choices):
                        if forced is not None and variant == default:
                            kept, choices["tflite"] = _timed_here(
                                "tflite",
                                choices["tflite"],
                                forced,
                                lambda c: tflite_file(c.variant, c.widen_int4),
                                calib,
                            )
                            files.append(kept)
                        else:
                            files.append(tflite_file(variant, choices["tflite"].widen_int4))
            reports = []
            with timer("parity"):
                from edge_compress.export import parity

                for ef in files:
                    eff = effective_plan(the_plan, ef.layer_bits)
                    ef.planned_bytes = file_planned_bytes(eff, ctx.graph, folded, ef.format, ef.variant)
                    espec = effective_spec(folded, the_plan, qspec, ef.layer_bits)
                    if all(espec[n] is qspec[n] for n in qspec):
                        sv, st = sim_val, sim_test
                    else:
                        esim = simulate(folded, espec)
                        sv, st = predict(esim, ds.x_val), predict(esim, ds.x_test)
                    reports.append(
                        parity.measure(
                            ef.path,
                            ef.format,
                            ef.variant,
                            sv,
                            ds.x_val,
                            sim_test=st,
                            x_test=ds.x_test,
                            y_test=ds.y_test,
                            threshold=parity_threshold,
                            exact_int8=default_int8_weights(profile) == "int8",
                        )
                    )
                if parity_gate:
                    parity.check(reports)
            with timer("write"):
                fallbacks = [f for ef in files for f in ef.fallbacks]
                for layer in the_plan.layers.values():
                    mine = [f.describe() for f in fallbacks if f.layer == layer.name]
                    layer.fallback = "; ".join(mine) if mine else None
                the_plan.save(builder.path("plan.json"))
                manifest = _manifest(
                    aid,
                    rkey,
                    spec,
                    profile,
                    the_plan,
                    ctx,
                    files,
                    reports,
                    fp32_acc,
                    ref_acc,
                    sim_acc,
                    opts,
                    versions,
                    budget,
                    method,
                    alpha,
                    timer.stages,
                    choices,
                )
                path = builder.commit(f"{spec.name}-{aid[:12]}", manifest, replace=True)
            manifest["stages_s"] = dict(timer.stages)
            _rewrite_stages(path, timer.stages)
    finally:
        torch.set_num_threads(threads)
    from edge_compress.artifact import load_artifact

    art = load_artifact(path, verify=False)
    art.stages_s = dict(timer.stages)
    return art


def _rewrite_stages(path: Path, stages: dict[str, float]) -> None:
    """The write stage's own time is known only after the rename: update it in place (atomic)."""
    import json

    mf = path / "manifest.json"
    data = json.loads(mf.read_text(encoding="utf-8"))
    data["stages_s"] = dict(stages)
    data["stages_s"]["total"] = round(sum(v for k, v in stages.items() if k != "total"), 3)
    tmp = mf.with_name(mf.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, mf)


def _gate_cached(art: Artifact, threshold: float, gate: bool) -> None:
    from edge_compress.export.parity import ParityError

    if not gate:
        return
    for name, r in (art.manifest.get("parity") or {}).items():
        agree = r.get("agreement")
        if agree is not None and agree < threshold:
            raise ParityError(
                f"{name}: the cached artifact's top-1 agreement {agree:.4f} is below the threshold {threshold:g}; "
                "rerun with --no-parity-gate to keep it, or --force to rebuild."
            )


def _manifest(
    aid: str,
    rkey: str,
    spec: ModelSpec,
    profile: DeviceProfile,
    plan: CompressionPlan,
    ctx: CompileContext,
    files: list[ExportedFile],
    reports: list[Any],
    fp32_acc: float,
    ref_acc: float,
    sim_acc: float,
    opts: ExportOptions,
    versions: dict[str, str],
    budget: dict[str, float] | None,
    method: str,
    alpha: float | None,
    stages: dict[str, float],
    choices: dict[str, Any] | None = None,
) -> dict[str, Any]:
    layers: dict[str, Any] = {}
    for ef in files:
        layers[ef.path.name] = {
            n: {"weight_bits": wb, "act_bits": ab, "op": ef.layer_map.get(n)}
            for n, (wb, ab) in ef.layer_bits.items()
        }
    return _sanitize(
        {
            "id": aid,
            "created": now_iso(),
            "request_key": rkey,
            "model": spec.describe(),
            "profile": {"name": profile.name, "sha256": stable_hash(profile.model_dump(mode="json"))},
            "plan": "plan.json",
            "plan_digest": plan.digest(),
            "quantizer": plan.quantizer(),
            "method": plan.method or method,
            "budget": budget or {},
            "alpha": alpha,
            "files": {
                ef.path.name: {
                    "sha256": "",
                    "bytes": 0,
                    "format": ef.format,
                    "variant": ef.variant,
                    "planned_bytes": ef.planned_bytes,
                }
                for ef in files
            },
            "sidecars": {
                ef.path.name: {k: v.name for k, v in ef.sidecars.items()} for ef in files if ef.sidecars
            },
            "io": {ef.path.name: ef.io for ef in files},
            "layers": layers,
            "parity": {r.file: r.to_json() for r in reports},
            "accuracy": {
                "fp32": fp32_acc,
                **({"transformed": ref_acc} if ctx.records else {}),
                "predicted": _predicted_acc(plan, ref_acc),
                "simulated": sim_acc,
                "runtime": {r.file: r.runtime_accuracy for r in reports},
            },
            "predicted": dict(plan.predicted),
            "planned_bytes": planned_bytes(plan, ctx.graph),
            "fallbacks": [f.to_json() for ef in files for f in ef.fallbacks],
            "notes": ctx.notes + [n for ef in files for n in ef.notes],
            "transforms": list(ctx.records),
            **ctx.records,
            "export_options": opts.to_json(),
            # per format: integer or float compute, the predicted latencies behind the choice, how to get the other
            "compute": {f: c.to_json() for f, c in (choices or {}).items() if f in opts.formats},
            "versions": versions,
            "stages_s": dict(stages),
        }
    )


def _compute_choices(
    ctx: CompileContext,
    plan: CompressionPlan,
    opts: ExportOptions,
    budget: dict[str, float] | None,
    biased: set[str] | None = None,
) -> dict[str, Any]:
    """Format -> :class:`~edge_compress.export.compute.ComputeChoice` of its default file."""
    from edge_compress.export.compute import choose
    from edge_compress.export.onnx import tiny_layers

    k = opts.onnx_float_compute_k
    fc = tiny_layers(ctx.graph.layers, k) if k else set()
    limit = (ctx.profile.budgets.active() if budget is None else budget).get("model_bytes")
    out = {
        f: choose(opts.compute, f, ctx.profile, ctx.graph, plan, fc, budget_bytes=limit, biased=biased)
        for f in FORMATS
    }
    if out["onnx"].compute == "integer":  # the storage the QDQ file gets (an explicit option wins)
        storage = resolve_int8_weights(opts.onnx_int8_weights, ctx.profile)
        out["onnx"] = replace(out["onnx"], int8_weights=storage)
    return out


def _measures_compute(opts: ExportOptions, profile: DeviceProfile, plan: CompressionPlan) -> bool:
    """Whether ``compute: auto`` times both files here: the profile is this machine (``transport:
    local``), the option allows it, and some layer is quantized (else both files are the same)."""
    return (
        opts.compute == "auto"
        and opts.measure_compute
        and profile.transport == "local"
        and any(d.weight_bits is not None for d in plan.layers.values())
    )


def _timed_here(
    fmt: str, predicted: Any, forced: dict[str, dict[str, Any]], export: Any, calib: np.ndarray
) -> tuple[Any, Any]:
    """Export ``fmt``'s integer and float files, time both on this machine, keep the faster.

    Returns (the kept :class:`ExportedFile`, its ComputeChoice); the other file (and its TFLite
    recipe) is deleted. When the other file cannot be written or the two cannot be timed here, the
    predicted file is kept and its reason says why it was not timed.
    """
    from edge_compress.export.base import last_error_line
    from edge_compress.export.compute import measure_here, measured_choice

    cands = {c: forced[c][fmt] for c in ("integer", "float")}
    made = {predicted.compute: export(cands[predicted.compute])}
    other = "float" if predicted.compute == "integer" else "integer"
    try:
        made[other] = export(cands[other])
        m = measure_here({c: f.path for c, f in made.items()}, fmt, calib[:1])
    except Exception as e:  # noqa: BLE001 - the predicted file stands; say why it was not timed
        if other in made:
            _delete_file(Path(made[other].path))
        why = last_error_line(str(e)) or type(e).__name__
        return made[predicted.compute], replace(
            predicted, reason=predicted.reason + f" (not timed here: the {other} file failed: {why[:160]})"
        )
    choice = measured_choice(predicted, cands, m)
    _delete_file(Path(made["float" if choice.compute == "integer" else "integer"].path))
    return made[choice.compute], choice


def _delete_file(path: Path) -> None:
    """An exported file that is not kept, and its TFLite recipe."""
    for f in (path, path.with_name(f"{path.stem}.recipe.json")):
        f.unlink(missing_ok=True)


def _tflite_variants(opts: ExportOptions, choices: dict[str, Any]) -> list[str]:
    """The TFLite variants to write: the int8 variant becomes weight-only under float compute."""
    out = [choices["tflite"].variant if v == "int8" else v for v in opts.tflite_variants]
    return list(dict.fromkeys(out))


def _planner_budget(
    budget: dict[str, float] | None, profile: DeviceProfile, run: dict[str, Any]
) -> dict[str, float] | None:
    """The budget for the quantization planner: a FLOPs budget the pruning stage met is not its to enforce."""
    if "prune" not in run:
        return budget
    base = dict(profile.budgets.active() if budget is None else budget)
    base.pop("flops_ratio", None)
    return base


def _check_plan_transforms(plan: CompressionPlan, run: dict[str, Any]) -> None:
    """A given plan.json that records pruning / factorization needs the same stages in this request."""
    recorded = set(plan.transforms)
    for d in plan.layers.values():
        if d.keep_channels is not None:
            recorded.add("prune")
        if d.rank is not None:
            recorded.add("factorize")
    missing = sorted(recorded - set(run))
    if missing:
        raise UserError(
            f"the plan records {' and '.join(missing)} ({', '.join('--' + m for m in missing)}), which this "
            "request does not run; give the same options as the compile that wrote it."
        )


def _record_transforms(plan: CompressionPlan, ctx: CompileContext) -> None:
    """Write what the transform stages did into the plan: kept channels (indices of the original
    layer's output channels) on the layers that still exist, and a ``transforms`` section."""
    plan.transforms = {}
    for d in plan.layers.values():
        d.keep_channels = None
    pr = ctx.records.get("prune")
    if pr is not None:
        for name, kept in pr.get("kept", {}).items():
            d = plan.layers.get(name)
            if d is not None:
                d.keep_channels = [int(c) for c in kept]
                d.why = (d.why + "; " if d.why else "") + f"pruned to {len(kept)} channels"
        plan.transforms["prune"] = {
            **{
                k: pr.get(k)
                for k in ("method", "flops_budget", "channel_multiple", "finetune_epochs", "kept")
            },
            "flops_ratio": pr["flops"]["ratio"],
        }
        plan.predicted["flops_ratio"] = pr["flops"]["ratio"]
    fr = ctx.records.get("factorize")
    if fr is not None:
        plan.transforms["factorize"] = {
            "mode": fr.get("mode"),
            "value": fr.get("value"),
            "layers": {
                n: {k: v[k] for k in ("rank", "full_rank", "how", "into")} for n, v in fr["layers"].items()
            },
        }
        for name, v in fr["layers"].items():
            for sub in v["into"]:
                d = plan.layers.get(sub)
                if d is not None:
                    d.why = (
                        d.why + "; " if d.why else ""
                    ) + f"{v['how']} factor of {name} at rank {v['rank']}"


def _predicted_acc(plan: CompressionPlan, fp32_acc: float) -> float | None:
    """fp32 test accuracy minus the planner's predicted drop (``acc_drop_pp``, percentage points)."""
    p = plan.predicted
    if "acc_drop_pp" in p and p["acc_drop_pp"] is not None and math.isfinite(float(p["acc_drop_pp"])):
        return float(fp32_acc - float(p["acc_drop_pp"]) / 100.0)
    return None


# --------------------------------------------------------------------------------------------
# built-in transform stages: pruning, then factorization (their modules import torch when they run)


def _run_prune(ctx: CompileContext, settings: Any) -> dict[str, Any]:
    from edge_compress.prune.stage import run_prune

    return run_prune(ctx, settings)


def _resolve_prune(settings: Any, profile: DeviceProfile, budget: dict[str, float] | None) -> Any:
    from edge_compress.prune.config import resolve_prune

    return resolve_prune(settings, profile, budget)


def _run_factorize(ctx: CompileContext, settings: Any) -> dict[str, Any]:
    from edge_compress.factorize.stage import run_factorize

    return run_factorize(ctx, settings)


register_transform("prune", _run_prune, _resolve_prune)
register_transform("factorize", _run_factorize)
