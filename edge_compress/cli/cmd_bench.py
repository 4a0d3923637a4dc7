"""`edge-compress bench ARTIFACT --target NAME`: measure a model on a target through its runner."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import typer

from edge_compress.cli.app import JsonOpt, app, console, emit_json, err_console
from edge_compress.errors import UserError

FORMATS = ("onnx", "tflite")


def resolve_artifact(artifact: Path, fmt: str | None) -> tuple[Path, str]:
    """The model file to measure and a label: a model file as is, or the file of an artifact
    directory's manifest.json picked by format (default: its first ONNX file).

    Raises:
        UserError: missing file, malformed manifest, no file of that format, or a file whose size
            or SHA-256 differs from the manifest.
    """
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}.")
    if not artifact.exists():
        raise UserError(f"{artifact}: no such model file or artifact directory.")
    if artifact.is_file():
        suffix = artifact.suffix.lower().lstrip(".")
        if suffix not in FORMATS:
            raise UserError(f"{artifact}: expected a .onnx or .tflite file, or an artifact directory.")
        if fmt is not None and fmt != suffix:
            raise UserError(f"{artifact} is a .{suffix} file but --format {fmt} was asked.")
        return artifact, artifact.stem
    return _from_manifest(artifact, fmt)


def _from_manifest(directory: Path, fmt: str | None) -> tuple[Path, str]:
    manifest = directory / "manifest.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{directory}: not an artifact directory (no manifest.json).") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{manifest}: cannot read the manifest ({e}).") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not files:
        raise UserError(f"{manifest}: field 'files' must map file names to their descriptions.")
    want = fmt or "onnx"
    chosen = [(n, d) for n, d in files.items() if isinstance(d, dict) and d.get("format") == want]
    if not chosen and fmt is None:
        chosen = [(n, d) for n, d in files.items() if isinstance(d, dict) and d.get("format") in FORMATS]
    if not chosen:
        have = sorted({str(d.get("format")) for d in files.values() if isinstance(d, dict)})
        raise UserError(f"{manifest}: no {want} file in the artifact (formats: {', '.join(have) or 'none'}).")
    name, desc = chosen[0]
    path = directory / name
    _verify(path, desc, manifest)
    label = ":".join(str(x) for x in (data.get("id"), desc.get("variant")) if x)
    return path, label or name


def _verify(path: Path, desc: dict[str, Any], manifest: Path) -> None:
    from runners.agent.host import sha256_file

    if not path.is_file():
        raise UserError(f"{manifest}: lists {path.name}, which is missing from the artifact directory.")
    if "bytes" in desc and path.stat().st_size != desc["bytes"]:
        raise UserError(
            f"{path}: {path.stat().st_size} bytes but the manifest says {desc['bytes']}; recompile."
        )
    if desc.get("sha256") and sha256_file(path) != desc["sha256"]:
        raise UserError(f"{path}: SHA-256 differs from the manifest (modified after compiling?); recompile.")


def _check_options(
    threads: int, core_mask: str | None, min_count: int, min_duration: float, warmup: int
) -> None:
    if threads < 1:
        raise UserError("--threads must be at least 1.")
    if core_mask is not None and not re.fullmatch(r"(0[xX])?[0-9a-fA-F]+", core_mask):
        raise UserError(f"--core-mask {core_mask!r} is not a hexadecimal CPU mask (e.g. f0).")
    if min_count < 1 or warmup < 0 or min_duration < 0:
        raise UserError("--min-count must be >= 1, --warmup and --min-duration >= 0.")


@app.command("bench")
def bench(
    artifact: Path = typer.Argument(..., help="Model file (.onnx/.tflite) or artifact directory."),
    target: str = typer.Option("local", "--target", "-t", help="Target name from the inventory, or local."),
    inventory: Path | None = typer.Option(None, "--inventory", help="Inventory YAML (default: see docs)."),
    threads: int = typer.Option(1, "--threads", help="Runtime threads."),
    core_mask: str | None = typer.Option(None, "--core-mask", help="Hex CPU mask to pin to, e.g. f0."),
    min_count: int = typer.Option(50, "--min-count", help="Minimum timed iterations."),
    min_duration: float = typer.Option(1.0, "--min-duration", help="Minimum timed duration (s)."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed warm-up iterations."),
    inputs: Path | None = typer.Option(None, "--inputs", help=".npz with the input arrays."),
    accuracy: Path | None = typer.Option(None, "--accuracy", help=".npz with x, y for on-device accuracy."),
    fmt: str | None = typer.Option(None, "--format", help="Which file of an artifact: onnx or tflite."),
    timeout: float = typer.Option(600.0, "--timeout", help="Deadline of the whole run (s)."),
    as_json: bool = JsonOpt,
) -> int:
    """Measure latency, memory and energy of a model on a target."""
    from runners.base import RunRequest
    from runners.registry import get_runner

    _check_options(threads, core_mask, min_count, min_duration, warmup)
    for opt, p in (("--inputs", inputs), ("--accuracy", accuracy)):
        if p is not None and not p.is_file():
            raise UserError(f"{opt} {p}: no such file.")
    model, label = resolve_artifact(artifact, fmt)
    runner = get_runner(target, inventory)
    request = RunRequest(
        model_path=str(model),
        threads=threads,
        core_mask=core_mask,
        warmup=warmup,
        min_count=min_count,
        min_duration_s=min_duration,
        inputs_npz=str(inputs) if inputs else None,
        accuracy_npz=str(accuracy) if accuracy else None,
        timeout_s=timeout,
        label=label,
    )
    if as_json:
        m = runner.run(request)
        emit_json(m.to_json())
    else:
        with console.status(f"measuring {model.name} on {target} ..."):
            m = runner.run(request)
        if m.ok:
            console.print(measurement_table(m))
    if not m.ok:
        err_console.print(f"[bold red]error:[/] {m.error_kind}: {m.error}", highlight=False, soft_wrap=True)
        return 1
    return 0


def _num(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f} ms"


def measurement_table(m: Any) -> Any:
    """A rich table of one successful Measurement."""
    from rich.table import Table

    t = Table(title=f"{Path(m.model_path).name} on {m.target}", show_header=False, title_justify="left")
    t.add_column("metric", style="bold")
    t.add_column("value")
    s = m.stats
    if s is not None:
        lo, hi = s.median_ci95_ms
        ci = "" if math.isnan(lo) else f"  (95% CI {lo:.3f}-{hi:.3f})"
        t.add_row("p50", f"{_num(s.median_ms)} ms{ci}")
        t.add_row("p90 / p99", f"{_num(s.p90_ms)} / {_num(s.p99_ms)} ms")
        t.add_row("mean +- std", f"{_num(s.mean_ms)} +- {_num(s.std_ms)} ms  (n={s.count})")
    t.add_row("first inference", _ms(m.first_inference_ms))
    t.add_row("load", _ms(m.load_ms))
    t.add_row("peak RSS", "-" if m.peak_rss_bytes is None else f"{m.peak_rss_bytes / 2**20:.1f} MB (process)")
    t.add_row("energy", _energy(m.energy))
    if m.accuracy is not None:
        t.add_row("accuracy", f"{m.accuracy:.4f} ({m.extra.get('accuracy_samples', '?')} samples)")
    throttled = "yes" if m.throttled else "no"
    if m.remeasured:
        throttled += f" (re-measured after cool-down; {m.throttled_samples} throttled samples dropped)"
    t.add_row("throttled", throttled)
    t.add_row("runtime", f"{m.runtime or '-'} {m.runtime_version or ''}".strip())
    t.add_row(
        "machine",
        (m.machine or "-") + ("  [yellow](emulated: not a performance figure)[/]" if m.emulated else ""),
    )
    t.add_row("threads / CPUs", f"{m.threads} / {m.cpu_affinity}")
    if m.pushed_bytes is not None:
        t.add_row("pushed", "cached (0 B)" if m.pushed_bytes == 0 else f"{m.pushed_bytes} B")
    return t


def _energy(e: Any) -> str:
    if e is None:
        return "-"
    label = "measured" if e.measured else "estimate"
    from rich.markup import escape

    return escape(
        f"{e.joules_per_inference * 1e3:.4f} mJ/inference at {e.avg_watts:.2f} W  [{label}: {e.source}]"
    )
