"""Compile an existing .onnx or float .tflite file (no torch model): measured-noise plan, quantize,
parity against the file's own fake-quant simulation, artifact.

Sensitivity has no gradients here: it is the measured output-noise gain of each weight tensor
(noise injection in the runtime), times the measured weight quantization error at each bit-width;
the ILP of :mod:`edge_compress.quant.allocate` picks the bits under the byte budget.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_compress.artifact import (
    Artifact,
    ArtifactBuilder,
    artifact_id,
    find_cached,
    load_artifact,
    now_iso,
    stable_hash,
    tool_versions,
)
from edge_compress.errors import UserError
from edge_compress.export.base import Fallback, bits_label

if TYPE_CHECKING:
    from edge_compress.compiler import ExportOptions
    from edge_compress.modelspec import ModelSpec
    from edge_compress.plan import CompressionPlan
    from edge_compress.profiles import DeviceProfile


def allocate(
    layers: list[tuple[str, str, Callable[[int | None], float]]],
    cost: dict[tuple[str, int], float],
    profile: DeviceProfile,
    *,
    method: str,
    budget: dict[str, float] | None,
    alpha: float | None,
) -> tuple[dict[str, int], dict[str, float]]:
    """Bits per layer minimising the summed predicted output noise under the byte budget.

    ``layers``: (name, kind, bytes(bits)) ; ``cost[(name, bits)]``: predicted output noise power.
    """
    from edge_compress.quant.allocate import Constraint, allocate_bits

    options = {}
    for name, kind, _ in layers:
        allowed = [b for b in profile.weight_bits(kind) if b in (4, 8)] or [8]
        if method == "uniform8":
            allowed = [8] if 8 in allowed else [max(allowed)]
        elif method == "uniform4":
            allowed = [min(allowed)]
        options[name] = sorted(allowed)
    nbytes = {(n, b): f(b) for n, _, f in layers for b in options[n]}
    limit = (budget or {}).get("model_bytes") or profile.budgets.model_bytes
    lo = sum(min(nbytes[(n, b)] for b in options[n]) for n in options)
    hi = sum(max(nbytes[(n, b)] for b in options[n]) for n in options)
    if alpha is not None:
        limit = lo + float(alpha) * (hi - lo)
    constraints = [Constraint("model_bytes", nbytes, float(limit), " bytes")] if limit else []
    alloc = allocate_bits(options, cost, constraints, profile=profile.name)
    pred = {
        "model_bytes": float(sum(nbytes[(n, b)] for n, b in alloc.bits.items())),
        "noise_power": float(sum(cost[(n, b)] for n, b in alloc.bits.items())),
        "min_bytes": float(lo),
        "int8_bytes": float(hi),
    }
    return alloc.bits, pred


def _formats_for(kind: str, formats: tuple[str, ...], notes: list[str]) -> None:
    if kind not in formats:
        raise UserError(f"an existing .{kind} model is exported as .{kind} only; add {kind} to --format.")
    other = [f for f in formats if f != kind]
    if other:
        notes.append(
            f"an existing .{kind} model is exported as .{kind} only (no {', '.join(other)} conversion)."
        )


def compile_file(
    spec: ModelSpec,
    profile: DeviceProfile,
    *,
    budget: dict[str, float] | None,
    method: str,
    formats: tuple[str, ...],
    out_dir: str | Path,
    parity_threshold: float,
    parity_gate: bool,
    force: bool,
    options: ExportOptions,
    progress: Callable[[str], None] | None = None,
    alpha: float | None = None,
    keep_float: list[str] | None = None,
) -> Artifact:
    from edge_compress.compiler import _gate_cached, _sanitize, _Timer

    notes: list[str] = []
    _formats_for(spec.kind, formats, notes)
    if options.compute != "auto":
        how = "QDQ (integer compute)" if spec.kind == "onnx" else "weight-only (float compute)"
        notes.append(
            f"--compute {options.compute} applies to models compiled from PyTorch; an existing .{spec.kind} "
            f"model is exported {how}."
        )
    if method == "hessian":
        notes.append(
            "no gradients in a model file: sensitivity is the measured output-noise gain (noise injection), not a Hessian."
        )
    versions = tool_versions()
    rkey = stable_hash(
        {
            "model": spec.describe(),
            "profile": profile.model_dump(mode="json"),
            "budget": budget or {},
            "method": method,
            "alpha": alpha,
            "options": options.to_json(),
            "keep_float": keep_float or [],
            "versions": versions,
            "data": [
                spec.dataset.name,
                len(spec.dataset.x_train),
                float(spec.calibration(options.calibration_samples).sum()),
            ],
        }
    )
    if not force:
        hit = find_cached(out_dir, rkey)
        if hit is not None:
            _gate_cached(hit, parity_threshold, parity_gate)
            return hit
    timer = _Timer(progress)
    run = _compile_onnx if spec.kind == "onnx" else _compile_tflite
    path = run(
        spec,
        profile,
        budget,
        method,
        alpha,
        out_dir,
        parity_threshold,
        parity_gate,
        options,
        notes,
        timer,
        rkey,
        versions,
        keep_float or [],
        _sanitize,
    )
    art = load_artifact(path, verify=False)
    art.stages_s = dict(timer.stages)
    return art


def _common_manifest(
    aid: str,
    rkey: str,
    spec: ModelSpec,
    profile: DeviceProfile,
    plan: CompressionPlan,
    method: str,
    budget: dict[str, float] | None,
    alpha: float | None,
    versions: dict[str, str],
    options: ExportOptions,
) -> dict[str, Any]:
    return {
        "id": aid,
        "created": now_iso(),
        "request_key": rkey,
        "model": spec.describe(),
        "profile": {"name": profile.name, "sha256": stable_hash(profile.model_dump(mode="json"))},
        "plan": "plan.json",
        "plan_digest": plan.digest(),
        "quantizer": plan.quantizer(),
        "method": plan.method,
        "budget": budget or {},
        "alpha": alpha,
        "predicted": dict(plan.predicted),
        "planned_bytes": plan.predicted.get("model_bytes"),
        "export_options": options.to_json(),
        "versions": versions,
        "transforms": [],
    }


def _make_plan(
    spec: ModelSpec,
    profile: DeviceProfile,
    bits: dict[str, int],
    kinds: dict[str, str],
    cost: dict[tuple[str, int], float],
    nbytes: dict[str, Callable[[int | None], float]],
    pred: dict[str, float],
    method: str,
    budget: dict[str, float] | None,
    signal: float,
) -> CompressionPlan:
    from edge_compress.plan import CompressionPlan, LayerDecision

    layers = {}
    for n, b in bits.items():
        sens = {str(k): v for (ln, k), v in cost.items() if ln == n}
        layers[n] = LayerDecision(
            n,
            kinds[n],
            b,
            8,
            sensitivity=sens,
            predicted={"bytes": nbytes[n](b), "noise_power": cost.get((n, b), 0.0)},
            why=f"measured noise gain x weight error; {b}-bit chosen by the ILP",
        )
    plan = CompressionPlan(
        spec.name,
        profile.name,
        layers,
        method=f"{method}-measured" if method in ("hessian", "noise") else method,
        budget=dict(budget or {}),
        bias_correction=False,  # the file's biases are kept as they are
        weight_rounding="nearest",  # rounded by the file quantizers (no layer inputs in torch)
    )
    plan.predicted = dict(pred)
    if signal > 0 and pred.get("noise_power", 0) > 0:
        plan.predicted["sqnr_db"] = 10 * math.log10(signal / pred["noise_power"])
    return plan


# --------------------------------------------------------------------------------------------
# ONNX


def _compile_onnx(
    spec,
    profile,
    budget,
    method,
    alpha,
    out_dir,
    threshold,
    gate,
    options,
    notes,
    timer,
    rkey,
    versions,
    keep_float,
    sanitize,
) -> Path:
    import onnx

    from edge_compress.export import onnx_input as oi
    from edge_compress.export import parity
    from edge_compress.export.onnx import export_onnx, inspect_qdq
    from edge_compress.quant.fakequant import LayerQuant, _range, act_quant_from_range

    ds = spec.dataset
    calib = spec.calibration(options.calibration_samples)
    with timer("analyze"):
        model = oi.load_checked(spec.path, keep_float)
        weights = oi.find_weights(model, keep_float)
        fb = oi.input_batch(model)
        if fb is not None and fb > 1:
            raise UserError(
                f"{spec.path}: the input batch is fixed at {fb}; export the model with a dynamic (or unit) batch."
            )
        fsess = oi.session(model)
        try:
            ref_val = oi.run(fsess, ds.x_val, fb)
        except Exception as e:  # noqa: BLE001 - shape mismatch with the data
            raise UserError(
                f"{spec.path}: the model does not run on the data's samples of shape {ds.input_shape} ({str(e).splitlines()[0][:160]})."
            ) from None
        fp32_acc = float(np.mean(oi.run(fsess, ds.x_test, fb).argmax(1) == ds.y_test))
    inits = {i.name: i for i in model.graph.initializer}
    from onnx import numpy_helper

    arrays = {
        w.layer: oi.torch_layout(numpy_helper.to_array(inits[w.initializer]).astype(np.float32), w)
        for w in weights
    }
    with timer("plan"):
        kinds = {w.layer: w.kind for w in weights}
        nbytes = {w.layer: (lambda b, w=w: oi.weight_bytes(w, b)) for w in weights}
        cost: dict[tuple[str, int], float] = {}
        gains = (
            oi.noise_gains(model, weights, calib[:128])
            if method in ("hessian", "noise")
            else {w.layer: 1.0 for w in weights}
        )
        for w in weights:
            for b in (4, 8):
                cost[(w.layer, b)] = gains[w.layer] * oi.quant_error(arrays[w.layer], b)[0]
        bits, pred = allocate(
            [(w.layer, w.kind, nbytes[w.layer]) for w in weights],
            cost,
            profile,
            method=method,
            budget=budget,
            alpha=alpha,
        )
        plan = _make_plan(
            spec, profile, bits, kinds, cost, nbytes, pred, method, budget, float(np.mean(ref_val**2))
        )
    with timer("simulate"):
        # activation grids: input of every weighted node on calibration data (MSE clipping, as the torch path)
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        nodes = {n.name: n for n in probe.graph.node}
        wanted = {w.layer: nodes[w.node].input[0] for w in weights}
        existing = {o.name for o in probe.graph.output}
        for t in sorted(set(wanted.values()) - existing):
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
        psess = oi.session(probe, optimize=False)
        names = [o.name for o in psess.get_outputs()]
        feeds_name = psess.get_inputs()[0].name
        got: dict[str, list[np.ndarray]] = {t: [] for t in set(wanted.values())}
        step = fb or 64
        for i in range(0, len(calib), step):
            outs = psess.run(None, {feeds_name: np.ascontiguousarray(calib[i : i + step])})
            for nm, o in zip(names, outs, strict=True):
                if nm in got:
                    got[nm].append(np.asarray(o).reshape(-1))
        qspec: dict[str, LayerQuant] = {}
        grid: dict[str, np.ndarray] = {}
        import torch

        from edge_compress.quant.fakequant import quantize_weight

        for w in weights:
            b = bits[w.layer]
            q, scale = quantize_weight(torch.from_numpy(arrays[w.layer]), b, True, "mse")
            grid[w.layer] = q.numpy()
            x = np.concatenate(got[wanted[w.layer]])
            lo, hi = _range(x, "mse", 8)
            qspec[w.layer] = LayerQuant(
                w.layer, b, scale.numpy().astype(np.float32), act_quant_from_range(lo, hi, 8), (lo, hi)
            )
    aid = artifact_id(
        spec.describe(), plan.digest(), profile.model_dump(mode="json"), options.to_json(), versions
    )
    with ArtifactBuilder(out_dir, aid) as builder, tempfile.TemporaryDirectory(prefix="ec-in-") as tmp:
        with timer("export_onnx"):
            src = Path(tmp) / "float.onnx"
            oi.save_model(model, src)
            fc = set()
            if options.onnx_float_compute_k:
                for w in weights:
                    if w.kind == "conv" and math.prod(w.shape[1:]) < options.onnx_float_compute_k:
                        fc.add(w.layer)
            out = builder.path(f"{spec.name}.qdq.onnx")
            from edge_compress.compiler import default_int8_weights

            ef = export_onnx(
                src,
                plan,
                qspec,
                grid,
                calib,
                out,
                planned_bytes=0,
                # no compute choice is made for file inputs: auto is the exact storage for the profile
                int8_weights=(
                    default_int8_weights(profile)
                    if options.onnx_int8_weights == "auto"
                    else options.onnx_int8_weights
                ),
                float_compute=fc,
                static_batch=fb == 1,
                weight_names={w.layer: w.initializer for w in weights},
                keep_float=keep_float,
            )
            ef.planned_bytes = int(sum(oi.weight_bytes(w, ef.layer_bits[w.layer][0]) for w in weights))
        with timer("parity"):
            qm = onnx.load(str(out))
            found = inspect_qdq(qm, list(bits))
            ref = oi.session(qm, optimize=False)  # the QDQ graph evaluated in float: the simulation
            sim_val, sim_test = oi.run(ref, ds.x_val, fb), oi.run(ref, ds.x_test, fb)
            from edge_compress.compiler import default_int8_weights

            report = parity.measure(
                out,
                "onnx",
                "qdq",
                sim_val,
                ds.x_val,
                sim_test=sim_test,
                x_test=ds.x_test,
                y_test=ds.y_test,
                threshold=threshold,
                exact_int8=default_int8_weights(profile) == "int8",
            )
            sim_acc = float(np.mean(sim_test.argmax(1) == ds.y_test))
            fp32_agree = float(np.mean(sim_val.argmax(1) == ref_val.argmax(1)))
            if gate:
                parity.check([report])
        with timer("write"):
            for f in ef.fallbacks:
                plan.layers[f.layer].fallback = f.describe()
            plan.save(builder.path("plan.json"))
            manifest = _common_manifest(
                aid, rkey, spec, profile, plan, method, budget, None, versions, options
            )
            manifest.update(
                {
                    "files": {
                        out.name: {
                            "sha256": "",
                            "bytes": 0,
                            "format": "onnx",
                            "variant": "qdq",
                            "planned_bytes": ef.planned_bytes,
                        }
                    },
                    "io": {out.name: ef.io},
                    "layers": {
                        out.name: {
                            n: {
                                "weight_bits": wb,
                                "act_bits": ab,
                                "op": ef.layer_map.get(n),
                                "weight_dtype": found.get(n, {}).get("weight_dtype"),
                            }
                            for n, (wb, ab) in ef.layer_bits.items()
                        }
                    },
                    "parity": {out.name: report.to_json()},
                    "accuracy": {
                        "fp32": fp32_acc,
                        "predicted": None,
                        "simulated": sim_acc,
                        "runtime": {out.name: report.runtime_accuracy},
                        "simulation_vs_fp32_agreement": fp32_agree,
                    },
                    "sensitivity": {"method": "noise injection (onnxruntime)", "gains": gains},
                    "fallbacks": [f.to_json() for f in ef.fallbacks],
                    "notes": notes
                    + ef.notes
                    + [
                        "simulation = the QDQ graph run with onnxruntime graph optimizations disabled (fake quantization)."
                    ],
                    "stages_s": dict(timer.stages),
                }
            )
            path = builder.commit(f"{spec.name}-{aid[:12]}", sanitize(manifest), replace=True)
    from edge_compress.compiler import _rewrite_stages

    _rewrite_stages(path, timer.stages)
    return path


# --------------------------------------------------------------------------------------------
# TFLite


def _compile_tflite(
    spec,
    profile,
    budget,
    method,
    alpha,
    out_dir,
    threshold,
    gate,
    options,
    notes,
    timer,
    rkey,
    versions,
    keep_float,
    sanitize,
) -> Path:
    import torch

    from edge_compress.export import parity
    from edge_compress.export import tflite_input as ti
    from edge_compress.export.tflite import _tensor_array, read_tflite, write_tflite
    from edge_compress.quant.fakequant import quantize_weight

    if keep_float:
        raise UserError(
            "--keep-float applies to ONNX models; a float TFLite model keeps unplanned ops float already."
        )
    ds = spec.dataset
    calib = spec.calibration(min(options.calibration_samples, 128))
    with timer("analyze"):
        data, model_t = ti.load_checked(spec.path)
        ti.check_input(data, ds.x_val[:1], spec.path)
        weights = ti.find_weights(model_t)
        fr = ti.Runner(data)
        ref_val = fr.run(ds.x_val)
        fp32_acc = float(np.mean(fr.run(ds.x_test).argmax(1) == ds.y_test))
    sg = model_t.subgraphs[0]
    arrays = {
        w.layer: np.moveaxis(_tensor_array(model_t, sg.tensors[w.tensor]).astype(np.float32), w.axis, 0)
        for w in weights
    }
    with timer("plan"):
        gains = (
            ti.noise_gains(model_t, weights, calib[:64])
            if method in ("hessian", "noise")
            else {w.layer: 1.0 for w in weights}
        )
        from edge_compress.export.onnx_input import quant_error

        cost = {
            (w.layer, b): gains[w.layer] * quant_error(arrays[w.layer], b)[0] for w in weights for b in (4, 8)
        }
        nbytes = {w.layer: (lambda b, w=w: ti.weight_bytes(w, b)) for w in weights}
        bits, pred = allocate(
            [(w.layer, w.kind, nbytes[w.layer]) for w in weights],
            cost,
            profile,
            method=method,
            budget=budget,
            alpha=alpha,
        )
        plan = _make_plan(
            spec,
            profile,
            bits,
            {w.layer: w.kind for w in weights},
            cost,
            nbytes,
            pred,
            method,
            budget,
            float(np.mean(ref_val**2)),
        )
        for d in plan.layers.values():
            d.act_bits = None  # weight-only: float activations
    with timer("simulate"):
        recipe, actual, fbs = ti.weight_only_recipe(bits, weights)
        grid_t = {}
        for w in weights:
            b = actual[w.layer]
            if b is None:
                continue
            q, _ = quantize_weight(torch.from_numpy(arrays[w.layer]), b, True, "mse")
            grid_t[w.tensor] = np.moveaxis(q.numpy(), 0, w.axis)
        sim_bytes = ti.with_weights(model_t, grid_t)
        sim = ti.Runner(sim_bytes)
        sim_val, sim_test = sim.run(ds.x_val), sim.run(ds.x_test)
        sim_acc = float(np.mean(sim_test.argmax(1) == ds.y_test))
    aid = artifact_id(
        spec.describe(), plan.digest(), profile.model_dump(mode="json"), options.to_json(), versions
    )
    fallbacks = [
        Fallback(layer, "tflite", "weight-only", bits_label(bits[layer], None), bits_label(8, None), reason)
        for layer, _, reason in fbs
    ]
    with ArtifactBuilder(out_dir, aid) as builder, tempfile.TemporaryDirectory(prefix="ec-in-") as tmp:
        with timer("export_tflite"):
            from ai_edge_quantizer import quantizer as aeq

            from edge_compress.export.base import last_error_line, quiet

            src = Path(tmp) / "grid.tflite"
            src.write_bytes(sim_bytes)
            try:
                with quiet() as log:
                    result = aeq.Quantizer(str(src), recipe).quantize(enable_progress_report=False)
            except Exception as e:  # noqa: BLE001
                detail = str(e).splitlines()[0] if str(e) else last_error_line(log[0] if log else "")
                raise UserError(
                    f"ai-edge-quantizer could not quantize {spec.path} ({type(e).__name__}: {detail[:200]})."
                ) from None
            qm = read_tflite(result.quantized_model)
            for k, t in enumerate(qm.subgraphs[0].tensors):
                t.name = {qm.subgraphs[0].inputs[0]: "input", qm.subgraphs[0].outputs[0]: "output"}.get(
                    k, f"t{k}"
                )
            out = builder.path(f"{spec.name}.weight-only.tflite")
            out.write_bytes(write_tflite(qm))
            (builder.path(f"{spec.name}.weight-only.recipe.json")).write_text(
                json.dumps({"recipe": recipe, "layers": {w.layer: w.scope for w in weights}}, indent=2) + "\n"
            )
            planned = int(sum(ti.weight_bytes(w, actual[w.layer]) for w in weights))
        with timer("parity"):
            report = parity.measure(
                out,
                "tflite",
                "weight-only",
                sim_val,
                ds.x_val,
                sim_test=sim_test,
                x_test=ds.x_test,
                y_test=ds.y_test,
                threshold=threshold,
            )
            if gate:
                parity.check([report])
        with timer("write"):
            for f in fallbacks:
                plan.layers[f.layer].fallback = f.describe()
            plan.save(builder.path("plan.json"))
            manifest = _common_manifest(
                aid, rkey, spec, profile, plan, method, budget, alpha, versions, options
            )
            manifest.update(
                {
                    "files": {
                        out.name: {
                            "sha256": "",
                            "bytes": 0,
                            "format": "tflite",
                            "variant": "weight-only",
                            "planned_bytes": planned,
                        }
                    },
                    "sidecars": {out.name: {"recipe": f"{spec.name}.weight-only.recipe.json"}},
                    "layers": {
                        out.name: {
                            w.layer: {"weight_bits": actual[w.layer], "act_bits": None, "op": w.op_name}
                            for w in weights
                        }
                    },
                    "parity": {out.name: report.to_json()},
                    "accuracy": {
                        "fp32": fp32_acc,
                        "predicted": None,
                        "simulated": sim_acc,
                        "runtime": {out.name: report.runtime_accuracy},
                    },
                    "sensitivity": {"method": "noise injection (LiteRT)", "gains": gains},
                    "fallbacks": [f.to_json() for f in fallbacks],
                    "notes": notes
                    + [
                        "weight-only: int8/int4 weights are dequantized at load or run time; activations stay float.",
                        "simulation = the float model with its weights replaced by their grid values, in the same interpreter.",
                    ],
                    "stages_s": dict(timer.stages),
                }
            )
            path = builder.commit(f"{spec.name}-{aid[:12]}", sanitize(manifest), replace=True)
    from edge_compress.compiler import _rewrite_stages

    _rewrite_stages(path, timer.stages)
    return path
