"""Resolve the MODEL argument of ``edge-compress compile`` into a model with its data.

MODEL is one of:

- a zoo name (``lenet5``, ``conv1d``, ``resnet``, ``mobilenetv2``, ``inception``): trained model and its data;
- ``module:factory``: ``factory()`` returns an ``nn.Module`` (``--weights PATH`` loads a state_dict;
  ``--data`` is required: ``digits``, ``mnist1d`` or an ``.npz`` with x_train / y_train / x_val /
  y_val / x_test / y_test);
- an existing ``.onnx`` or ``.tflite`` file (``--data`` required, for calibration and parity).

Every mistake is a :class:`UserError` naming the argument and what to do.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_compress.errors import UserError

if TYPE_CHECKING:
    from torch import nn

    from edge_compress.zoo.data import Dataset

NPZ_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
BUILTIN_DATA = ("digits", "mnist1d", "breast_cancer")


@dataclass
class ModelSpec:
    """A model to compile: a torch module, or an existing model file, with its data splits."""

    name: str
    kind: str  # torch | onnx | tflite
    source: str
    dataset: Dataset
    model: nn.Module | None = None
    path: Path | None = None
    weights_sha256: str = ""
    arch_sha256: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def example_input(self, batch: int = 1) -> Any:
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.dataset.x_test[:batch]))

    def calibration(self, n: int = 256) -> np.ndarray:
        return self.dataset.calibration(n)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "dataset": self.dataset.name,
            "input_shape": list(self.dataset.input_shape),
            "weights_sha256": self.weights_sha256,
            "arch_sha256": self.arch_sha256,
        }


def state_dict_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def arch_sha256(model: nn.Module) -> str:
    cls = type(model)
    return hashlib.sha256(f"{cls.__module__}.{cls.__qualname__}\n{model!r}".encode()).hexdigest()


def file_sha256(path: Path) -> str:
    from edge_compress.export.base import sha256_file

    return sha256_file(path)


# --------------------------------------------------------------------------------------------
# data


def load_data(data: str, *, what: str = "--data") -> Dataset:
    """A built-in data set name or an .npz with the six split arrays."""
    from edge_compress.zoo.data import Dataset, load_dataset

    if data in BUILTIN_DATA:
        return load_dataset(data)
    p = Path(data)
    if p.suffix != ".npz":
        raise UserError(
            f"{what} {data!r}: expected {', '.join(BUILTIN_DATA)} or a .npz file with {', '.join(NPZ_KEYS)}."
        )
    if not p.is_file():
        raise UserError(f"{what} {p}: no such file.")
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise UserError(
                    f"{what} {p}: missing array(s) {', '.join(missing)} (needs {', '.join(NPZ_KEYS)})."
                )
            arrays = {k: z[k] for k in NPZ_KEYS}
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - zip / pickle / format errors
        raise UserError(f"{what} {p}: not a readable .npz file ({type(e).__name__}).") from None
    for split in ("train", "val", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y) or len(x) == 0:
            raise UserError(
                f"{what} {p}: x_{split} and y_{split} must be non-empty with the same length ({len(x)} vs {len(y)})."
            )
        if x.shape[1:] != arrays["x_train"].shape[1:]:
            raise UserError(
                f"{what} {p}: x_{split} has sample shape {x.shape[1:]}, x_train has {arrays['x_train'].shape[1:]}."
            )
    xs = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items() if k.startswith("x_")}
    ys = {k: np.asarray(v).astype(np.int64) for k, v in arrays.items() if k.startswith("y_")}
    k = int(max(ys["y_train"].max(), ys["y_val"].max(), ys["y_test"].max())) + 1
    return Dataset(name=p.stem, num_classes=k, **xs, **ys)


# --------------------------------------------------------------------------------------------
# models


def resolve_model(arg: str, *, weights: str | None = None, data: str | None = None) -> ModelSpec:
    """Turn the MODEL argument (+ ``--weights`` / ``--data``) into a :class:`ModelSpec`."""
    from edge_compress.zoo import ZOO

    if arg in ZOO:
        if weights is not None:
            raise UserError(f"--weights applies to module:factory models, not to the zoo model {arg!r}.")
        return _zoo(arg, data)
    low = arg.lower()
    if low.endswith((".onnx", ".tflite")):
        if weights is not None:
            raise UserError(f"--weights applies to module:factory models, not to the model file {arg}.")
        return _model_file(Path(arg), data)
    if ":" in arg and not Path(arg).exists():
        return _factory(arg, weights, data)
    known = ", ".join(sorted(ZOO))
    raise UserError(
        f"MODEL {arg!r} is not a zoo model ({known}), a module:factory reference, or a .onnx / .tflite file."
    )


def _zoo(name: str, data: str | None) -> ModelSpec:
    from edge_compress.zoo import load_zoo

    z = load_zoo(name)
    ds = z.dataset
    if data is not None and data != ds.name:
        ds = load_data(data)
        _check_input(z.model, ds, name)
    return ModelSpec(
        name=name,
        kind="torch",
        source=f"zoo:{name}",
        dataset=ds,
        model=z.model.eval(),
        weights_sha256=state_dict_sha256(z.model),
        arch_sha256=arch_sha256(z.model),
        meta={"weights_path": z.weights_path, **z.meta},
    )


def _factory(ref: str, weights: str | None, data: str | None) -> ModelSpec:
    import torch
    from torch import nn

    mod_name, _, attr = ref.partition(":")
    if not mod_name or not attr:
        raise UserError(f"MODEL {ref!r}: expected module:factory (e.g. mypkg.models:make_net).")
    if data is None:
        raise UserError(f"MODEL {ref!r} needs --data (digits, mnist1d or a .npz with {', '.join(NPZ_KEYS)}).")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise UserError(f"MODEL {ref!r}: cannot import module {mod_name!r} ({e}).") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed at import
        raise UserError(f"MODEL {ref!r}: importing {mod_name!r} failed ({type(e).__name__}: {e}).") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise UserError(f"MODEL {ref!r}: module {mod_name!r} has no callable {attr!r}.")
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001
        raise UserError(f"MODEL {ref!r}: {attr}() failed ({type(e).__name__}: {e}).") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"MODEL {ref!r}: {attr}() returned {type(model).__name__}, not a torch nn.Module.")
    if weights is not None:
        wp = Path(weights)
        if not wp.is_file():
            raise UserError(f"--weights {wp}: no such file.")
        try:
            state = torch.load(wp, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise UserError(
                f"--weights {wp}: not a readable torch state_dict ({type(e).__name__})."
            ) from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise UserError(
                f"--weights {wp}: expected a state_dict (a dict of tensors), got {type(state).__name__}."
            )
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
            raise UserError(f"--weights {wp} does not match {ref} ({first[:200]}).") from None
    ds = load_data(data)
    model.eval()
    _check_input(model, ds, ref)
    name = attr if attr != "model" else mod_name.rsplit(".", 1)[-1]
    return ModelSpec(
        name=name,
        kind="torch",
        source=ref,
        dataset=ds,
        model=model,
        weights_sha256=state_dict_sha256(model),
        arch_sha256=arch_sha256(model),
        meta={"weights_path": weights},
    )


def _check_input(model: nn.Module, ds: Dataset, ref: str) -> None:
    import torch

    try:
        with torch.no_grad():
            out = model(torch.from_numpy(ds.x_val[:2]))
    except Exception as e:  # noqa: BLE001
        raise UserError(
            f"MODEL {ref!r} fails on data {ds.name!r} with sample shape {ds.input_shape} ({type(e).__name__}: {str(e)[:160]})."
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise UserError(
            f"MODEL {ref!r} must return one (batch, classes) tensor; got {getattr(out, 'shape', type(out).__name__)}."
        )


def _model_file(p: Path, data: str | None) -> ModelSpec:
    kind = "onnx" if p.suffix.lower() == ".onnx" else "tflite"
    if not p.is_file():
        raise UserError(f"{p}: no such model file.")
    if data is None:
        raise UserError(
            f"{p}: an existing .{kind} model needs --data (digits, mnist1d or a .npz) for calibration and parity."
        )
    ds = load_data(data)
    digest = file_sha256(p)
    return ModelSpec(
        name=p.stem,
        kind=kind,
        source=str(p),
        dataset=ds,
        path=p,
        weights_sha256=digest,
        arch_sha256=digest,
    )
