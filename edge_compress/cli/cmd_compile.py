"""`edge-compress compile MODEL --profile NAME`: prune / factorize, plan, quantize, export, check parity,
write an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from edge_compress.cli.app import JsonOpt, app, console, emit_json, err_console


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.4g} {unit}"
        n /= 1000
    return f"{n:.4g} TB"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


@app.command("compile")
def compile_cmd(
    model: str = typer.Argument(
        ..., help="Zoo name (lenet5 ...), module:factory, or a .onnx / .tflite file."
    ),
    profile: str = typer.Option(..., "--profile", "-p", help="Device profile name or YAML path."),
    budget: str | None = typer.Option(
        None, "--budget", help="Budgets, e.g. bytes=40KB (default: the profile's)."
    ),
    method: str = typer.Option("hessian", "--method", help="hessian | noise | uniform8 | uniform4."),
    alpha: float | None = typer.Option(
        None, "--alpha", help="Byte budget as a fraction between all-int4 (0) and all-int8 (1)."
    ),
    fmt: str = typer.Option("onnx,tflite", "--format", help="Comma-separated: onnx, tflite."),
    out: Path = typer.Option(Path("artifacts"), "--out", help="Artifact root directory."),
    parity_threshold: float = typer.Option(
        0.99, "--parity-threshold", help="Minimum top-1 agreement with the simulation."
    ),
    no_parity_gate: bool = typer.Option(
        False, "--no-parity-gate", help="Keep the artifact even when parity fails."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the same request is cached."),
    weights: Path | None = typer.Option(None, "--weights", help="state_dict for a module:factory model."),
    data: str | None = typer.Option(
        None, "--data", help="digits | mnist1d | PATH.npz (x/y train, val, test)."
    ),
    plan_path: Path | None = typer.Option(None, "--plan", help="Use this plan.json instead of planning."),
    keep_float: list[str] = typer.Option(
        None, "--keep-float", help="ONNX node to leave unquantized (existing .onnx models; repeatable)."
    ),
    profiles_dir: list[Path] = typer.Option(
        None, "--profiles-dir", help="Extra profile directory (repeatable)."
    ),
    prune: str | None = typer.Option(
        None,
        "--prune",
        help="Structured pruning before quantization: flops=0.5[,method=group_lasso|l1][,finetune=6]"
        "[,channel_multiple=8]; 'none' ignores the profile's FLOPs budget.",
    ),
    flops: float | None = typer.Option(
        None,
        "--flops",
        help="FLOPs budget for pruning, a ratio of the original MACs (same as --prune flops=).",
    ),
    factorize: str | None = typer.Option(
        None,
        "--factorize",
        help="Low-rank factorization before quantization: energy=0.95 | params=0.6 | flops=0.7"
        "[,how=auto|spatial|channel][,finetune=2].",
    ),
    compute: str = typer.Option(
        "auto",
        "--compute",
        help="auto | integer | float: integer kernels (QDQ / static int8) or float kernels on integer-stored "
        "weights (weight-only) for the ONNX file and the TFLite int8 variant; auto picks per model from the "
        "profile and the cost model, and on a local target times both files here (int8-full stays integer).",
    ),
    predicted_compute: bool = typer.Option(
        False,
        "--predicted-compute",
        help="With --compute auto on a local target: decide from the cost model alone, without timing both files.",
    ),
    no_bias_correction: bool = typer.Option(
        False,
        "--no-bias-correction",
        help="Keep the float biases as they are (default: each layer's output mean is restored on the "
        "calibration data after quantization, and the corrected biases are exported).",
    ),
    rounding: str = typer.Option(
        None,
        "--rounding",
        help="gptq | nearest: how weights are rounded on their int8 / int4 grid (default gptq for a new "
        "plan: GPTQ rounds so that each layer's output error on the calibration data is small; a given "
        "--plan keeps its own unless this is set).",
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Compress MODEL for a device profile and export runnable files checked in their runtimes."""
    from edge_compress.compiler import ExportOptions, compile_model
    from edge_compress.factorize.config import parse_factorize
    from edge_compress.modelspec import resolve_model
    from edge_compress.plan import CompressionPlan
    from edge_compress.profiles import load_profile, parse_budget
    from edge_compress.prune.config import parse_prune
    from edge_compress.quant.rounding import check_rounding

    prof = load_profile(profile, profiles_dir)
    bud = parse_budget(budget) if budget else None
    options = ExportOptions(
        compute=compute.strip().lower(),
        measure_compute=not predicted_compute,
        bias_correction=not no_bias_correction,
        weight_rounding=check_rounding(rounding.strip().lower()) if rounding is not None else None,
    )
    formats = tuple(f.strip().lower() for f in fmt.split(",") if f.strip())
    plan = CompressionPlan.load(plan_path) if plan_path is not None else None
    transforms = {
        k: v
        for k, v in (("prune", parse_prune(prune, flops)), ("factorize", parse_factorize(factorize)))
        if v
    }
    if json_out:
        spec = resolve_model(model, weights=str(weights) if weights else None, data=data)
        art = compile_model(
            spec,
            prof,
            budget=bud,
            method=method,
            alpha=alpha,
            formats=formats,
            out_dir=out,
            parity_threshold=parity_threshold,
            parity_gate=not no_parity_gate,
            force=force,
            plan=plan,
            keep_float=keep_float or None,
            transforms=transforms,
            options=options,
        )
        emit_json(
            {
                "artifact": str(art.path),
                "id": art.id,
                "cached": art.cached,
                "stages_s": art.stages_s,
                "manifest": art.manifest,
            }
        )
        return
    with err_console.status(f"loading {model}") as status:
        spec = resolve_model(model, weights=str(weights) if weights else None, data=data)
        art = compile_model(
            spec,
            prof,
            budget=bud,
            method=method,
            alpha=alpha,
            formats=formats,
            out_dir=out,
            parity_threshold=parity_threshold,
            parity_gate=not no_parity_gate,
            force=force,
            plan=plan,
            keep_float=keep_float or None,
            transforms=transforms,
            options=options,
            progress=lambda stage: status.update(f"{spec.name}: {stage}"),
        )
    print_summary(art.manifest, art.path, cached=art.cached)


