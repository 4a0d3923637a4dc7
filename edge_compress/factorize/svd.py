"""Truncated-SVD factorization of Linear and Conv layers into two real layers.

- Linear (out, in): W ~ (U_k S_k^1/2)(S_k^1/2 V_k^T) -> ``down`` Linear(in, k, no bias) then
  ``up`` Linear(k, out, bias).
- Conv2d spatial SVD (AIMET): a (m, n, kh, kw) kernel, seen as the matrix M[(n, i), (m, j)],
  becomes ``vertical`` conv (k, n, kh, 1) (stride and padding along the height) then
  ``horizontal`` conv (m, k, 1, kw) (along the width, with the bias).
- Conv1d / Conv2d channel SVD: the (m, n*kh*kw) matrix becomes ``basis`` conv (k, n, kh, kw) with
  the original stride / padding / dilation then ``combine`` 1x1 conv (m, k) with the bias.

The replacement is an ``nn.Sequential`` with those child names, so graph extraction and
quantization see two ordinary layers (``<layer>.down`` / ``<layer>.up`` and so on).
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from edge_compress.errors import UserError
from edge_compress.graph import LayerInfo, ModelGraph

HOWS = ("svd", "spatial", "channel")
CHILD_NAMES = {"svd": ("down", "up"), "spatial": ("vertical", "horizontal"), "channel": ("basis", "combine")}


def default_how(li: LayerInfo) -> str:
    if li.kind == "linear":
        return "svd"
    if li.module_type == "Conv2d" and len(li.kernel) == 2 and li.kernel[0] > 1 and li.kernel[1] > 1:
        return "spatial"
    return "channel"


def check_factorizable(li: LayerInfo, how: str) -> None:
    if how not in HOWS:
        raise UserError(f"layer {li.name!r}: unknown factorization {how!r} (use svd, spatial or channel).")
    if li.kind == "linear":
        if how != "svd":
            raise UserError(f"layer {li.name!r} is a Linear layer: use factorization 'svd', not {how!r}.")
        return
    if li.groups != 1:
        raise UserError(
            f"layer {li.name!r} is a {'depthwise' if li.kind == 'depthwise_conv' else 'grouped'} convolution "
            f"(groups={li.groups}); low-rank factorization only applies to dense layers."
        )
    if how == "svd":
        raise UserError(f"layer {li.name!r} is a convolution: use factorization 'spatial' or 'channel'.")
    if how == "spatial" and li.module_type != "Conv2d":
        raise UserError(f"layer {li.name!r} ({li.module_type}): spatial SVD needs a Conv2d; use 'channel'.")


def weight_matrix(w: torch.Tensor, how: str) -> torch.Tensor:
    """The matrix whose SVD defines the factorization (float64)."""
    w = w.detach().double()
    if how == "svd" or how == "channel":
        return w.reshape(w.shape[0], -1)
    m, n, kh, kw = w.shape  # spatial: M[(n, i), (m, j)] = W[m, n, i, j]
    return w.permute(1, 2, 0, 3).reshape(n * kh, m * kw)


def full_rank(li: LayerInfo, how: str) -> int:
    if li.kind == "linear":
        return min(li.in_channels, li.out_channels)
    kh = li.kernel[0]
    kw = li.kernel[1] if len(li.kernel) > 1 else 1
    if how == "spatial":
        return min(li.in_channels * kh, li.out_channels * kw)
    return min(li.out_channels, li.in_channels * kh * kw)


def singular_values(module: nn.Module, how: str) -> np.ndarray:
    return torch.linalg.svdvals(weight_matrix(module.weight, how)).numpy()


def _split(mat: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mat ~ A @ B with A (rows, k) = U_k S_k^1/2 and B (k, cols) = S_k^1/2 V_k^T."""
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    r = torch.sqrt(s[:rank])
    return u[:, :rank] * r, r[:, None] * vh[:rank]


