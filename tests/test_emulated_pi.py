"""ARM agreement on an emulated Raspberry Pi: a real aarch64 Debian user space under qemu-user,
reached over SSH through the normal runner path (``scripts/emulated_pi.sh up`` builds and starts it
and writes the ``emulated-pi`` inventory entry; ``.ci/run`` does that before the tests).

Each zoo model is compiled for ``rpi4`` with a plan that alternates int8 and int4 layers (so each
file runs both kernel families), to ONNX QDQ and TFLite int8 / int8-full; each file runs on the
emulated Pi through the device agent and is compared with the same file run on this host. The
aarch64 wheels use other kernels (onnxruntime's ARM kernels, XNNPACK's NEON paths), which is the
point. Timings under emulation are labelled emulated and not checked.

The host reference is the file's exact result. ``rpi4`` ONNX files store int8 weights, and on an x86
host without VNNI onnxruntime's uint8 x int8 kernels saturate 16-bit sums: MobileNetV2's file as
stored gives SQNR 18 dB against the Pi here, and 16 dB against the plan's simulation where the Pi
gives 34 dB. So the host runs such files with the weights stored as uint8, zero point 128 (the same
values; ``parity.runner_for(exact_int8=True)``, as the compile-time parity check does).

Tolerances per format, from the whole validation sets (179 or 500 samples per file; the four
models, this plan and uniform int8 / int4 plans), the Pi against this host:

- ONNX QDQ: integer kernels are exact on both sides; only float summation order in float and
  int4-weight layers differs. Measured: identical outputs for 9 of 12 files, else SQNR 63 to 78 dB.
  Floor: 50 dB.
- TFLite int8 / int8-full: XNNPACK requantizes with fixed-point rounding on ARM NEON and with
  float scaling on x86, so activations differ by one step here and there. Measured: SQNR 32 to
  136 dB. Floor: 25 dB.
- Decisions (measured top-1 agreement 0.994 to 1): every sample where the Pi's top-1 class
  differs from the host's must be a near tie on the host (the host's logit gap between the two
  classes within ``TIE_SIGMAS`` standard deviations of the Pi-vs-host difference of two logits,
  estimated from the SQNR; measured with this plan: largest gap 0.08, limits 0.13 to 1.2), and the Pi
  must agree with the fp32 model as often as the host does, paired: of the samples where exactly
  one of them matches the fp32 model, the Pi may not be the one that misses significantly more
  often (one-sided exact sign test at ``ALPHA``; measured with this plan: at most 2 against 0,
  p = 0.25). An int8-full file's integer logits are compared with the fp32 logits on the same
  output grid, ties included.

Without the emulated Pi the tests skip, unless ``EDGE_COMPRESS_REQUIRE_EMULATED_PI=1`` (CI), where a
missing target is a failure.
"""

from __future__ import annotations

import math
import os
import socket
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.emulated, pytest.mark.slow]

TARGET = "emulated-pi"
MODELS = ("lenet5", "conv1d", "resnet", "mobilenetv2")
N_SAMPLES = 48  # validation samples per file: enough logits for the SQNR floors, cheap under emulation
MIN_SQNR_DB = {"onnx": 50.0, "tflite": 25.0}
TIE_SIGMAS = 5.0
ALPHA = 0.01


@pytest.fixture(scope="module")
def emulated_runner():
    from runners.inventory import load_inventory
    from runners.registry import get_runner

    inv_path = os.environ.get("EDGE_COMPRESS_EMULATED_PI_INVENTORY")
    try:
        inv = load_inventory(inv_path)
    except Exception as e:  # noqa: BLE001
        inv = None
        reason = f"no inventory ({e})"
    else:
        reason = "no 'emulated-pi' target in the inventory"
    if inv is not None and TARGET in inv.targets:
        t = inv.targets[TARGET]
        try:  # `emulated_pi.sh down` stops the sshd but leaves the inventory entry
            socket.create_connection((t.host, t.port), timeout=5).close()
        except OSError as e:
            reason = f"nothing answers at {t.host}:{t.port}, the inventory's entry ({e})"
            inv = None
    if inv is None or TARGET not in inv.targets:
        msg = f"the emulated Pi is not up ({reason}): run scripts/emulated_pi.sh up"
        if os.environ.get("EDGE_COMPRESS_REQUIRE_EMULATED_PI") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return get_runner(TARGET, inv)


