"""The parameters that belong to each output channel of a channel group, as one vector per channel.

A channel of group ``g`` owns: its producers' output-channel slices (weight and bias), the
slices of every batch norm normalizing the group (gamma and beta), the slices of depthwise
passthrough convs carrying it, and optionally the consumers' input slices (``flatten_factor``
features per channel). When all of them are zero the channel outputs exactly zero, so removing
it physically does not change the network. Group lasso penalizes the norm of that vector;
one-shot L1 ranks channels by the L1 norm of the producer weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edge_compress.graph import ChannelGroup, ModelGraph, group_slices


@dataclass(frozen=True)
class Part:
    module: str
    attr: str  # weight | bias
    dim: int  # 0: output channels, 1: input channels (consumers)
    offset: int
    ff: int  # entries per channel along ``dim`` (flattened features, depthwise channel multiplier)
    role: str  # producer | batchnorm | passthrough | consumer


def normalized_by(model: nn.Module) -> dict[str, str]:
    """Conv / Linear layer -> the batch norm reading its output directly (empty if fx cannot trace)."""
    import torch.fx as fx

    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - untraceable models simply get no BN shortcut
        return {}
    mods = dict(gm.named_modules())
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(mods.get(node.target), nn.modules.batchnorm._BatchNorm):
            src = node.args[0] if node.args else None
            if isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1:
                out[str(src.target)] = str(node.target)
    return out


def group_parts(
    graph: ModelGraph,
    g: ChannelGroup,
    model: nn.Module,
    include_consumers: bool = False,
    bn_of: dict[str, str] | None = None,
) -> list[Part]:
    """The parameters of group ``g``'s channels. A conv whose output goes straight into one of the
    group's batch norms contributes nothing: the BN's gamma and beta decide the channel (gamma = beta
    = 0 makes it output exactly zero in training and in eval mode), and shrinking the conv weights
    would only desynchronize the BN running statistics (the conv is scale-invariant under BN)."""
    parts: list[Part] = []
    bn_of = bn_of or {}

    def add(name: str, dim: int, offset: int, ff: int, role: str) -> None:
        if role in ("producer", "passthrough") and bn_of.get(name) in g.batchnorms:
            return
        mod = model.get_submodule(name)
        for attr in ("weight", "bias"):
            if getattr(mod, attr, None) is not None and not (dim == 1 and attr == "bias"):
                parts.append(Part(name, attr, dim, offset, ff, role))

    for sl in group_slices(graph, g):
        if sl.role != "consumer":
            add(sl.layer, 0, sl.offset, sl.width, sl.role)
        elif include_consumers:
            add(sl.layer, 1, sl.offset, sl.width, "consumer")
    return parts


def scale_free(g: ChannelGroup, bn_of: dict[str, str]) -> bool:
    """True when rescaling the whole group leaves the network's function unchanged (up to BN eps and
    activation clipping): every producer feeds one of the group's batch norms and every layer reading
    the channels (besides depthwise passthroughs) is itself followed by a batch norm."""
    readers = [c.layer for c in g.consumers if c.layer not in g.passthrough]
    return (
        bool(readers)
        and all(bn_of.get(p) in g.batchnorms for p in g.producers)
        and all(r in bn_of for r in readers)
    )


class ChannelParams:
    """Per-channel views of the parameters of the prunable groups of one model instance."""

    def __init__(
        self, model: nn.Module, graph: ModelGraph, groups: list[ChannelGroup], include_consumers: bool = False
    ) -> None:
        self.model = model
        self.groups = groups
        bn_of = normalized_by(model)
        self.parts = {g.id: group_parts(graph, g, model, include_consumers, bn_of) for g in groups}
        self.scale_free = {g.id for g in groups if not include_consumers and scale_free(g, bn_of)}
        self.size = {g.id: g.channels for g in groups}

    def _view(self, part: Part, c: int) -> torch.Tensor:
        """The tensor slice of ``part`` for the group's C channels, shaped (C, -1)."""
        t = getattr(self.model.get_submodule(part.module), part.attr)
        n = c * part.ff
        if part.dim == 0:
            return t[part.offset : part.offset + n].reshape(c, -1)
        s = t[:, part.offset : part.offset + n]  # (out, C*ff, ...)
        return s.reshape(s.shape[0], c, part.ff, -1).transpose(0, 1).reshape(c, -1)

    @torch.no_grad()
    def sq_norms(self, gid: int, roles: tuple[str, ...] | None = None) -> torch.Tensor:
        c = self.size[gid]
        total = torch.zeros(c)
        for part in self.parts[gid]:
            if roles is None or part.role in roles:
                total += self._view(part, c).detach().float().pow(2).sum(1).cpu()
        return total

    def norms(self) -> dict[int, torch.Tensor]:
        return {gid: self.sq_norms(gid).sqrt() for gid in self.parts}

    @torch.no_grad()
    def scale(self, gid: int, factor: torch.Tensor) -> None:
        """Multiply every parameter of channel c by ``factor[c]`` (in place)."""
        c = self.size[gid]
        for part in self.parts[gid]:
            t = getattr(self.model.get_submodule(part.module), part.attr)
            n = c * part.ff
            ff = factor.to(t.dtype).repeat_interleave(part.ff)
            if part.dim == 0:
                shape = (n,) + (1,) * (t.dim() - 1)
                t[part.offset : part.offset + n].mul_(ff.view(shape))
            else:
                shape = (1, n) + (1,) * (t.dim() - 2)
                t[:, part.offset : part.offset + n].mul_(ff.view(shape))

    @torch.no_grad()
    def prox(
        self,
        thresholds: dict[int, float],
        floor: dict[int, int] | None = None,
        sphere: dict[int, float] | None = None,
    ) -> dict[int, torch.Tensor]:
        """Group soft-thresholding: w_c <- max(0, 1 - t / ||w_c||) w_c. Returns the new norms.

        ``floor[g]``: a step that would leave fewer nonzero channels is skipped (a per-layer
        pruning limit). ``sphere[g] = R``: the group is then projected back onto total norm R. For
        a batch-normalized group whose scale is free (the next BN undoes it) this constraint costs
        nothing, and without it the penalty would shrink the whole group at no loss until it
        reached zero all at once; on the sphere only the channels the loss needs least die.
        """
        out = {}
        floor = floor or {}
        sphere = sphere or {}
        for gid, t in thresholds.items():
            nrm = self.sq_norms(gid).sqrt()
            if int((nrm > t).sum()) < floor.get(gid, 1):
                out[gid] = nrm
                continue
            factor = torch.clamp(1 - t / nrm.clamp_min(1e-12), min=0.0)
            if gid in sphere:
                total = float((nrm * factor).pow(2).sum().sqrt())
                if total > 0:
                    factor = factor * (sphere[gid] / total)
            self.scale(gid, factor)
            out[gid] = nrm * factor
        return out

    def state(self) -> dict[str, torch.Tensor]:
        """A copy of every parameter the groups touch (to restore channels later)."""
        keys = {(p.module, p.attr) for parts in self.parts.values() for p in parts}
        return {f"{m}.{a}": getattr(self.model.get_submodule(m), a).detach().clone() for m, a in keys}

    @torch.no_grad()
    def restore(self, gid: int, channel: int, state: dict[str, torch.Tensor]) -> None:
        """Copy channel ``channel`` of group ``gid`` back from ``state``."""
        for part in self.parts[gid]:
            t = getattr(self.model.get_submodule(part.module), part.attr)
            src = state[f"{part.module}.{part.attr}"]
            a = part.offset + channel * part.ff
            if part.dim == 0:
                t[a : a + part.ff] = src[a : a + part.ff]
            else:
                t[:, a : a + part.ff] = src[:, a : a + part.ff]
