"""What the compiler knows about a model: layers, shapes, MACs, params and channel dependencies.

``extract_graph(model, example_input)`` runs one forward pass with hooks (shapes, MACs) and
traces the model with ``torch.fx`` to find which layers are coupled:

- **channel groups**: producers whose output channels must be pruned together (the inputs of a
  residual add share channel indices; a depthwise conv passes its input channels through, ``m``
  output channels per input channel when it has a channel multiplier ``m``), with the consumers
  that read those channels (and the offset at which they read them after a concat, and the
  number of features per channel when a Linear reads a flattened feature map or a layer reads the
  output of a depthwise conv with a multiplier), and the batch norms normalizing them (at their
  offset, also after a concat);
- **precision groups**: layers that must share a precision (the producers feeding one residual
  add or one concat: integer runtimes require the joined tensors to share a quantization grid).

Layers the analysis cannot follow (reshapes of channels, custom ops) are listed in
``unprunable`` with the reason, never silently pruned. Grouped convolutions (``groups > 1``, not
depthwise) are among them: removing some of their input or output channels would leave groups of
unequal width, which a convolution cannot express, so the channels they read and write are kept.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edge_compress.errors import UserError

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
# pooling modules that keep the channels (a local pool unless adaptive to one position)
_POOLS = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
)
_PASSTHROUGH_MODULES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Sigmoid,
    nn.Tanh,
    *_POOLS,
    nn.Dropout,
    nn.Identity,
)
_LOCAL_POOLS = (*_POOLS, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_PASSTHROUGH_FUNCS = {
    torch.relu,
    torch.nn.functional.relu,
    torch.nn.functional.relu6,
    torch.sigmoid,
    torch.tanh,
    torch.nn.functional.max_pool2d,
    torch.nn.functional.avg_pool2d,
    torch.nn.functional.adaptive_avg_pool2d,
    torch.nn.functional.dropout,
    torch.nn.functional.gelu,
    torch.nn.functional.silu,
}
_ADD_FUNCS = {operator.add, torch.add, operator.iadd}
_CAT_FUNCS = {torch.cat, torch.concat}


@dataclass(frozen=True)
class LayerInfo:
    """One quantizable layer (Conv1d / Conv2d / Linear), keyed by its qualified module name."""

    name: str
    kind: str  # conv | depthwise_conv | linear
    module_type: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    groups: int
    weight_shape: tuple[int, ...]
    weight_params: int
    params: int  # weight + bias
    macs: int  # multiply-accumulates for one sample
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    has_bias: bool
    # output elements (one sample) of a local max / average pool that reads this layer's output
    # (through activations and batch norms); 0: none. A runtime runs it as its own operator.
    pooled_elems: int = 0


@dataclass(frozen=True)
class Consumer:
    """A layer reading a channel group: channel c of the group is its input channel ``offset + c``
    (times ``flatten_factor`` features when it reads a flattened map)."""

    layer: str
    offset: int = 0
    flatten_factor: int = 1


@dataclass
class ChannelGroup:
    """Producers whose output channels are pruned together, and who reads them.

    ``consumers`` also lists the depthwise ``passthrough`` convs (where they read the channels);
    a passthrough conv with channel multiplier ``m`` writes output channels
    ``(offset + c * ff) * m ... + ff * m`` for channel ``c``. ``batchnorm_at`` says where each batch
    norm holds the channels (a Consumer record: the BN's name, offset, channels per group channel).
    """

    id: int
    producers: list[str]
    channels: int
    consumers: list[Consumer] = field(default_factory=list)
    passthrough: list[str] = field(default_factory=list)  # depthwise convs carrying these channels
    batchnorms: list[str] = field(default_factory=list)  # BN modules normalizing these channels
    prunable: bool = True
    reason: str = ""
    batchnorm_at: list[Consumer] = field(default_factory=list)  # BN name, offset, width per channel

    def bn_positions(self, name: str) -> list[Consumer]:
        """Where batch norm ``name`` holds this group's channels (offset 0, width 1 if unrecorded)."""
        found = [b for b in self.batchnorm_at if b.layer == name]
        return found or [Consumer(name)]


@dataclass
class ModelGraph:
    layers: list[LayerInfo]
    channel_groups: list[ChannelGroup]
    precision_groups: list[list[str]]
    traced: bool
    trace_error: str = ""
    input_shape: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()

    def layer(self, name: str) -> LayerInfo:
        for li in self.layers:
            if li.name == name:
                return li
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [li.name for li in self.layers]

    @property
    def total_macs(self) -> int:
        return sum(li.macs for li in self.layers)

    @property
    def total_weight_params(self) -> int:
        return sum(li.weight_params for li in self.layers)

    def unprunable(self) -> dict[str, str]:
        """producer layer -> reason it cannot be channel-pruned."""
        return {p: g.reason for g in self.channel_groups if not g.prunable for p in g.producers}

    def group_of(self, layer: str) -> ChannelGroup | None:
        for g in self.channel_groups:
            if layer in g.producers:
                return g
        return None

    def precision_group_of(self, layer: str) -> list[str]:
        for g in self.precision_groups:
            if layer in g:
                return g
        return [layer]


@dataclass(frozen=True)
class Slice:
    """Where a channel group lives in one module: channel ``c`` of the group is entries
    ``offset + c * width ... + width`` of the module's output channels (producer, depthwise
    passthrough, batch norm) or input features (consumer)."""

    layer: str
    role: str  # producer | passthrough | batchnorm | consumer
    offset: int
    width: int

    def positions(self, channels: Any) -> Any:
        """numpy indices of the entries of the given group channels (an int array)."""
        import numpy as np

        idx = np.asarray(channels, dtype=np.int64).reshape(-1, 1)
        return (self.offset + idx * self.width + np.arange(self.width, dtype=np.int64)).reshape(-1)


def group_slices(graph: ModelGraph, g: ChannelGroup) -> list[Slice]:
    """Every place the channels of group ``g`` occupy: producers (offset 0, width 1), depthwise
    passthrough convs (scaled by their channel multiplier), batch norms and consumers."""
    info = {li.name: li for li in graph.layers}
    out = [Slice(p, "producer", 0, 1) for p in g.producers]
    for c in g.consumers:
        if c.layer in g.passthrough:
            m = multiplier(info[c.layer])
            out.append(Slice(c.layer, "passthrough", c.offset * m, c.flatten_factor * m))
    for bn in g.batchnorms:
        out += [Slice(b.layer, "batchnorm", b.offset, b.flatten_factor) for b in g.bn_positions(bn)]
    out += [
        Slice(c.layer, "consumer", c.offset, c.flatten_factor)
        for c in g.consumers
        if c.layer not in g.passthrough
    ]
    return out


def _tuple(v: Any) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),)


