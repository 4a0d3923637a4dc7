"""The cost model's fused kernels read from an ONNX file (for measurements of files, not plans).

Nightly runs measure artifacts, raw ``.onnx`` files included; to learn from those measurements the
cost model needs the same per-kernel description :func:`edge_compress.costmodel.kernels_of` gives
for a (graph, plan). :func:`kernels_from_onnx` recovers it from the file itself: every Conv / Gemm /
MatMul (float or QDQ, and the already fused QLinearConv / QGemm / ConvInteger / MatMulInteger forms)
becomes one kernel, with its shapes from ONNX shape inference, its weight bits from the weight's
storage type (an initializer, or the DequantizeLinear of one) and its activation bits from the
QuantizeLinear / DequantizeLinear pair in front of it. Layer names are the weight names without
their ``.weight`` suffix (the module path), else the node names.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_compress.costmodel import Kernel

LAYER_TYPES = {
    "Conv",
    "QLinearConv",
    "ConvInteger",
    "Gemm",
    "MatMul",
    "QGemm",
    "MatMulInteger",
    "QLinearMatMul",
}
# Operators a tensor passes through on its way to the next layer (what "joins" looks through).
_PASS = {
    "Relu",
    "Clip",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "QuantizeLinear",
    "DequantizeLinear",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "BatchNormalization",
    "Identity",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Dropout",
}
_LOCAL_POOL = {"MaxPool", "AveragePool", "QLinearAveragePool"}
# pass-through operators that change the tensor's shape or layout: a pool after one of them does not
# pool the layer's own output map
_RESHAPING = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "GlobalAveragePool", "GlobalMaxPool"}
_JOIN = {"Add", "Sum", "Concat", "Mul", "Sub", "QLinearAdd", "QLinearConcat", "QLinearMul"}
# weight position of each layer operator (QLinear forms carry scale / zero point inputs in between)
_WEIGHT_INPUT = {"QLinearConv": 3, "QGemm": 3, "QLinearMatMul": 3}
_BIAS_INPUT = {"Conv": 2, "Gemm": 2, "QLinearConv": 8, "QGemm": 6}


def _bits(elem_type: int) -> int | None:
    from onnx import TensorProto as T

    return {
        T.FLOAT: None,
        T.FLOAT16: 16,
        T.BFLOAT16: 16,
        T.DOUBLE: None,
        T.INT8: 8,
        T.UINT8: 8,
        T.INT16: 16,
        T.UINT16: 16,
        T.INT32: 32,
    }.get(elem_type, 4 if elem_type in _int4_types() else None)


def _int4_types() -> set[int]:
    from onnx import TensorProto as T

    return {getattr(T, n) for n in ("INT4", "UINT4") if hasattr(T, n)}


def _dims(vi: Any) -> tuple[int, ...] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in t.shape.dim)


def kernels_from_onnx(path: str | os.PathLike[str]) -> list[Kernel]:
    """The fused kernels of an ONNX file, io kernel first (see the module docstring).

    Raises:
        ValueError: the file has no layer operators, or shapes that shape inference cannot give.
    """
    import onnx
    from onnx import shape_inference

    from edge_compress.costmodel import Kernel, layer_precision
    from edge_compress.plan import LayerDecision

    model = onnx.load(str(path), load_external_data=False)
    try:
        model = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - use what the file declares
        pass
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        d = _dims(vi)
        if d is not None:
            shapes[vi.name] = d
    for name, init in inits.items():
        shapes[name] = tuple(int(x) for x in init.dims)
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def const_source(name: str) -> tuple[str, int | None] | None:
        """(initializer name, storage bits) of a constant weight, looking through DequantizeLinear.

        A weight rebuilt from integer storage by ``Cast -> Mul(scale)`` (a weight-only file) is
        constant-folded by onnxruntime into a float weight when the session is created: the layer
        runs as a float kernel, so it counts as float (named by the rebuilt tensor)."""
        if name in inits:
            return name, _bits(inits[name].data_type)
        p = producer.get(name)
        if p is not None and p.op_type == "DequantizeLinear" and p.input and p.input[0] in inits:
            return p.input[0], _bits(inits[p.input[0]].data_type) or 8
        if p is not None and p.op_type == "Mul" and len(p.input) == 2:
            for a, b in (p.input, p.input[::-1]):
                c = producer.get(a)
                if b in inits and c is not None and c.op_type == "Cast" and c.input and c.input[0] in inits:
                    shapes.setdefault(name, tuple(int(x) for x in inits[c.input[0]].dims))
                    return name, 32
        return None

    def act_bits(name: str) -> int | None:
        p = producer.get(name)
        if p is not None and p.op_type == "DequantizeLinear" and p.input and p.input[0] not in inits:
            return _bits(_elem_type(g, p.input[0])) or 8
        return None

    def attr(n: Any, key: str, default: Any) -> Any:
        for a in n.attribute:
            if a.name == key:
                return onnx.helper.get_attribute_value(a)
        return default

    def first_after(out: str, hit: Any, through: Any) -> Any:
        """The first operator ``hit`` accepts among those reading ``out`` directly or through
        operators ``through`` accepts (None: none)."""
        seen, todo = set(), [out]
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            for c in consumers.get(t, []):
                if hit(c):
                    return c
                if through(c):
                    todo.extend(c.output)
        return None

    def joins(out: str) -> bool:
        def is_join(c: Any) -> bool:
            return c.op_type in _JOIN and sum(1 for i in c.input if i and i not in inits) >= 2

        return first_after(out, is_join, lambda c: c.op_type in _PASS) is not None

    def pooled(out: str) -> int:
        """Output elements (one sample) of a local pool reading ``out`` through elementwise operators."""
        p = first_after(
            out,
            lambda c: c.op_type in _LOCAL_POOL,
            lambda c: c.op_type in _PASS and c.op_type not in _RESHAPING,
        )
        ys = shapes.get(p.output[0]) if p is not None else None
        return math.prod(ys[1:]) if ys and len(ys) > 2 else 0

    raw: list[tuple[Any, Kernel]] = []
    for n in g.node:
        if n.op_type not in LAYER_TYPES:
            continue
        wi = _WEIGHT_INPUT.get(n.op_type, 1)
        if len(n.input) <= wi:
            continue
        w = const_source(n.input[wi])
        x_name = n.input[0]
        if w is None:  # a MatMul of two activations, or weights first
            if n.op_type == "MatMul" and const_source(x_name) is not None:
                w, x_name = const_source(x_name), n.input[1]
            else:
                continue
        wname, wbits = w
        wshape = shapes.get(wname)
        xshape = shapes.get(x_name)
        yshape = shapes.get(n.output[0])
        if wshape is None or xshape is None or yshape is None:
            raise ValueError(f"{path}: no shapes for {n.op_type} {n.name!r} (shape inference failed)")
        if n.op_type in ("QLinearConv", "ConvInteger", "QGemm", "MatMulInteger", "QLinearMatMul"):
            a_bits: int | None = 8
            wbits = wbits or 8
        else:
            a_bits = act_bits(x_name)
        bias = len(n.input) > _BIAS_INPUT.get(n.op_type, 99) and bool(n.input[_BIAS_INPUT[n.op_type]])
        layer = wname
        for suffix in ("_quantized", "_DequantizeLinear", ".weight"):
            layer = layer.removesuffix(suffix)
        if layer == wname and not wname.endswith(".weight"):
            layer = n.name or wname
        d = LayerDecision(layer, weight_bits=wbits if wbits and wbits < 32 else None, act_bits=a_bits)
        prec = layer_precision(d if d.weight_bits is not None else None)
        wb = float(d.weight_bits or 32)
        if "Conv" in n.op_type:
            groups = int(attr(n, "group", 1))
            cout, cg = int(wshape[0]), int(wshape[1])
            cin = cg * groups
            karea = math.prod(wshape[2:]) if len(wshape) > 2 else 1
            stride = max(attr(n, "strides", [1]) or [1])
            kind = "depthwise_conv" if groups > 1 and groups == cin else "conv"
            in_sp = math.prod(xshape[2:]) if len(xshape) > 2 else 1
            out_sp = math.prod(yshape[2:]) if len(yshape) > 2 else 1
            dims = max(1, len(wshape) - 2)
        else:
            trans_b = int(attr(n, "transB", 0)) if n.op_type in ("Gemm", "QGemm") else 0
            cout, cin = (int(wshape[0]), int(wshape[1])) if trans_b else (int(wshape[-1]), int(wshape[-2]))
            groups, karea, stride, kind, dims = 1, 1, 1, "linear", 0
            in_sp = max(1, math.prod(xshape[1:]) // max(1, cin))
            out_sp = max(1, math.prod(yshape[1:]) // max(1, cout))
        wp = cout * (cin // max(1, groups)) * karea
        wbytes = math.ceil(wp * wb / 8) + (cout * 4 if bias else 0) + (cout * 4 if wb < 32 else 0)
        k = Kernel(
            layer,
            layer,
            kind,
            prec,
            int(out_sp * wp),
            int(wp),
            float(wbytes),
            int(cin * in_sp),
            int(cout * out_sp),
            int(cin),
            int(cout),
            int(groups),
            int(karea),
            int(out_sp),
            int(stride),
            int(dims),
            joins=joins(n.output[0]),
            pooled_elems=pooled(n.output[0]) if kind != "linear" else 0,
        )
        raw.append((n, k))
    if not raw:
        raise ValueError(f"{path}: no Conv / Gemm / MatMul layer with constant weights")
    in_elems = sum(math.prod(shapes.get(i.name, (0,))) for i in g.input if i.name not in inits)
    out_elems = sum(math.prod(shapes.get(o.name, (0,))) for o in g.output)
    return _link_file([k for _, k in raw], int(in_elems), int(out_elems))


def _elem_type(g: Any, *names: str) -> int:
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.name in names:
            return int(vi.type.tensor_type.elem_type)
    return 0


def _link_file(ks: list[Kernel], n_in: int, n_out: int) -> list[Kernel]:
    from dataclasses import replace

    from edge_compress.costmodel import Kernel

    out = []
    for i, k in enumerate(ks):
        if i + 1 < len(ks):
            nk = ks[i + 1]
            out.append(replace(k, next_in_elems=nk.in_elems, next_kind=nk.kind, next_precision=nk.precision))
        else:
            out.append(replace(k, next_in_elems=n_out or k.out_elems))
    first = ks[0]
    io = Kernel(
        "(io)",
        "(io)",
        "io",
        first.precision,
        0,
        0,
        0.0,
        n_in or first.in_elems,
        n_out or ks[-1].out_elems,
        1,
        1,
        1,
        1,
        1,
        1,
        0,
        n_out or ks[-1].out_elems,
        False,
    )
    return [io] + out
