"""Weight rounding on a fixed per-channel grid: round-to-nearest, or GPTQ's error-compensating rounding.

Round-to-nearest minimises each weight's own error ``||Q(W) - W||^2``. What the network sees is
the layer's output error ``||(Q(W) - W) X||^2`` over its real inputs ``X``, and inputs are
correlated (neighbouring pixels, channels after a ReLU). GPTQ (Frantar et al., ICLR 2023; the
Optimal Brain Quantizer of Frantar & Alistarh 2022 applied column by column) rounds the input
columns of the weight matrix one at a time and moves each rounding error onto the columns not yet
rounded, in the direction the input covariance ``H = E[x x^T]`` says cancels it best. The grid
(the per-channel scales of :func:`edge_compress.quant.fakequant.weight_scales`) is unchanged, so
the result is an ordinary symmetric per-channel int4 / int8 tensor: every runtime runs it, and the
exporters write it as they write rounded-to-nearest weights.

Here: ``H`` of every layer from the float (BN-folded) model's inputs on the calibration data, per
convolution group (a depthwise 3x3 convolution is C independent 9x9 problems), columns in order of
decreasing ``H`` diagonal ("act order"), damping 1% of the mean diagonal; each channel's largest
weight keeps its round-to-nearest code, the end of the grid, so that exporters that derive a
channel's scale from its largest weight (min-max) find the plan's scale. The layer inputs are the
float model's, so each layer's rounded weights depend only on its own bit-width, not on the other
layers' (the noise model's terms stay additive).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edge_compress.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

ROUNDINGS = ("gptq", "nearest")
DAMP = 0.01


def check_rounding(rounding: str) -> str:
    if rounding not in ROUNDINGS:
        raise UserError(f"unknown weight rounding {rounding!r} (use {' or '.join(ROUNDINGS)}).")
    return rounding


def _columns(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer's input as the columns its weight multiplies: (positions, groups, weight row length)."""
    import torch.nn.functional as F
    from torch import nn

    if isinstance(mod, nn.Linear):
        return x.reshape(-1, 1, x.shape[-1])
    if isinstance(mod, nn.Conv1d):
        x = x.unsqueeze(2)
        k, st, pd, dl = (1, mod.kernel_size[0]), (1, mod.stride[0]), (0, mod.padding[0]), (1, mod.dilation[0])
    elif isinstance(mod, nn.Conv2d):
        k, st, pd, dl = mod.kernel_size, mod.stride, mod.padding, mod.dilation
    else:
        raise UserError(f"GPTQ rounding supports Linear, Conv1d and Conv2d layers, not {type(mod).__name__}.")
    if isinstance(pd, str) or getattr(mod, "padding_mode", "zeros") != "zeros":
        raise UserError(f"GPTQ rounding needs explicit zero padding (layer has padding={pd!r}).")
    u = F.unfold(x, k, dilation=dl, padding=pd, stride=st)  # (N, C*kh*kw, L), channel-major rows
    g = mod.groups
    return (
        u.reshape(u.shape[0], g, u.shape[1] // g, u.shape[2])
        .permute(0, 3, 1, 2)
        .reshape(-1, g, u.shape[1] // g)
    )


def input_hessians(
    model: nn.Module, names: list[str], x: np.ndarray, batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """Per layer, ``E[x x^T]`` of its input columns on ``x`` (float64, shape (groups, K, K))."""
    import torch

    mods = dict(model.named_modules())
    acc: dict[str, torch.Tensor] = {}
    count: dict[str, int] = dict.fromkeys(names, 0)

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], n: str) -> None:
        c = _columns(m, inp[0].detach()).double()
        h = torch.einsum("mgi,mgj->gij", c, c)
        acc[n] = acc[n] + h if n in acc else h
        count[n] += c.shape[0]

    hooks = [mods[n].register_forward_pre_hook(lambda m, i, n=n: hook(m, i, n)) for n in names]
    try:
        model.eval()
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])))
    finally:
        for h in hooks:
            h.remove()
    return {n: acc[n] / max(count[n], 1) for n in names if n in acc}


