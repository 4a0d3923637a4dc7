"""The compiler pipeline: model + device profile (+ budgets) -> Artifact (files + plan + manifest).

Stages (timed, in ``manifest["stages_s"]``):

``analyze``        graph (layers, MACs, precision groups), fp32 accuracy
``transform``      the registered :data:`TRANSFORMS` in order: structured pruning and low-rank
                   factorization plug in here (they change the float model and its graph before
                   any quantization decision); none is registered by default
``plan``           the quantization planner (``edge_compress.quant.planner.plan_model``)
``simulate``       BN folding, the plan's exact scales, the torch simulation
``export_onnx``    QDQ ONNX (:mod:`edge_compress.export.onnx`)
``export_tflite``  static int8 / int4 TFLite, float-I/O and full-integer variants (:mod:`edge_compress.export.tflite`)
``parity``         every file in its real runtime vs the simulation (:mod:`edge_compress.export.parity`)
``write``          plan.json (with fallbacks), manifest.json, atomic rename into place

A request already compiled into ``out_dir`` is found before any of this (``Artifact.cached``,
no stage timings); ``force=True`` rebuilds it. Existing .onnx / .tflite inputs take their own
pipeline (:mod:`edge_compress.export.onnx_input`, :mod:`edge_compress.export.tflite_input`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
    # 8-bit layers get a 7-bit grid, recorded as fallbacks)
    onnx_int8_weights: str = "uint8"
    # first-layer convs with a smaller reduction (cin x kernel area) run float on their weight grid,
    # in ONNX and in the TFLite int8 variant (0: never); the name is kept for existing callers
    onnx_float_compute_k: int = 32
    calibration_samples: int = 256

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


@dataclass
class CompileContext:
    """What the stages share. Transform hooks may replace ``model`` and ``graph`` (pruned,
    factorized) and append ``notes``; ``plan`` is set by the plan stage."""

    spec: ModelSpec
    profile: DeviceProfile
    model: nn.Module
    graph: ModelGraph
    calib_x: np.ndarray
    notes: list[str] = field(default_factory=list)
    plan: CompressionPlan | None = None


Transform = Callable[[CompileContext], None]
# (name, function) applied in order before quantization: the pruning / factorization hook.
TRANSFORMS: list[tuple[str, Transform]] = []


def register_transform(name: str, fn: Transform) -> None:
    """Add (or replace) a pre-quantization stage, e.g. ``register_transform("prune", prune_stage)``."""
    for i, (n, _) in enumerate(TRANSFORMS):
        if n == name:
            TRANSFORMS[i] = (name, fn)
            return
    TRANSFORMS.append((name, fn))


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
            "transforms": [n for n, _ in TRANSFORMS],
            "versions": versions,
        }
    )


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
        return CompressionPlan.uniform(ctx.graph, ctx.spec.name, ctx.profile.name, bits, 8)
    return plan_model(
        ctx.model,
        ctx.graph,
        ctx.profile,
        ctx.calib_x,
        eval_x=ds.x_val,
        eval_y=ds.y_val,
        budget=budget or None,
        method=method,
        alpha=alpha,
        model_name=ctx.spec.name,
        file_formats=files or None,
    )


def float_export(spec: ModelSpec, folded: nn.Module, fmt: str, versions: dict[str, str]) -> Path:
    """The float export of the folded model, cached by weights + architecture + tool versions."""
    from edge_compress.zoo.data import cache_dir

    key = stable_hash(
        [
            spec.weights_sha256,
            spec.arch_sha256,
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
) -> Artifact:
    """Compile ``spec`` for ``profile`` into an artifact under ``out_dir`` (see module docstring).

    ``plan``: use this plan instead of planning (budget / method / alpha are then ignored).
    ``keep_float``: ONNX node names to leave unquantized (existing .onnx inputs).

    Raises:
        UserError: bad input (exit 2); ParityError: a file disagrees with the simulation (exit 1).
    """
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; use one of {', '.join(METHODS)}.")
    formats = tuple(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"--format {','.join(formats) or '(empty)'}: use onnx, tflite or both.")
    if not 0.0 <= parity_threshold <= 1.0:
        raise UserError(f"--parity-threshold must be between 0 and 1, got {parity_threshold}.")
    opts = options or ExportOptions(onnx_int8_weights=default_int8_weights(profile))
    opts = ExportOptions(**{**asdict(opts), "formats": formats})
    if keep_float and spec.kind != "onnx":
        raise UserError("--keep-float names nodes of an existing .onnx model; it does not apply here.")
    if plan is not None and spec.kind != "torch":
        raise UserError(
            "--plan applies to torch models (zoo or module:factory); model files are planned from measurements."
        )
    if spec.kind != "torch":
        from edge_compress.export.file_input import compile_file

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
    rkey = request_key(spec, profile, budget, method, alpha, opts, plan, versions)
    if not force:
        hit = find_cached(out_dir, rkey)
        if hit is not None:
            _gate_cached(hit, parity_threshold, parity_gate)
            return hit

    import torch

    from edge_compress.graph import extract_graph
    from edge_compress.quant.fakequant import compute_quant_spec, fold_batchnorm, plan_layers_check, simulate
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
        if TRANSFORMS:
            with timer("transform"):
                for _name, fn in TRANSFORMS:  # prune / factorize: change ctx.model and ctx.graph
                    fn(ctx)
        with timer("plan"):
            if plan is None:
                outputs = [("onnx", "qdq")] * ("onnx" in formats)
                outputs += [("tflite", v) for v in opts.tflite_variants] * ("tflite" in formats)
                ctx.plan = _make_plan(ctx, budget, method, alpha, outputs)
            else:
                plan_layers_check(ctx.graph, plan)
                ctx.plan = plan
            the_plan = ctx.plan
        with timer("simulate"):
            folded = fold_batchnorm(ctx.model)
            qspec = compute_quant_spec(folded, the_plan, calib)
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

        aid = artifact_id(
            spec.describe(), the_plan.digest(), profile.model_dump(mode="json"), opts.to_json(), versions
        )
        with ArtifactBuilder(out_dir, aid) as builder:
            files: list[ExportedFile] = []
            if "onnx" in formats:
                with timer("export_onnx"):
                    from edge_compress.export.onnx import export_onnx, tiny_layers

                    src = float_export(spec, folded, "onnx", versions)
                    fc = (
                        tiny_layers(ctx.graph.layers, opts.onnx_float_compute_k)
                        if opts.onnx_float_compute_k
                        else set()
                    )
                    files.append(
                        export_onnx(
                            src,
                            the_plan,
                            qspec,
                            grid,
                            calib,
                            builder.path(f"{spec.name}.qdq.onnx"),
                            planned_bytes=0,
                            int8_weights=opts.onnx_int8_weights,
                            float_compute=fc,
                        )
                    )
            if "tflite" in formats:
                with timer("export_tflite"):
                    from edge_compress.export.onnx import tiny_layers
                    from edge_compress.export.tflite import export_tflite

                    src = float_export(spec, folded, "tflite", versions)
                    k = opts.onnx_float_compute_k
                    fc_tfl = tiny_layers(ctx.graph.layers, k) if k else set()
                    lo, hi = float(sim_calib.min()), float(sim_calib.max())
                    margin = 0.1 * (hi - lo)
                    for variant in opts.tflite_variants:
                        files.append(
                            export_tflite(
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
                            )
                        )
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
                    sim_acc,
                    opts,
                    versions,
                    budget,
                    method,
                    alpha,
                    timer.stages,
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
    sim_acc: float,
    opts: ExportOptions,
    versions: dict[str, str],
    budget: dict[str, float] | None,
    method: str,
    alpha: float | None,
    stages: dict[str, float],
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
                "predicted": _predicted_acc(plan, fp32_acc),
                "simulated": sim_acc,
                "runtime": {r.file: r.runtime_accuracy for r in reports},
            },
            "predicted": dict(plan.predicted),
            "planned_bytes": planned_bytes(plan, ctx.graph),
            "fallbacks": [f.to_json() for ef in files for f in ef.fallbacks],
            "notes": ctx.notes + [n for ef in files for n in ef.notes],
            "transforms": [n for n, _ in TRANSFORMS],
            "export_options": opts.to_json(),
            "versions": versions,
            "stages_s": dict(stages),
        }
    )


def _predicted_acc(plan: CompressionPlan, fp32_acc: float) -> float | None:
    """fp32 test accuracy minus the planner's predicted drop (``acc_drop_pp``, percentage points)."""
    p = plan.predicted
    if "acc_drop_pp" in p and p["acc_drop_pp"] is not None and math.isfinite(float(p["acc_drop_pp"])):
        return float(fp32_acc - float(p["acc_drop_pp"]) / 100.0)
    return None
