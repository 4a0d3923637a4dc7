"""The main job on the embedded default, end to end (``scripts/quickstart.sh``).

LeNet-5 on scikit-learn's digits (trained once, cached) is compiled for a device profile (``phone``
by default: mixed int8/int4 planned against the profile's budgets, exported to ONNX QDQ and TFLite,
parity-checked in the real runtimes), then every file of the artifact and the fp32 reference are
benchmarked on this machine as the target through the same runner path a remote device uses, with
an on-device accuracy run over the test split.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="quickstart", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lenet5", help="zoo model (default lenet5)")
    ap.add_argument("--profile", default="phone", help="device profile (default phone)")
    ap.add_argument("--budget", default=None, help="extra budgets, e.g. bytes=40KB")
    ap.add_argument("--target", default="local", help="inventory target to benchmark on (default local)")
    ap.add_argument("--out", default="artifacts", help="artifact root (default ./artifacts)")
    ap.add_argument("--min-duration", type=float, default=1.0, help="seconds of timed loop per file")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    return ap.parse_args(argv)


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1000:.1f} KB" if n < 1e6 else f"{n / 1e6:.2f} MB"


def run(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from rich.console import Console
    from rich.table import Table

    from edge_compress.errors import UserError
    from edge_compress.profiles import load_profile, parse_budget

    console = Console(stderr=args.json, width=None if sys.stdout.isatty() else 132)
    try:
        from edge_compress.compiler import compile_model
        from edge_compress.export.onnx import export_float_onnx
        from edge_compress.modelspec import resolve_model
        from edge_compress.quant.fakequant import fold_batchnorm
        from runners.base import RunRequest
        from runners.registry import get_runner

        profile = load_profile(args.profile)
        console.print(f"[bold]1/3[/] {args.model}: train or load cached weights")
        spec = resolve_model(args.model)
        if spec.kind != "torch" or spec.model is None:
            raise UserError(f"the quickstart takes a zoo or module:factory model, not {args.model!r}.")
        from edge_compress.zoo.train import accuracy

        ds = spec.dataset
        fp32_acc = accuracy(spec.model, ds.x_test, ds.y_test)
        console.print(f"[bold]2/3[/] compile for profile [cyan]{profile.name}[/] ({profile.description})")
        art = compile_model(
            spec,
            profile,
            budget=parse_budget(args.budget) or None,
            out_dir=args.out,
            progress=lambda s: console.print(f"    {s}", highlight=False),
        )
        console.print(f"    artifact {art.path}{'  (cache hit)' if art.cached else ''}")

        console.print(f"[bold]3/3[/] benchmark on target [cyan]{args.target}[/]")
        runner = get_runner(args.target)
        work = Path(tempfile.mkdtemp(prefix="edge-compress-quickstart-"))
        acc_npz = work / "test.npz"
        np.savez(acc_npz, x=ds.x_test.astype(np.float32), y=ds.y_test.astype(np.int64))
        fp32_path = art.path / "reference.fp32.onnx"
        if not fp32_path.exists():
            export_float_onnx(fold_batchnorm(spec.model), spec.example_input(), fp32_path)
        files = [("fp32 reference", "onnx", fp32_path)] + [
            (d.get("variant", ""), d["format"], art.path / name) for name, d in art.manifest["files"].items()
        ]
        rows = []
        for variant, fmt, path in files:
            m = runner.run(
                RunRequest(
                    str(path),
                    threads=1,
                    min_count=50,
                    min_duration_s=args.min_duration,
                    accuracy_npz=str(acc_npz),
                    label=variant,
                )
            )
            if not m.ok:
                raise UserError(f"benchmark of {path.name} on {args.target} failed: {m.error}")
            rows.append(
                {
                    "file": path.name,
                    "format": fmt,
                    "variant": variant,
                    "bytes": path.stat().st_size,
                    "accuracy": m.accuracy,
                    "p50_ms": m.stats.median_ms if m.stats else None,
                    "p99_ms": m.stats.p99_ms if m.stats else None,
                    "peak_rss_mb": (m.peak_rss_bytes or 0) / 1e6,
                    "energy_mj": m.energy.joules_per_inference * 1e3 if m.energy else None,
                    "energy_measured": bool(m.energy and m.energy.measured),
                    "runtime": f"{m.runtime} {m.runtime_version}",
                    "throttled": m.throttled,
                }
            )
    except UserError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return e.exit_code

    result = {
        "model": args.model,
        "profile": profile.name,
        "target": args.target,
        "fp32_acc": fp32_acc,
        "artifact": str(art.path),
        "cached": art.cached,
        "rows": rows,
    }
    if args.json:
        import json

        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return 0
    t = Table(title=f"{args.model} for {profile.name}, measured on {args.target}")
    for col in ("file", "bytes", "accuracy", "p50 ms", "p99 ms", "peak RSS", "energy/inf", "runtime"):
        t.add_column(col)
    for r in rows:
        e = (
            "-"
            if r["energy_mj"] is None
            else f"{r['energy_mj']:.3f} mJ" + ("" if r["energy_measured"] else " (est.)")
        )
        t.add_row(
            r["file"],
            _fmt_bytes(r["bytes"]),
            f"{100 * r['accuracy']:.2f}%" if r["accuracy"] is not None else "-",
            f"{r['p50_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            f"{r['peak_rss_mb']:.0f} MB",
            e,
            r["runtime"],
        )
    console.print(t)
    console.print(f"fp32 accuracy in torch: {100 * fp32_acc:.2f}%   artifact: [bold]{art.path}[/]")
    console.print(
        "energy marked (est.) comes from the profile's power model: this machine exposes no power sensor."
    )
    return 0


if __name__ == "__main__":
    sys.exit(run())
