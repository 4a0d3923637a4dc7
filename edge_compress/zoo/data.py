"""Real data sets that ship with packages or are generated offline (nothing is downloaded).

- ``digits``: scikit-learn's handwritten digits (1,797 real 8x8 scans), upsampled to 32x32 as in
  LeNet-5's input, scaled to [0, 1].
- ``mnist1d``: the MNIST-1D benchmark (Greydanus 2020), 40-sample 1-D signals, generated offline
  by the ``mnist1d`` package with its published default arguments (its 4,000 training samples;
  its 1,000 test samples plus 9,000 more from the same generator); a sensor-style task.
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
    path = cache_dir() / "data" / f"{name}-{_VERSIONS.get(name, 'v1')}.npz"
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


def _mnist1d_raw(args) -> tuple[np.ndarray, np.ndarray]:
    """``mnist1d.data.make_dataset``'s samples before its normalization (same seeding and order)."""
    from mnist1d.data import get_templates, set_seed, transform

    templates = get_templates()
    set_seed(args.seed)
    xs, ys = [], []
    for label in range(len(templates["y"])):
        for _ in range(args.num_samples // len(templates["y"])):
            x, _t = transform(templates["x"][label], templates["t"], args)
            xs.append(x)
            ys.append(templates["y"][label])
    order = np.random.permutation(len(ys))
    return np.stack(xs)[order], np.stack(ys)[order]


MNIST1D_EXTRA_TEST = 9000  # more held-out samples from the same generator (seed 43)


def _build_mnist1d() -> dict[str, np.ndarray]:
    """The published default set (4,000 train / 1,000 test, seed 42), bit-identical to
    ``make_dataset``; the test split is extended by 9,000 further samples of the same generator
    (seed 43), normalized with the default set's statistics, so that accuracy differences of a
    few tenths of a percent are resolvable (1,000 samples cannot tell 0.3 pp apart)."""
    from mnist1d.data import get_dataset_args

    args = get_dataset_args()
    x, y = _mnist1d_raw(args)
    mu, sd = x.mean(), x.std()
    n_train = int(len(y) * args.train_split)
    extra = get_dataset_args()
    extra.seed, extra.num_samples = 43, MNIST1D_EXTRA_TEST
    x2, y2 = _mnist1d_raw(extra)
    norm = lambda a: ((a - mu) / sd).astype(np.float32)[:, None, :]  # noqa: E731  (N,1,40)
    x_tr, y_tr = norm(x[:n_train]), y[:n_train].astype(np.int64)
    n_val = len(x_tr) // 8
    return dict(
        x_train=x_tr[n_val:],
        y_train=y_tr[n_val:],
        x_val=x_tr[:n_val],
        y_val=y_tr[:n_val],
        x_test=np.concatenate([norm(x[n_train:]), norm(x2)]),
        y_test=np.concatenate([y[n_train:], y2]).astype(np.int64),
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


_VERSIONS = {"mnist1d": "v2"}  # bumped when a build changes its arrays

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