def mixed_plan(spec: Any, profile: Any, graph: Any) -> Any:
    """A plan with int8 and int4 layers, so that one file exercises both kernel families: precision
    units (the layers of a precision group together, other layers alone) alternate int8 / int4 in
    graph order where the profile allows int4 for the whole unit, int8 elsewhere. Built directly:
    the planner is tested elsewhere, and its sensitivity analysis would double the run time."""
    from edge_compress.plan import CompressionPlan

    plan = CompressionPlan.uniform(graph, spec.name, profile.name, 8, 8)
    kinds = {li.name: li.kind for li in graph.layers}
    order = {n: i for i, n in enumerate(kinds)}
    grouped = {n for g in graph.precision_groups for n in g}
    units = [list(g) for g in graph.precision_groups] + [[n] for n in kinds if n not in grouped]
    units.sort(key=lambda u: min(order[n] for n in u))
    k = 0
    for unit in units:
        if all(4 in profile.weight_bits(kinds[n]) for n in unit):
            bits, k = (8, 4)[k % 2], k + 1
            for n in unit:
                plan.layers[n].weight_bits = bits
                plan.layers[n].why = f"int{bits}: alternating int8 / int4 plan"
    plan.method = "mixed-w8w4a8"
    return plan


def sign_test_p(worse: int, better: int) -> float:
    """One-sided exact sign test: P(at least ``worse`` of ``worse + better`` fair coin flips)."""
    n = worse + better
    return sum(math.comb(n, k) for k in range(worse, n + 1)) / 2.0**n if n else 1.0


def check_decisions(host: np.ndarray, ref: np.ndarray, pi_top1: np.ndarray, sqnr_db: float) -> dict[str, Any]:
    """The decision checks of the module docstring (``ref``: the fp32 model's logits); returns the
    figures, asserts nothing."""
    host_top1, ref_top1 = host.argmax(1), ref.argmax(1)
    flips = np.flatnonzero(pi_top1 != host_top1)
    # standard deviation of the Pi-vs-host difference of one logit, from the SQNR
    sigma = math.sqrt(float(np.mean(host**2)) / 10.0 ** (sqnr_db / 10.0)) if math.isfinite(sqnr_db) else 0.0
    worse = int(np.sum((pi_top1 != ref_top1) & (host_top1 == ref_top1)))
    better = int(np.sum((pi_top1 == ref_top1) & (host_top1 != ref_top1)))
    return {
        "agreement_host": float(np.mean(pi_top1 == host_top1)),
        "agreement_fp32_pi": float(np.mean(pi_top1 == ref_top1)),
        "agreement_fp32_host": float(np.mean(host_top1 == ref_top1)),
        "flip_gaps": [float(host[i, host_top1[i]] - host[i, pi_top1[i]]) for i in flips],
        "tie_limit": TIE_SIGMAS * math.sqrt(2.0) * sigma,  # the difference of two logits
        "worse": worse,
        "better": better,
        "p_worse": sign_test_p(worse, better),
    }


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """model -> (spec, artifact of its mixed plan for rpi4), compiled once per module run."""
    from edge_compress.compiler import compile_model
    from edge_compress.graph import extract_graph
    from edge_compress.modelspec import resolve_model
    from edge_compress.profiles import load_profile

    out_dir = tmp_path_factory.mktemp("emulated-artifacts")
    cache: dict[str, tuple[Any, Any]] = {}

    def get(model: str) -> tuple[Any, Any]:
        if model not in cache:
            spec = resolve_model(model)
            profile = load_profile("rpi4")
            graph = extract_graph(spec.model.eval(), spec.example_input(2))
            cache[model] = (
                spec,
                compile_model(spec, profile, plan=mixed_plan(spec, profile, graph), out_dir=out_dir),
            )
        return cache[model]

    return get


