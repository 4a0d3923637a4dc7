"""Real data sets that ship with packages or are generated offline (nothing is downloaded).

- ``digits``: scikit-learn's handwritten digits (1,797 real 8x8 scans), upsampled to 32x32 as in
  LeNet-5's input, scaled to [0, 1].
- ``mnist1d``: the MNIST-1D benchmark (Greydanus 2020), 40-sample 1-D signals, generated offline
  by the ``mnist1d`` package with its published default arguments; a sensor-style task.
- ``breast_cancer``: scikit-learn's 30 tabular features (standardized), for input-feature LASSO.

Every split is deterministic (fixed seed) and cached as .npz under the cache directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    """``$EDGE_COMPRESS_CACHE`` or ``~/.cache/edge-compress``."""
    root = os.environ.get("EDGE_COMPRESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edge-compress"
    )
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p


@dataclass(frozen=True)
class Dataset:
    """Train / validation / test splits. ``x_*`` float32 in model layout, ``y_*`` int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def calibration(self, n: int = 256) -> np.ndarray:
        """A calibration batch drawn from the training split (never from test)."""
        return self.x_train[:n]


def _split(x: np.ndarray, y: np.ndarray, seed: int, fractions=(0.7, 0.1)) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    n_tr = int(fractions[0] * len(x))
    n_va = int(fractions[1] * len(x))
    tr, va, te = idx[:n_tr], idx[n_tr : n_tr + n_va], idx[n_tr + n_va :]
    return x[tr], y[tr], x[va], y[va], x[te], y[te]


def _cached(name: str, build) -> dict[str, np.ndarray]:
    path = cache_dir() / "data" / f"{name}-v1.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return arrays


def _build_digits() -> dict[str, np.ndarray]:
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images / 16.0).astype(np.float32))[:, None]  # (N,1,8,8)
    x32 = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).numpy()
    y = d.target.astype(np.int64)
    xtr, ytr, xva, yva, xte, yte = _split(x32.astype(np.float32), y, seed=0)
    return dict(x_train=xtr, y_train=ytr, x_val=xva, y_val=yva, x_test=xte, y_test=yte)


def _build_mnist1d() -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    d = make_dataset(args)
    x = d["x"].astype(np.float32)[:, None, :]  # (N,1,40)
    y = d["y"].astype(np.int64)
    n_val = len(x) // 8
    return dict(
        x_train=x[n_val:],
        y_train=y[n_val:],
        x_val=x[:n_val],
        y_val=y[:n_val],
        x_test=d["x_test"].astype(np.float32)[:, None, :],
        y_test=d["y_test"].astype(np.int64),
    )


def _build_breast_cancer() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = d.data.astype(np.float64)
    y = d.target.astype(np.int64)
    xtr, ytr, xva, yva, xte, yte = _split(x, y, seed=0)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-12  # standardize with training statistics only
    f = lambda a: ((a - mu) / sd).astype(np.float32)  # noqa: E731
    return dict(x_train=f(xtr), y_train=ytr, x_val=f(xva), y_val=yva, x_test=f(xte), y_test=yte)


_BUILDERS = {
    "digits": (_build_digits, 10),
    "mnist1d": (_build_mnist1d, 10),
    "breast_cancer": (_build_breast_cancer, 2),
}


def load_dataset(name: str) -> Dataset:
    if name not in _BUILDERS:
        from edge_compress.errors import UserError

        raise UserError(f"unknown data set {name!r}; known: {', '.join(sorted(_BUILDERS))}.")
    build, k = _BUILDERS[name]
    a = _cached(name, build)
    return Dataset(name=name, num_classes=k, **a)


def breast_cancer_feature_names() -> list[str]:
    from sklearn.datasets import load_breast_cancer

    return list(load_breast_cancer().feature_names)
