#!/usr/bin/env python3
"""Reproduce the seed design's quantitative claims as experiments (edge_compress/repro/).

    python scripts/reproduce.py                 # full run: docs/reproduction.md, docs/figures/, benchmarks/reproduction.json
    python scripts/reproduce.py --quick         # smaller epochs / subsets / trials (a few minutes, cached zoo weights)
    python scripts/reproduce.py --only 1,4      # rerun claims 1 and 4; the others are kept from the existing --json

Outputs go to --docs (markdown), --figures (PNGs) and --json; the tests pass temporary paths.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_only(text: str | None) -> list[int]:
    from edge_compress.errors import UserError
    from edge_compress.repro import CLAIMS

    if not text:
        return sorted(CLAIMS)
    try:
        nums = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UserError(f"--only takes claim numbers separated by commas (e.g. 1,4), not {text!r}.") from None
    bad = [n for n in nums if n not in CLAIMS]
    if bad:
        raise UserError(f"--only: no claim {bad[0]}; claims are {', '.join(map(str, sorted(CLAIMS)))}.")
    return nums


def main(argv: list[str] | None = None) -> int:
    import json

    from edge_compress.errors import UserError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller epochs, subsets, fewer trials")
    ap.add_argument("--only", default=None, help="comma list of claim numbers (default: all)")
    ap.add_argument("--docs", default=str(ROOT / "docs" / "reproduction.md"), help="markdown output")
    ap.add_argument("--figures", default=None, help="figure directory (default: figures/ next to --docs)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "reproduction.json"), help="numbers output")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        only = parse_only(args.only)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import torch

    from edge_compress.repro import run_claim
    from edge_compress.repro.common import Context, Timer, failed
    from edge_compress.repro.report import build_json, machine, now_iso, render_markdown

    torch.set_num_threads(1)
    docs = Path(args.docs)
    fig_dir = Path(args.figures) if args.figures else docs.parent / "figures"
    ctx = Context(
        quick=args.quick,
        fig_dir=fig_dir,
        seed=args.seed,
        log=lambda m: print(f"[{time.strftime('%H:%M:%S')}]   {m}", flush=True),
    )
    meta = {
        "date": now_iso(),
        "machine": machine(),
        "quick": args.quick,
        "loadavg": list(os.getloadavg()),
        "torch": torch.__version__,
    }
    out = Path(args.json)
    rel = os.path.relpath(fig_dir, docs.parent)
    previous: dict = {}
    if out.exists():  # claims not (yet) rerun keep their previous results
        try:
            previous = json.loads(out.read_text(encoding="utf-8")).get("claims", {})
        except (OSError, ValueError):
            previous = {}

    def write(results: list, wall: float, cpu: float) -> None:
        from edge_compress.repro.common import ClaimResult

        done = {r.number for r in results}
        allr = results + [ClaimResult.from_json(int(k), v) for k, v in previous.items() if int(k) not in done]
        allr.sort(key=lambda r: r.number)
        meta["wall_s"], meta["cpu_s"] = wall, cpu
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(render_markdown(allr, meta, rel) + "\n", encoding="utf-8")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(build_json(allr, meta), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )

    results = []
    errors = 0
    with Timer() as total:
        for n in only:
            print(f"[{time.strftime('%H:%M:%S')}] claim {n} ...", flush=True)
            with Timer() as t:
                try:
                    r = run_claim(n, ctx)
                except Exception as e:  # noqa: BLE001 - one broken experiment must not lose the others
                    r = failed(n, e)
                    errors += 1
                    traceback.print_exc()
            r.wall_s, r.cpu_s, r.quick, r.date = t.wall, t.cpu, args.quick, now_iso()
            results.append(r)
            print(
                f"[{time.strftime('%H:%M:%S')}] claim {n}: {r.verdict} ({t.wall:.0f} s wall, {t.cpu:.0f} s CPU)",
                flush=True,
            )
            write(results, time.perf_counter() - total.w0, time.process_time() - total.c0)
    write(results, total.wall, total.cpu)
    print(f"wrote {docs}, {out} and {len(results)} figure set(s) in {fig_dir} ({total.wall:.0f} s)")
    if errors:
        print(f"error: {errors} experiment(s) failed; see their sections in {docs}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
