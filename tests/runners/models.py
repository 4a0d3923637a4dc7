"""Small real models for the runner tests and benchmarks, built without downloads.

``make_onnx_model`` writes a conv stack of about ``macs`` multiply-accumulates (about 1 ms per
inference on one x86 core at the default size); ``make_tflite_model`` writes a tiny
fully-connected TFLite flatbuffer (float or full-integer int8) with the schema shipped in
ai-edge-litert, so no TensorFlow is needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_onnx_model(
    path: str | Path, *, channels: int = 22, size: int = 32, layers: int = 4, classes: int = 10, seed: int = 0
) -> Path:
    """A Conv-ReLU stack + global pool + Gemm classifier; input ``x`` of shape (1, channels, size, size)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    cur = "x"
    for i in range(layers):
        w = (rng.standard_normal((channels, channels, 3, 3)) * (1.0 / np.sqrt(9 * channels))).astype(
            np.float32
        )
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [cur, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        cur = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [cur], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    fc = rng.standard_normal((channels, classes)).astype(np.float32)
    inits.append(numpy_helper.from_array(fc, "fc"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "convstack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def make_linear_onnx(path: str | Path, weight: np.ndarray) -> Path:
    """``logits = x @ weight`` with a dynamic batch: handy for exact accuracy checks."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, n = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n])],
        [numpy_helper.from_array(weight.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = Path(path)
    onnx.save(model, str(path))
    return path


def make_tflite_model(path: str | Path, weight: np.ndarray, *, int8: bool = False) -> Path:
    """A one-op FULLY_CONNECTED TFLite model ``y = x @ weight`` (x: (1, k)).

    With ``int8`` the input, weights and output are int8 (scale 1/16 for x and w, zero points 0),
    like a full-integer quantized model whose input must be int8.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    k, n = weight.shape
    model = s.ModelT()
    model.version = 3
    model.description = "edge-compress test model"
    code = s.OperatorCodeT()
    code.builtinCode = s.BuiltinOperator.FULLY_CONNECTED
    code.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    code.version = 1 if not int8 else 4
    model.operatorCodes = [code]
    empty = s.BufferT()
    wbuf = s.BufferT()
    if int8:
        wq = np.clip(np.round(weight.T * 16), -127, 127).astype(np.int8)
        wbuf.data = list(wq.tobytes())
    else:
        wbuf.data = list(weight.T.astype(np.float32).tobytes())
    model.buffers = [empty, wbuf]

    def tensor(name: str, shape: list[int], buffer: int, scale: float | None) -> object:
        t = s.TensorT()
        t.name, t.shape, t.buffer = name, shape, buffer
        t.type = s.TensorType.INT8 if int8 else s.TensorType.FLOAT32
        if int8 and scale is not None:
            q = s.QuantizationParametersT()
            q.scale, q.zeroPoint = [scale], [0]
            t.quantization = q
        return t

    sub = s.SubGraphT()
    sub.tensors = [
        tensor("x", [1, k], 0, 1 / 16),
        tensor("w", [n, k], 1, 1 / 16),
        tensor("y", [1, n], 0, 1 / 16 * 1 / 16 * k / 8),
    ]
    sub.inputs, sub.outputs = [0], [2]
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, -1], [2]
    op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = s.FullyConnectedOptionsT()
    sub.operators = [op]
    model.subgraphs = [sub]
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    path = Path(path)
    path.write_bytes(bytes(b.Output()))
    return path