def _layer_kind(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return "linear"
    if m.groups > 1 and m.groups == m.in_channels:  # type: ignore[attr-defined]
        return "depthwise_conv"  # also with a channel multiplier (out_channels = m x in_channels)
    return "conv"


def multiplier(li: LayerInfo) -> int:
    """Output channels per input channel of a depthwise conv (1 for any other layer)."""
    if li.kind != "depthwise_conv" or li.in_channels <= 0:
        return 1
    return max(1, li.out_channels // li.in_channels)


def _collect_layers(model: nn.Module, example: torch.Tensor) -> tuple[list[LayerInfo], tuple[int, ...]]:
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    order: list[str] = []
    pooled: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, QUANTIZABLE):

            def hook(mod, inp, out, name=name):
                if name not in shapes:
                    order.append(name)
                shapes[name] = (tuple(inp[0].shape), tuple(out.shape))

            hooks.append(m.register_forward_hook(hook))
        elif isinstance(m, _LOCAL_POOLS):

            def pool_hook(mod, inp, out):
                # a local pool that reads the last layer's output (same elements: only elementwise
                # operators in between); an adaptive pool to one position is a global pool
                if order and math.prod(out.shape[2:]) > 1:
                    last = order[-1]
                    if inp[0].numel() == math.prod(shapes[last][1]) and last not in pooled:
                        pooled[last] = out.numel() // max(1, out.shape[0])

            hooks.append(m.register_forward_hook(pool_hook))
    try:
        with torch.no_grad():
            out = model.eval()(example)
    except Exception as e:  # noqa: BLE001 - the user's model failed on the example input
        raise UserError(
            f"the model failed on the example input of shape {tuple(example.shape)}: {e}."
        ) from None
    finally:
        for h in hooks:
            h.remove()
    mods = dict(model.named_modules())
    layers = []
    batch = example.shape[0]
    for name in order:
        m = mods[name]
        ishape, oshape = shapes[name]
        w = m.weight
        nb = m.bias.numel() if getattr(m, "bias", None) is not None else 0
        if isinstance(m, nn.Linear):
            macs = m.in_features * m.out_features * (math.prod(oshape) // (batch * m.out_features))
            li = LayerInfo(
                name,
                "linear",
                "Linear",
                m.in_features,
                m.out_features,
                (1,),
                (1,),
                1,
                tuple(w.shape),
                w.numel(),
                w.numel() + nb,
                macs,
                ishape[1:],
                oshape[1:],
                nb > 0,
                pooled.get(name, 0),
            )
        else:
            out_spatial = math.prod(oshape[2:])
            macs = out_spatial * m.out_channels * (m.in_channels // m.groups) * math.prod(m.kernel_size)
            li = LayerInfo(
                name,
                _layer_kind(m),
                type(m).__name__,
                m.in_channels,
                m.out_channels,
                _tuple(m.kernel_size),
                _tuple(m.stride),
                m.groups,
                tuple(w.shape),
                w.numel(),
                w.numel() + nb,
                macs,
                ishape[1:],
                oshape[1:],
                nb > 0,
                pooled.get(name, 0),
            )
        layers.append(li)
    oshape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else ()
    return layers, oshape


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


# A tensor's channel layout: ordered segments (group id, group channels, tensor channels per group
# channel: more than 1 behind a depthwise conv with a channel multiplier); None = untracked.
_Layout = list[tuple[int, int, int]] | None


def _width(lay: list[tuple[int, int, int]]) -> int:
    return sum(s * f for _, s, f in lay)


def _analyse(model: nn.Module, layers: list[LayerInfo], input_channels: int):
    import torch.fx as fx

    gm = fx.symbolic_trace(model)
    mods = dict(gm.named_modules())
    info = {li.name: li for li in layers}
    uf = _UnionFind()
    gsize: dict[int, int] = {}
    gproducers: dict[int, list[str]] = {}
    gbad: dict[int, str] = {}
    gpass: dict[int, list[str]] = {}
    gbn: dict[int, list[Consumer]] = {}
    consumers: list[tuple[str, list[tuple[int, int, int]], int]] = []  # layer, layout, flatten factor
    prec_edges: list[list[str]] = []
    layout: dict[str, _Layout] = {}
    flat: dict[str, int] = {}  # node -> flatten factor if the tensor is a flattened feature map
    producers_of: dict[str, set[str]] = {}  # node -> producing quantizable layers (for precision groups)
    next_id = [0]

    def new_group(producer: str | None, channels: int) -> int:
        gid = next_id[0]
        next_id[0] += 1
        gsize[gid] = channels
        gproducers[gid] = [producer] if producer else []
        return gid

    def mark_bad(lay: _Layout, reason: str) -> None:
        for gid, _, _ in lay or []:
            gbad.setdefault(uf.find(gid), reason)

    input_gid = None
    for node in gm.graph.nodes:
        args = [a for a in node.args if isinstance(a, fx.Node)]
        if node.op == "placeholder":
            input_gid = new_group(None, input_channels)
            gbad[input_gid] = "channels of the model input are fixed"
            layout[node.name] = [(input_gid, input_channels, 1)]
            producers_of[node.name] = set()
            continue
        if node.op == "output":
            for a in args:
                mark_bad(layout.get(a.name), "its channels are the model's outputs")
            continue
        src = args[0].name if args else None
        in_layout = layout.get(src) if src else None
        in_prod = set().union(*(producers_of.get(a.name, set()) for a in args)) if args else set()
        if node.op == "call_module":
            m = mods[node.target]
            name = str(node.target)
            if isinstance(m, QUANTIZABLE) and name in info:
                li = info[name]
                ff = flat.get(src, 1) if src else 1
                if in_layout is not None:
                    consumers.append((name, in_layout, ff))
                grouped = li.kind == "conv" and li.groups > 1
                if grouped:
                    mark_bad(
                        in_layout,
                        f"they feed grouped convolution {name!r} (groups={li.groups}), whose groups would "
                        "lose unequal numbers of input channels",
                    )
                if (
                    li.kind == "depthwise_conv"
                    and in_layout is not None
                    and _width(in_layout) == li.in_channels
                ):
                    for gid, _, _ in in_layout:
                        gpass.setdefault(uf.find(gid), []).append(name)
                    mult = multiplier(li)
                    layout[node.name] = [(gid, s, f * mult) for gid, s, f in in_layout]
                else:
                    gid = new_group(name, li.out_channels)
                    layout[node.name] = [(gid, li.out_channels, 1)]
                    if grouped:
                        gbad[gid] = (
                            f"{name!r} is a grouped convolution (groups={li.groups}): removing some of its "
                            "output channels would leave groups of unequal width"
                        )
                    elif li.kind == "depthwise_conv":
                        mark_bad(
                            in_layout, f"they feed depthwise conv {name!r} through a layout it cannot map"
                        )
                        gbad[gid] = (
                            f"depthwise conv {name!r} reads channels the analysis cannot follow, so its output "
                            "channels cannot be removed with their inputs"
                        )
                producers_of[node.name] = {name}
                continue
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and in_layout is not None:
                off = 0
                for gid, s, f in in_layout:
                    gbn.setdefault(gid, []).append(Consumer(name, off, f))
                    off += s * f
                if m.num_features != off:  # e.g. a BatchNorm1d over a flattened feature map
                    mark_bad(
                        in_layout,
                        f"batch norm {name!r} normalizes {m.num_features} features, not the {off} channels "
                        "the analysis tracks",
                    )
                if src in flat:
                    flat[node.name] = flat[src]
                layout[node.name] = in_layout
                producers_of[node.name] = in_prod
                continue
            if isinstance(m, _PASSTHROUGH_MODULES):
                layout[node.name] = in_layout
                producers_of[node.name] = in_prod
                if src in flat:
                    flat[node.name] = flat[src]
                continue
            if isinstance(m, nn.Flatten):
                layout[node.name] = in_layout
                producers_of[node.name] = in_prod
                shp = node.meta.get("shape")
                flat[node.name] = -1 if shp is None else 0  # resolved from layer shapes below
                continue
            if isinstance(m, nn.Sequential) or len(list(m.children())) == 0:
                mark_bad(
                    in_layout, f"it feeds module {name!r} ({type(m).__name__}) the analysis cannot follow"
                )
                layout[node.name] = None
                producers_of[node.name] = in_prod
                continue
        if node.op == "call_function" and node.target in _ADD_FUNCS and len(args) == 2:
            la, lb = layout.get(args[0].name), layout.get(args[1].name)
            if la is not None and lb is not None and [(s, f) for _, s, f in la] == [(s, f) for _, s, f in lb]:
                for (ga, _, _), (gb, _, _) in zip(la, lb, strict=True):
                    uf.union(ga, gb)
                layout[node.name] = la
            else:
                mark_bad(la, "a residual add joins channel layouts the analysis cannot align")
                mark_bad(lb, "a residual add joins channel layouts the analysis cannot align")
                layout[node.name] = None
            prec_edges.append(sorted(in_prod))
            producers_of[node.name] = in_prod
            continue
        if node.op == "call_function" and node.target in _CAT_FUNCS:
            tensors = node.args[0]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            parts = [layout.get(t.name) for t in tensors]
            prod = set().union(*(producers_of.get(t.name, set()) for t in tensors))
            if dim == 1 and all(p is not None for p in parts):
                layout[node.name] = [seg for p in parts for seg in p]  # type: ignore[union-attr]
            else:
                for p in parts:
                    mark_bad(p, "a concatenation along a non-channel axis")
                layout[node.name] = None
            prec_edges.append(sorted(prod))
            producers_of[node.name] = prod
            continue
        if node.op == "call_function" and node.target in _PASSTHROUGH_FUNCS:
            layout[node.name] = in_layout
            producers_of[node.name] = in_prod
            continue
        if node.op == "call_function" and node.target in (torch.flatten,):
            layout[node.name] = in_layout
            flat[node.name] = 0
            producers_of[node.name] = in_prod
            continue
        if node.op in ("get_attr",):
            layout[node.name] = None
            producers_of[node.name] = set()
            continue
        # Anything else (reshape, permute, mul by tensors, ...): stop tracking these channels.
        desc = (
            node.target
            if isinstance(node.target, str)
            else getattr(node.target, "__name__", str(node.target))
        )
        for a in args:
            mark_bad(
                layout.get(a.name), f"they flow into '{desc}', which the channel analysis does not model"
            )
        layout[node.name] = None
        producers_of[node.name] = in_prod
    return uf, gsize, gproducers, gbad, gpass, gbn, consumers, prec_edges, input_gid


def extract_graph(model: nn.Module, example_input: torch.Tensor) -> ModelGraph:
    """Layers in execution order, channel groups for pruning, precision groups for quantization."""
    layers, out_shape = _collect_layers(model, example_input)
    if not layers:
        raise UserError("the model has no Conv1d, Conv2d or Linear layer to compress.")
    in_shape = tuple(example_input.shape[1:])
    try:
        in_ch = int(in_shape[0]) if in_shape else 1
        uf, gsize, gprod, gbad, gpass, gbn, consumers, prec_edges, input_gid = _analyse(model, layers, in_ch)
    except Exception as e:  # noqa: BLE001 - fx cannot trace dynamic control flow
        msg = f"torch.fx could not trace the model ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        groups = [
            ChannelGroup(i, [li.name], li.out_channels, prunable=False, reason=msg)
            for i, li in enumerate(layers)
        ]
        return ModelGraph(
            layers, groups, [], traced=False, trace_error=msg, input_shape=in_shape, output_shape=out_shape
        )

    info = {li.name: li for li in layers}
    roots: dict[int, ChannelGroup] = {}
    for gid in sorted(gsize):
        r = uf.find(gid)
        g = roots.get(r)
        if g is None:
            g = roots[r] = ChannelGroup(id=r, producers=[], channels=gsize[r])
        g.producers += gprod.get(gid, [])
        g.batchnorm_at += gbn.get(gid, [])
        if gid in gbad and g.prunable:
            g.prunable, g.reason = False, gbad[gid]
    for gid, names in gpass.items():
        roots[uf.find(gid)].passthrough += names
    for gid, reason in gbad.items():
        g = roots[uf.find(gid)]
        if g.prunable:
            g.prunable, g.reason = False, reason
    for layer, lay, _ in consumers:
        li = info[layer]
        total = _width(lay)  # tensor channels (features per position)
        offset = 0
        for gid, size, per in lay:
            g = roots[uf.find(gid)]
            ff = 1
            if li.kind == "linear" and total > 0 and li.in_channels != total:
                if li.in_channels % total:
                    if g.prunable:
                        g.prunable, g.reason = (
                            False,
                            f"layer {layer!r} reads them through a reshape it cannot map",
                        )
                else:
                    ff = li.in_channels // total  # positions per channel of a flattened feature map
            g.consumers.append(Consumer(layer, offset * ff, per * ff))
            offset += size * per
    groups = [g for r, g in sorted(roots.items()) if r != input_gid and g.producers]
    for g in groups:
        g.passthrough = sorted(set(g.passthrough))
        g.batchnorm_at = list(dict.fromkeys(g.batchnorm_at))
        g.batchnorms = list(dict.fromkeys(b.layer for b in g.batchnorm_at))
        if not g.consumers and g.prunable:
            g.prunable, g.reason = False, "no layer reads these channels"
    # precision groups: union of producers feeding the same add / concat
    puf = _UnionFind()
    idx = {n: i for i, n in enumerate(info)}
    for edge in prec_edges:
        ids = [idx[n] for n in edge if n in idx]
        for a in ids[1:]:
            puf.union(ids[0], a)
    buckets: dict[int, list[str]] = {}
    for n, i in idx.items():
        buckets.setdefault(puf.find(i), []).append(n)
    prec = [sorted(v, key=lambda n: idx[n]) for v in buckets.values() if len(v) > 1]
    return ModelGraph(layers, groups, prec, traced=True, input_shape=in_shape, output_shape=out_shape)
