"""ARM agreement on an emulated Raspberry Pi: a real aarch64 Debian user space under qemu-user,
reached over SSH through the normal runner path (``scripts/emulated_pi.sh up`` builds and starts it
and writes the ``emulated-pi`` inventory entry; ``.ci/run`` does that before the tests).

Each zoo model is compiled for ``rpi4`` (int8 and int4 variants, ONNX and TFLite), run on the
emulated Pi by the device agent, and its outputs are compared with the same file run on this x86
host: top-1 agreement and output SQNR. The aarch64 wheels use different kernels (ONNX Runtime's ARM
kernels, XNNPACK's NEON paths), which is the point. Timings under emulation are labelled emulated.

Without the emulated Pi the tests skip, unless ``EDGE_COMPRESS_REQUIRE_EMULATED_PI=1`` (CI), where a
missing target is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.emulated, pytest.mark.slow]

TARGET = "emulated-pi"
N_SAMPLES = 32


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
    if inv is None or TARGET not in inv.targets:
        msg = f"the emulated Pi is not up ({reason}): run scripts/emulated_pi.sh up"
        if os.environ.get("EDGE_COMPRESS_REQUIRE_EMULATED_PI") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return get_runner(TARGET, inv)


def _host_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """Run the file in this host's runtime, one sample at a time, and return float logits."""
    outs = []
    if path.suffix == ".onnx":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for i in range(len(x)):
            outs.append(np.asarray(sess.run(None, {name: x[i : i + 1]})[0], np.float64).reshape(-1))
        return np.stack(outs)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    for i in range(len(x)):
        xi = x[i : i + 1].reshape(inp["shape"])
        if np.issubdtype(inp["dtype"], np.integer):
            s, zp = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            xi = np.clip(np.round(xi / s + zp), info.min, info.max).astype(inp["dtype"])
        else:
            xi = xi.astype(inp["dtype"])
        it.set_tensor(inp["index"], xi)
        it.invoke()
        o = np.asarray(it.get_tensor(out["index"]))
        if np.issubdtype(o.dtype, np.integer):
            s, zp = out["quantization"]
            o = (o.astype(np.float64) - zp) * s
        outs.append(o.astype(np.float64).reshape(-1))
    return np.stack(outs)


@pytest.mark.parametrize("model", ["lenet5", "conv1d", "resnet", "mobilenetv2"])
def test_zoo_model_agrees_on_aarch64(model, emulated_runner, tmp_path):
    from edge_compress.compiler import compile_model
    from edge_compress.modelspec import resolve_model
    from edge_compress.profiles import load_profile
    from runners.base import RunRequest

    spec = resolve_model(model)
    profile = load_profile("rpi4")
    x = spec.dataset.x_val[:N_SAMPLES].astype(np.float32)
    checked = 0
    for method in ("uniform8", "uniform4"):
        art = compile_model(spec, profile, method=method, out_dir=tmp_path / "artifacts")
        for name, info in art.manifest["files"].items():
            if info["variant"] == "int8-full" and model != "lenet5":
                continue  # the full-integer variant is covered once (lenet5); keeps CI time in bounds
            path = art.path / name
            ref = _host_logits(path, x)
            npz = tmp_path / f"{path.stem}.npz"
            np.savez(npz, x=x, y=ref.argmax(1), ref=ref)
            m = emulated_runner.run(
                RunRequest(str(path), threads=1, warmup=1, min_count=3, min_duration_s=0.0,
                           accuracy_npz=str(npz), timeout_s=900, detect_throttle=False, label=f"{model}/{name}")
            )
            assert m.ok, f"{name}: {m.error}"
            assert m.machine == "aarch64"
            assert m.emulated is True  # timings under emulation are labelled, never performance figures
            assert m.runtime in ("onnxruntime", "litert", "tflite_runtime")
            assert m.runtime_version
            rep = m.extra["reference"]
            assert rep["samples"] == N_SAMPLES
            # same file, ARM kernels vs x86 kernels: the same decisions and nearly the same logits
            assert rep["agreement"] >= 0.96, f"{name} ({info['variant']}): agreement {rep['agreement']:.3f}"
            assert rep["sqnr_db"] >= 25.0, f"{name} ({info['variant']}): SQNR {rep['sqnr_db']:.1f} dB"
            checked += 1
    assert checked >= 4