@pytest.mark.parametrize("model", MODELS)
def test_zoo_model_agrees_on_aarch64(model, emulated_runner, compiled, tmp_path, record_property):
    from edge_compress.export import parity
    from edge_compress.zoo.train import predict
    from runners.base import RunRequest

    spec, art = compiled(model)
    x = spec.dataset.x_val[:N_SAMPLES].astype(np.float32)
    fp32 = predict(spec.model.eval(), x).astype(np.float64)
    files = art.manifest["files"]
    assert {(d["format"], d["variant"]) for d in files.values()} == {
        ("onnx", "qdq"),
        ("tflite", "int8"),
        ("tflite", "int8-full"),
    }
    for name, info in files.items():
        bits = {d["weight_bits"] for d in art.manifest["layers"][name].values()}
        assert {4, 8} <= bits, f"{name}: int8 and int4 layers expected, got {bits}"
        path = art.path / name
        runner = parity.runner_for(path, info["format"], exact_int8=True)
        host = runner.run(x).astype(np.float64)
        ref = fp32
        if isinstance(runner, parity.TfliteRunner):
            ref = runner.onto_output_grid(fp32).astype(np.float64)  # int8-full: integer logits tie
        npz = tmp_path / f"{path.stem}.npz"
        np.savez(npz, x=x, y=spec.dataset.y_val[:N_SAMPLES], ref=host)
        m = emulated_runner.run(
            RunRequest(
                str(path),
                threads=1,
                warmup=0,
                min_count=1,
                min_duration_s=0.0,
                accuracy_npz=str(npz),
                timeout_s=900,
                detect_throttle=False,
                energy=False,
                label=f"{model}/{name}",
            )
        )
        what = f"{model} {name}"
        assert m.ok, f"{what}: {m.error}"
        assert m.machine == "aarch64"
        assert m.emulated is True  # timings under emulation are labelled, never performance figures
        assert m.runtime in ("onnxruntime", "litert", "tflite_runtime")
        assert m.runtime_version
        rep = m.extra["reference"]
        assert rep["samples"] == N_SAMPLES
        figures = check_decisions(host, ref, np.asarray(rep["top1"]), rep["sqnr_db"])
        record_property(name, {"sqnr_db": rep["sqnr_db"], **figures})
        assert rep["sqnr_db"] >= MIN_SQNR_DB[info["format"]], (
            f"{what}: SQNR vs the host {rep['sqnr_db']:.1f} dB"
        )
        assert abs(rep["agreement"] - figures["agreement_host"]) < 1e-9
        assert all(g <= figures["tie_limit"] for g in figures["flip_gaps"]), (
            f"{what}: the top-1 class differs from the host's on a sample that is no near tie "
            f"(logit gaps {figures['flip_gaps']}, limit {figures['tie_limit']:.3g})"
        )
        assert figures["p_worse"] >= ALPHA, (
            f"{what}: agrees with the fp32 model less often than the host does "
            f"({figures['worse']} samples worse, {figures['better']} better)"
        )


def test_decision_checks_catch_a_wrong_kernel():
    """The decision checks fail a target whose top-1 class moves on clear decisions."""
    rng = np.random.default_rng(0)
    host = rng.normal(0, 3, size=(48, 10))
    fp32 = host + rng.normal(0, 0.05, size=host.shape)
    good = check_decisions(host, fp32, host.argmax(1), 40.0)
    assert good["agreement_host"] == 1.0 and good["p_worse"] == 1.0
    wrong = host.argmax(1).copy()
    wrong[:8] = (wrong[:8] + 1) % 10  # eight clear decisions changed
    bad = check_decisions(host, fp32, wrong, 40.0)
    assert max(bad["flip_gaps"]) > bad["tie_limit"]
    assert bad["p_worse"] < ALPHA