def factorize_layer(module: nn.Module, rank: int, how: str) -> nn.Sequential:
    """Two layers approximating ``module`` at ``rank`` (exact at full rank, up to float error)."""
    dtype, device = module.weight.dtype, module.weight.device
    bias = module.bias.detach() if module.bias is not None else None
    if isinstance(module, nn.Linear):
        a, b = _split(weight_matrix(module.weight, "svd"), rank)  # (out, k), (k, in)
        down = nn.Linear(module.in_features, rank, bias=False)
        up = nn.Linear(rank, module.out_features, bias=bias is not None)
        first_w, second_w = b, a
        first, second = down, up
    elif how == "spatial":
        m, n, kh, kw = module.weight.shape
        a, b = _split(weight_matrix(module.weight, "spatial"), rank)  # (n*kh, k), (k, m*kw)
        sh, sw = module.stride
        ph, pw = module.padding if isinstance(module.padding, tuple) else (module.padding, module.padding)
        dh, dw = module.dilation
        if isinstance(ph, str) or module.padding_mode != "zeros":
            raise UserError(f"spatial SVD needs numeric zero padding; layer has padding={module.padding!r}.")
        first = nn.Conv2d(n, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), bias=False)
        second = nn.Conv2d(
            rank, m, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), bias=bias is not None
        )
        first_w = a.reshape(n, kh, rank).permute(2, 0, 1).reshape(rank, n, kh, 1)
        second_w = b.reshape(rank, m, kw).permute(1, 0, 2).reshape(m, rank, 1, kw)
    else:
        w = module.weight
        m = w.shape[0]
        a, b = _split(weight_matrix(w, "channel"), rank)  # (m, k), (k, n*kh*kw)
        conv = type(module)
        first = conv(
            module.in_channels,
            rank,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            bias=False,
            padding_mode=module.padding_mode,
        )
        second = conv(rank, m, 1, bias=bias is not None)
        first_w = b.reshape((rank, *w.shape[1:]))
        second_w = a.reshape((m, rank) + (1,) * (w.dim() - 2))
    names = CHILD_NAMES["svd" if isinstance(module, nn.Linear) else how]
    seq = nn.Sequential(OrderedDict([(names[0], first), (names[1], second)])).to(device=device, dtype=dtype)
    with torch.no_grad():
        seq[0].weight.copy_(first_w.to(dtype))
        seq[1].weight.copy_(second_w.to(dtype))
        if bias is not None:
            seq[1].bias.copy_(bias)
    seq.train(module.training)
    return seq


RankSpec = dict[str, "int | tuple[int, str]"]


def factorize_model(model: nn.Module, graph: ModelGraph, ranks: RankSpec) -> nn.Module:
    """A copy of ``model`` with each layer in ``ranks`` replaced by its two-layer factorization.

    ``ranks[layer]`` is a rank (factorization chosen by layer type: svd for Linear, spatial for
    Conv2d with a k x k kernel, channel otherwise) or ``(rank, how)``.
    """
    info = {li.name: li for li in graph.layers}
    new = copy.deepcopy(model)
    for name, spec in ranks.items():
        if name not in info:
            raise UserError(f"factorize: no Conv / Linear layer named {name!r} in the model.")
        li = info[name]
        rank, how = (
            (spec, default_how(li)) if isinstance(spec, (int, np.integer)) else (int(spec[0]), spec[1])
        )
        check_factorizable(li, how)
        fr = full_rank(li, how)
        if not 1 <= rank <= fr:
            raise UserError(
                f"factorize: rank {rank} for layer {name!r} is outside 1..{fr} (its full {how} rank)."
            )
        parent, _, child = name.rpartition(".")
        setattr(
            new.get_submodule(parent) if parent else new,
            child,
            factorize_layer(new.get_submodule(name), int(rank), how),
        )
    return new


def factorized_macs(li: LayerInfo, rank: int, how: str) -> int:
    """MACs (one sample) of the two layers replacing ``li`` at ``rank``."""
    out_pos = (
        int(np.prod(li.output_shape[1:])) if li.kind != "linear" else int(np.prod(li.output_shape[:-1]) or 1)
    )
    if li.kind == "linear":
        return rank * (li.in_channels + li.out_channels) * out_pos
    kh = li.kernel[0]
    kw = li.kernel[1] if len(li.kernel) > 1 else 1
    if how == "spatial":  # vertical conv runs at (H_out, W_in), horizontal at (H_out, W_out)
        h_out, w_out = li.output_shape[1], li.output_shape[2]
        w_in = li.input_shape[2]
        return rank * li.in_channels * kh * h_out * w_in + li.out_channels * rank * kw * h_out * w_out
    return out_pos * (rank * li.in_channels * kh * kw + li.out_channels * rank)
