"""Claim 8: an interacting-multiple-model (IMM) estimator keeps each model's probability up to date;
when a model stops explaining the data its probability collapses and the other takes over.

``runners.throttle.detect_throttling`` (two Kalman filters, steady / throttled, mixed by a Markov
chain) on two latency series:

- measured here: LeNet-5 exported by the library (``export.onnx.export_float_onnx``) and timed in
  onnxruntime (one thread) in a child process pinned to one CPU core; each sample is the mean
  latency of a block of inferences (~40 ms, longer than a scheduler period, so a sample measures
  the CPU share the loop gets rather than whether one time slice was lost). Mid-run, load processes pinned to the same core are
  released ("go" on their stdin) and later killed: the change points are known to the sample;
- synthetic with a known change point: a step of +40% and a return, realistic noise (AR(1)
  jitter, a lognormal tail, rare spikes).

Run ``python -m edge_compress.repro.c8_imm measure '<json>'`` to get a measured series alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edge_compress.repro.common import FAILS, HOLDS, PARTIAL, ClaimResult, Context, figure, save, torch_setup

BLOCK_MS = 40.0  # >> the scheduler period, so a sample measures the CPU share, not one time slice
LOAD_CODE = "import sys\nsys.stdin.readline()\nwhile True:\n    pass\n"


def _pin(core: int):
    def f() -> None:
        os.sched_setaffinity(0, {core})

    return f


def measure_series(
    onnx_path: str, n: int, start: int, stop: int, n_load: int, block_ms: float = BLOCK_MS
) -> dict:
    """Timed onnxruntime loop (this process pinned to one core); load released at ``start``, killed at ``stop``."""
    import onnxruntime as ort

    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).random((1, *inp.shape[1:]), dtype=np.float32)
    feed = {inp.name: x}
    for _ in range(50):
        sess.run(None, feed)
    ts = []
    for _ in range(100):
        t0 = time.perf_counter()
        sess.run(None, feed)
        ts.append(time.perf_counter() - t0)
    per = float(np.median(ts))
    inner = max(1, int(round(block_ms / 1000 / per)))
    loads = [
        subprocess.Popen([sys.executable, "-c", LOAD_CODE], stdin=subprocess.PIPE, preexec_fn=_pin(core))
        for _ in range(n_load)
    ]
    samples: list[float] = []
    t_go = t_stop = None
    try:
        time.sleep(0.3)  # the load processes start and block on stdin
        for i in range(n):
            if i == start:
                for p in loads:
                    p.stdin.write(b"go\n")
                    p.stdin.flush()
                t_go = time.time()
            if i == stop:
                for p in loads:
                    p.kill()
                for p in loads:
                    p.wait()
                t_stop = time.time()
            t0 = time.perf_counter()
            for _ in range(inner):
                sess.run(None, feed)
            samples.append((time.perf_counter() - t0) / inner * 1000.0)
    finally:
        for p in loads:
            if p.poll() is None:
                p.kill()
                p.wait()
    return {
        "samples_ms": samples,
        "inner": inner,
        "core": core,
        "start": start,
        "stop": stop,
        "n_load": n_load,
        "block_ms": block_ms,
        "load_seconds": (t_stop - t_go) if t_go and t_stop else None,
        "loadavg": os.getloadavg(),
    }


def synthetic_series(n: int, change: int, back: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base, cv, ar = 2.0, 0.03, 0.3
    e = rng.standard_normal(n)
    j = np.empty(n)
    j[0] = e[0]
    for i in range(1, n):
        j[i] = ar * j[i - 1] + np.sqrt(1 - ar * ar) * e[i]
    level = np.ones(n)
    level[change:back] = 1.4
    x = base * level * (1 + cv * j)
    tail = rng.random(n) < 0.08
    x[tail] += base * cv * 2 * rng.lognormal(0.0, 0.7, tail.sum())
    spikes = rng.random(n) < 0.005
    x[spikes] *= 5
    return x


BASELINE_DISTURBED = 0.1  # fraction of the unloaded samples 10% above the warm-up level


def _onnx_file(ctx: Context) -> Path:
    from edge_compress.export.onnx import export_float_onnx
    from edge_compress.zoo import load_zoo
    from edge_compress.zoo.data import cache_dir

    z = load_zoo("lenet5")
    path = cache_dir() / "repro" / f"{Path(z.weights_path or 'lenet5').stem}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.onnx")
        export_float_onnx(z.model.eval(), z.example_input(), tmp)
        os.replace(tmp, path)
    return path


def _analyse(x: np.ndarray, change: int, back: int) -> dict:
    """Detector output against the known window [change, back). An episode's alarm (the sample at which the
    detector reported it online) is its retrospective start + confirm - 1."""
    from runners.throttle import IMMDetector, detect_throttling

    confirm = IMMDetector().confirm
    r = detect_throttling(list(map(float, x)))
    p = np.asarray(r.probs)
    warm = 20
    eps = [(s, e, s + confirm - 1) for s, e in r.episodes]
    before = p[warm:change]
    during = p[min(change + 10, back - 1) : back]
    after = p[back + 10 : back + 30]
    onset = next((al for s, e, al in eps if change <= al < back), None)
    early = [(s, e) for s, e, al in eps if al < change]
    covering = next(((s, e) for s, e, al in eps if s <= change + 10 < e), None)
    return {
        "probs": p.tolist(),
        "episodes": r.episodes,
        "alarm_index": onset,
        "delay_samples": None if onset is None else onset - change,
        "episodes_alarmed_before_change": early,
        "covering_episode": covering,
        "end_index": None if covering is None else covering[1],
        "flagged_fraction_during": float(np.mean(r.flags[change:back])) if back > change else None,
        "pre_change_drift": float(np.median(x[warm:change]) / np.median(x[:warm])),
        # the latencies themselves, not the detector: samples before the injected load that ran 10%
        # above the warm-up median (each sample is a median of many runs: its spread is about 1%),
        # i.e. the shared machine slowed the loop on its own
        "baseline_slow_fraction": float(np.mean(x[warm:change] > 1.1 * np.median(x[:warm]))),
        "mean_p_before": float(before.mean()) if before.size else None,
        "mean_p_during": float(during.mean()) if during.size else None,
        "mean_p_after_return": float(after.mean()) if after.size else None,
        "latency_ratio": float(np.median(x[change:back]) / np.median(x[warm:change])),
    }


def run(ctx: Context) -> ClaimResult:
    torch_setup()
    onnx_path = _onnx_file(ctx)
    n = ctx.pick(120, 300)
    start, stop = ctx.pick((50, 95), (120, 220))
    n_load = 2
    cmd = [
        sys.executable,
        "-m",
        "edge_compress.repro.c8_imm",
        "measure",
        json.dumps({"onnx_path": str(onnx_path), "n": n, "start": start, "stop": stop, "n_load": n_load}),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A series whose unloaded part was already slowed by the shared machine (10% of its samples 10%
    # above the warm-up level) cannot show the injected change: measure again, at most 3 times, and
    # keep the steadiest; the discarded attempts are recorded.
    tries: list[tuple[dict, np.ndarray, dict]] = []
    for _ in range(3):
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, timeout=600)
        meas = json.loads(out.stdout.strip().splitlines()[-1])
        x = np.asarray(meas["samples_ms"])
        tries.append((meas, x, _analyse(x, start, stop)))
        if tries[-1][2]["baseline_slow_fraction"] < BASELINE_DISTURBED:
            break
    meas, xm, am = min(tries, key=lambda t: t[2]["baseline_slow_fraction"])
    discarded = [
        {k: t[2][k] for k in ("baseline_slow_fraction", "pre_change_drift", "mean_p_before")}
        for t in tries
        if t[2] is not am
    ]

    ns, cs, bs = ctx.pick((200, 80, 150), (300, 120, 230))
    xs = synthetic_series(ns, cs, bs, ctx.seed)
    an = _analyse(xs, cs, bs)

    fig, ax = figure(2, 2, 13, 3.0)
    for col, (x, a, c0, c1, title) in enumerate(
        (
            (
                xm,
                am,
                start,
                stop,
                f"measured: LeNet-5 in onnxruntime, {n_load} load processes on the same core",
            ),
            (xs, an, cs, bs, "synthetic: +40% step and return"),
        )
    ):
        t = np.arange(len(x))
        top, bot = ax[0][col], ax[1][col]
        top.plot(t, x, "-", color="C0", lw=0.8)
        top.axvspan(c0, c1, color="C3", alpha=0.1, label="true load / regime change")
        for s, e in a["episodes"]:
            top.axvspan(s, e, ymin=0.93, ymax=1.0, color="C1", alpha=0.8)
        top.set_ylabel("latency (ms)")
        top.set_title(title + "\n(orange bar: detected episode)")
        top.legend(fontsize=7, loc="upper left")
        p = np.asarray(a["probs"])
        bot.plot(t, p, "-", color="C1", label="P(throttled model)")
        bot.plot(t, np.where(t >= 20, 1 - p, np.nan), "-", color="C2", lw=0.8, label="P(steady model)")
        bot.axvspan(c0, c1, color="C3", alpha=0.1)
        bot.axvline(20, color="k", ls=":", lw=0.8)
        bot.set_ylim(-0.03, 1.03)
        bot.set_xlabel("sample (dotted: end of the warm-up)")
        bot.set_ylabel("model probability")
        bot.legend(fontsize=7, loc="center left")
    figs = [save(fig, ctx, "claim8_imm.png")]

    def ok(a: dict) -> bool:
        """Strict: detected within 15 samples of the change, no episode before it, P high during, low before."""
        return (
            a["delay_samples"] is not None
            and a["delay_samples"] <= 15
            and not a["episodes_alarmed_before_change"]
            and (a["mean_p_during"] or 0) > 0.7
            and (a["mean_p_before"] or 0) < 0.2
        )

    def tracks(a: dict) -> bool:
        """The load window is inside an episode, P(throttled) is high during it and collapses (< 0.5) after the return."""
        return (
            a["covering_episode"] is not None
            and (a["mean_p_during"] or 0) > 0.9
            and a["mean_p_after_return"] is not None
            and a["mean_p_after_return"] < 0.5
        )

    load_bit = am["latency_ratio"] >= 1.2
    numbers = {
        "measured": {
            **{k: v for k, v in meas.items() if k != "samples_ms"},
            "samples_ms": xm.tolist(),
            **am,
            "ok": ok(am),
            "tracks": tracks(am),
            "load_slowed_the_model": load_bit,
            "baseline_steady": am["baseline_slow_fraction"] < BASELINE_DISTURBED,
            "attempts": len(tries),
            "discarded_attempts": discarded,
            "onnx": onnx_path.name,
        },
        "synthetic": {
            "n": ns,
            "change": cs,
            "back": bs,
            "samples_ms": xs.tolist(),
            **an,
            "ok": ok(an),
            "tracks": tracks(an),
        },
    }
    if ok(an) and tracks(am) and load_bit:
        verdict = HOLDS
    elif ok(an) or tracks(am):
        verdict = PARTIAL
    else:
        verdict = FAILS

    def desc(a: dict, what: str, c0: int, c1: int) -> str:
        if a["alarm_index"] is not None:
            d = f"the detector reports throttling {a['delay_samples']} samples after the change, the episode ends at {a['end_index']}"
        elif a["covering_episode"] is not None:
            d = f"an episode opened before the change (sample {a['covering_episode'][0]}) covers it"
        else:
            d = "no episode covers the change"
        after = a["mean_p_after_return"]
        return (
            f"{what} (latency x{a['latency_ratio']:.2f} in [{c0}, {c1})): mean P(throttled) {a['mean_p_before']:.3f} before, "
            f"{a['mean_p_during']:.3f} during, {after if after is not None else float('nan'):.3f} after the return; {d}; "
            f"{100 * (a['flagged_fraction_during'] or 0):.0f}% of the window flagged; alarms before the change: "
            f"{len(a['episodes_alarmed_before_change'])} (pre-change latency x{a['pre_change_drift']:.2f} of the warm-up's)"
        )

    reason = desc(am, "Measured", start, stop) + ". " + desc(an, "Synthetic", cs, bs) + ". "
    if tracks(am) and ok(an):
        reason += (
            "When the steady model stops explaining the latencies its probability collapses within a few samples, and it "
            "comes back when the load goes away: the IMM prunes and restores models as the seed describes."
        )
    else:
        reason += "The model probabilities follow the regime where the shift is clear; the numbers show where they do not."
    if am["episodes_alarmed_before_change"]:
        reason += (
            " The measured series' early episode is not a detector error: this machine is shared with other jobs, and "
            f"its background load moved the loop's latency to x{am['pre_change_drift']:.2f} of the warm-up level before our "
            "load started; the detector tracked that regime too."
            if am["pre_change_drift"] >= 1.2
            else " The measured series has an episode before the load started, without a clear shift of the median: a false alarm."
        )
    if not load_bit:
        reason += " The load processes barely slowed the measured loop on this shared machine."
    if len(tries) > 1:
        reason += (
            f" The series was measured {len(tries)} times: the machine slowed the unloaded part of "
            f"{len(discarded)} of them on its own; the steadiest is shown."
        )

    return ClaimResult(
        8,
        "Interacting multiple models track a regime change",
        "一个交互式多模型 (IMM) 估计器会并行运行一组不同的模型 ... 并持续更新每个模型是正确模型的概率。当一个模型持续无法解释观测到的数据"
        "——当它的预测很差时——它的概率就会骤降",
        "An IMM estimator runs several models in parallel and keeps each one's probability of being right up to date; "
        "when a model keeps failing to explain the data its probability collapses.",
        f"`runners.throttle.detect_throttling` with its default parameters (steady vs throttled Kalman filters, 20-sample "
        f"warm-up). Measured: {n} samples, each the mean of {meas['inner']} LeNet-5 inferences (~{BLOCK_MS:g} ms) in "
        f"onnxruntime with one thread, pinned to CPU {meas['core']}; {n_load} busy-loop processes pinned to the same CPU "
        f"are released at sample {start} and killed at sample {stop} (load average at the end {meas['loadavg'][0]:.1f}). "
        f"Synthetic: {ns} samples at 2 ms, CV 3%, AR(1) 0.3, 8% lognormal tail, 0.5% 5x spikes, +40% from sample {cs} to {bs}.",
        verdict,
        reason,
        numbers,
        figs,
        [
            {
                "series": k,
                "latency ratio": f"{a['latency_ratio']:.2f}",
                "mean P before": f"{a['mean_p_before']:.3f}",
                "mean P during": f"{a['mean_p_during']:.3f}",
                "delay (samples)": a["delay_samples"],
                "alarms before the change": len(a["episodes_alarmed_before_change"]),
            }
            for k, a in (("measured", am), ("synthetic", an))
        ],
    )


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "measure":
        print(
            "usage: python -m edge_compress.repro.c8_imm measure '<json: onnx_path, n, start, stop, n_load>'",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(measure_series(**json.loads(argv[1]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