def print_summary(m: dict[str, Any], path: Path, *, cached: bool = False, layers: bool = True) -> None:
    """Tables shared by `compile` and `inspect`."""
    import json

    files = m.get("files", {})
    plan_layers: dict[str, Any] = {}
    plan_file = path / m.get("plan", "plan.json")
    if plan_file.is_file():
        try:
            plan_layers = {d["name"]: d for d in json.loads(plan_file.read_text())["layers"]}
        except (ValueError, KeyError, TypeError):
            plan_layers = {}
    if layers and plan_layers:
        t = Table(title=f"layers ({m.get('method', '')})")
        t.add_column("layer")
        t.add_column("kind")
        t.add_column("planned")
        for f in files:
            t.add_column(f, overflow="fold")
        for name, d in plan_layers.items():
            planned = f"w{d.get('weight_bits') or 'fp'} a{d.get('act_bits') or 'fp'}"
            cells = []
            for f in files:
                lb = m.get("layers", {}).get(f, {}).get(name)
                if lb is None:
                    cells.append("-")
                    continue
                cell = f"w{lb['weight_bits'] or 'fp'} a{lb['act_bits'] or 'fp'}"
                if (lb["weight_bits"], lb["act_bits"]) != (d.get("weight_bits"), d.get("act_bits")):
                    cell = f"[yellow]{cell}*[/]"
                cells.append(cell)
            t.add_row(name, d.get("kind", ""), planned, *cells)
        console.print(t)
    _print_transforms(m)
    acc = m.get("accuracy", {})
    t = Table(title="files")
    for col in (
        "file",
        "format",
        "variant",
        "bytes",
        "planned",
        "ratio",
        "agreement",
        "SQNR dB",
        "runtime acc",
    ):
        t.add_column(col)
    for name, d in files.items():
        r = m.get("parity", {}).get(name, {})
        ratio = d["bytes"] / d["planned_bytes"] if d.get("planned_bytes") else None
        ok = r.get("passed", True)
        agree = "-" if r.get("agreement") is None else f"{r['agreement']:.4f}"
        sq = r.get("sqnr_db")
        t.add_row(
            name,
            d["format"],
            d["variant"],
            _fmt_bytes(d["bytes"]),
            _fmt_bytes(d.get("planned_bytes")),
            "-" if ratio is None else f"{ratio:.3f}",
            agree if ok else f"[red]{agree}[/]",
            "exact" if sq is None and r else ("-" if sq is None else f"{sq:.1f}"),
            _pct(r.get("runtime_accuracy")),
        )
    console.print(t)
    console.print(
        f"accuracy: fp32 {_pct(acc.get('fp32'))}, "
        + (f"pruned/factorized {_pct(acc['transformed'])}, " if "transformed" in acc else "")
        + f"predicted {_pct(acc.get('predicted'))}, "
        f"simulated {_pct(acc.get('simulated'))}"
        + "".join(f", {k} {_pct(v)}" for k, v in (acc.get("runtime") or {}).items())
    )
    for fmt, c in (m.get("compute") or {}).items():
        console.print(
            f"compute ({fmt}): {c['compute']} ({c['asked']}): {c['reason']}; the other: {c['other']}",
            highlight=False,
        )
    fb = m.get("fallbacks", [])
    if fb:
        console.print(f"[yellow]{len(fb)} fallback(s)[/] (* above):")
        for f in fb:
            console.print(
                f"  {f['layer']} [{f['format']}/{f['variant']}] {f['planned']} -> {f['actual']}: {f['reason']}",
                highlight=False,
            )
    for n in m.get("notes", []):
        console.print(f"note: {n}", highlight=False)
    stages = m.get("stages_s", {})
    if stages and not cached:
        console.print("stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()), highlight=False)
    console.print(
        f"artifact: [bold]{path}[/]" + (" (cached: same request compiled before)" if cached else ""),
        highlight=False,
    )


def _print_transforms(m: dict[str, Any]) -> None:
    """What pruning and factorization did (manifest ``prune`` / ``factorize``)."""
    pr = m.get("prune")
    if pr:
        t = Table(title=f"pruning ({pr.get('method')}, FLOPs budget {pr.get('flops_budget'):g})")
        for col in ("layer", "channels before", "after"):
            t.add_column(col)
        for name, c in (pr.get("channels") or {}).items():
            changed = c["after"] != c["before"]
            t.add_row(name, str(c["before"]), f"[bold]{c['after']}[/]" if changed else str(c["after"]))
        console.print(t)
        fl, pa, acc = pr.get("flops", {}), pr.get("params", {}), pr.get("accuracy", {})
        console.print(
            f"pruned: FLOPs {fl.get('before'):,} -> {fl.get('after'):,} ({fl.get('ratio', 0):.3f}), "
            f"params {pa.get('before'):,} -> {pa.get('after'):,} ({pa.get('ratio', 0):.3f}); accuracy "
            f"{_pct(acc.get('original'))} -> {_pct(acc.get('before_finetune'))} pruned -> "
            f"{_pct(acc.get('after_finetune'))} after {pr.get('finetune_epochs')} fine-tune epoch(s)",
            highlight=False,
        )
        for k, v in (pr.get("skipped") or {}).items():
            console.print(f"  not pruned: {k}: {v}", highlight=False)
    fa = m.get("factorize")
    if fa:
        t = Table(title=f"factorization ({fa.get('mode')}={fa.get('value'):g})")
        for col in ("layer", "how", "rank", "full rank", "into"):
            t.add_column(col)
        for name, d in (fa.get("layers") or {}).items():
            t.add_row(name, d["how"], str(d["rank"]), str(d["full_rank"]), " + ".join(d["into"]))
        console.print(t)
        fl, pa, acc = fa.get("flops", {}), fa.get("params", {}), fa.get("accuracy", {})
        console.print(
            f"factorized: FLOPs ratio {fl.get('ratio', 1):.3f}, params ratio {pa.get('ratio', 1):.3f}; accuracy "
            f"{_pct(acc.get('before_finetune'))} -> {_pct(acc.get('after_finetune'))} after "
            f"{fa.get('finetune_epochs')} fine-tune epoch(s)",
            highlight=False,
        )