def _upper_inverse_cholesky(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of ``H^-1`` (batched), damping more when ``H`` is near singular."""
    import torch

    eye = torch.eye(h.shape[-1], dtype=h.dtype)
    mean_diag = torch.diagonal(h, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)[:, None, None]
    damp = DAMP
    for _ in range(6):
        hd = h + damp * mean_diag * eye
        lower, info = torch.linalg.cholesky_ex(hd)
        if not bool(info.any()):
            return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
        damp *= 10.0
    raise UserError("GPTQ: the layer's input covariance is not positive definite even with damping.")


def gptq_codes(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """GPTQ integer codes of ``w`` (torch layout, out channels first) on the symmetric per-channel
    grid ``scale`` at ``bits``, given its input covariance ``h`` (groups, K, K)."""
    import torch

    qmax = 2 ** (bits - 1) - 1
    g, k = h.shape[0], h.shape[-1]
    out = w.shape[0]
    wm = w.detach().reshape(g, out // g, k).double().clone()
    s = scale.detach().double().reshape(g, out // g)
    h = h.clone()
    dead = torch.diagonal(h, dim1=-2, dim2=-1) <= 0  # inputs that are always zero: weight irrelevant
    if bool(dead.any()):
        gi, ki = torch.nonzero(dead, as_tuple=True)
        h[gi, ki, ki] = 1.0
    order = torch.argsort(torch.diagonal(h, dim1=-2, dim2=-1), dim=-1, descending=True)  # act order
    wm = wm.gather(-1, order[:, None, :].expand_as(wm))
    h = h[torch.arange(g)[:, None, None], order[:, :, None], order[:, None, :]]
    hinv = _upper_inverse_cholesky(h)
    # each channel's largest weight keeps its round-to-nearest code (the end of the grid, +-qmax):
    # the channel then spans its grid, so a min-max quantizer (ai-edge-quantizer) finds the same scale
    pin_col = wm.abs().argmax(-1)  # (g, rows)
    pin_code = torch.clamp(torch.round(wm.gather(-1, pin_col[..., None])[..., 0] / s), -qmax, qmax)
    codes = torch.empty_like(wm)
    for i in range(k):
        col = wm[:, :, i]
        q = torch.where(pin_col == i, pin_code, torch.clamp(torch.round(col / s), -qmax, qmax))
        codes[:, :, i] = q
        err = (col - q * s) / hinv[:, i, i][:, None]
        wm[:, :, i + 1 :] -= err[:, :, None] * hinv[:, None, i, i + 1 :]
    inv = torch.argsort(order, dim=-1)
    return codes.gather(-1, inv[:, None, :].expand_as(codes)).reshape(w.shape)


def gptq_weight(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """The dequantized GPTQ weight, in float32 exactly as round-to-nearest's grid values are formed
    (``code * scale``): re-rounding it on the same grid gives it back unchanged."""
    codes = gptq_codes(w, h, scale, bits).float()
    return codes * scale.float().reshape([-1] + [1] * (w.dim() - 1))


class WeightQuantizer:
    """The quantized weights of a BN-folded model's layers, cached per (layer, bits, per-channel,
    clipping): the scales of :func:`~edge_compress.quant.fakequant.weight_scales`, then
    round-to-nearest or GPTQ. For GPTQ the input covariances of ``names`` are measured once, on
    construction, from ``calib_x`` (so later in-place weight changes of the model do not leak in)."""

    def __init__(
        self,
        model: nn.Module,
        rounding: str = "gptq",
        calib_x: np.ndarray | None = None,
        names: list[str] | None = None,
    ) -> None:
        self.rounding = check_rounding(rounding)
        self.mods = dict(model.named_modules())
        names = list(names or [])
        self.hessians: dict[str, torch.Tensor] = {}
        self._scales: dict[tuple[str, int, bool, str], np.ndarray] = {}
        self._weights: dict[tuple[str, int, bool, str], torch.Tensor] = {}
        self._w0 = {n: self.mods[n].weight.detach().clone() for n in names}
        if rounding == "gptq":
            if calib_x is None or len(calib_x) == 0:
                raise UserError("GPTQ rounding needs calibration data.")
            self.hessians = input_hessians(model, names, calib_x)

    def _float(self, name: str) -> torch.Tensor:
        if name not in self._w0:
            self._w0[name] = self.mods[name].weight.detach().clone()
        return self._w0[name]

    def scale(self, name: str, bits: int, per_channel: bool = True, clip: str = "mse") -> np.ndarray:
        from edge_compress.quant.fakequant import weight_scales

        key = (name, bits, per_channel, clip)
        if key not in self._scales:
            self._scales[key] = (
                weight_scales(self._float(name), bits, per_channel, clip).numpy().astype(np.float32)
            )
        return self._scales[key]

    def weight(self, name: str, bits: int, per_channel: bool = True, clip: str = "mse") -> torch.Tensor:
        """The layer's quantized (dequantized, on-grid) weight."""
        import torch

        from edge_compress.quant.fakequant import _fake_sym, qmax_weight

        key = (name, bits, per_channel, clip)
        if key not in self._weights:
            s = torch.from_numpy(self.scale(name, bits, per_channel, clip))
            w = self._float(name)
            if self.rounding == "gptq":
                if name not in self.hessians:
                    raise UserError(f"layer {name!r}: no input covariance was measured for GPTQ rounding.")
                self._weights[key] = gptq_weight(w, self.hessians[name], s, bits)
            else:
                self._weights[key] = _fake_sym(w, s, qmax_weight(bits))
        return self._weights[key]

    def values(self, name: str, bits: int, per_channel: bool = True, clip: str = "mse") -> np.ndarray | None:
        """What :class:`~edge_compress.quant.fakequant.LayerQuant` stores: the GPTQ weights, or None
        for round-to-nearest (the simulation rounds itself)."""
        if self.rounding == "nearest":
            return None
        return self.weight(name, bits, per_channel, clip).numpy()

    def error(
        self, name: str, bits: int, per_channel: bool = True, clip: str = "mse"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-output-channel ``(||Q(W_c) - W_c||^2, n_c step_c^2 / 12)`` of this quantizer."""
        from edge_compress.quant.fakequant import error_energies

        q = self.weight(name, bits, per_channel, clip)
        return error_energies(q, self._float(name), self.scale(name, bits, per_channel, clip))
