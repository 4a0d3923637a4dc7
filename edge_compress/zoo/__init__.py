"""Example models with their real data, training and evaluation; trained weights cached on disk.

``load_zoo("lenet5")`` returns a trained model (training it on first use, in seconds to a minute,
then loading from ``<cache>/zoo``). Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_compress.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from edge_compress.zoo.data import Dataset


@dataclass(frozen=True)
class ZooSpec:
    name: str
    cls_name: str
    dataset: str
    epochs: int
    description: str
    lr: float = 2e-3


ZOO: dict[str, ZooSpec] = {
    s.name: s
    for s in [
        ZooSpec("lenet5", "LeNet5", "digits", 30, "LeNet-5 (LeCun 1998) on scikit-learn digits at 32x32"),
        ZooSpec("conv1d", "Conv1DNet", "mnist1d", 80, "1-D CNN on MNIST-1D signals (sensor-style task)"),
        ZooSpec(
            "resnet", "ResNetSmall", "digits", 20, "small residual CNN (basic blocks, 16-32-64) on digits"
        ),
        ZooSpec("mobilenetv2", "MobileNetV2Small", "digits", 30, "MobileNetV2-style depthwise CNN on digits"),
        ZooSpec(
            "inception", "InceptionSmall", "digits", 30, "GoogLeNet-style Inception blocks on digits", lr=3e-3
        ),
    ]
}

DEFAULT_ZOO = ("lenet5", "conv1d", "resnet", "mobilenetv2")


@dataclass
class ZooModel:
    """A trained example model with its data and evaluation."""

    name: str
    model: nn.Module
    dataset: Dataset
    width: float = 1.0
    weights_path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def example_input(self, batch: int = 1):
        import torch

        return torch.from_numpy(self.dataset.x_test[:batch].copy())

    def evaluate(self, model: nn.Module | None = None, split: str = "test") -> float:
        from edge_compress.zoo.train import accuracy

        x, y = getattr(self.dataset, f"x_{split}"), getattr(self.dataset, f"y_{split}")
        return accuracy(model if model is not None else self.model, x, y)

    def calibration(self, n: int = 256) -> np.ndarray:
        return self.dataset.calibration(n)


def zoo_names() -> list[str]:
    return sorted(ZOO)


def build_model(name: str, width: float = 1.0) -> nn.Module:
    from edge_compress.zoo import models

    spec = _spec(name)
    num_classes = 10
    return getattr(models, spec.cls_name)(num_classes=num_classes, width=width)


def _spec(name: str) -> ZooSpec:
    if name not in ZOO:
        raise UserError(f"unknown zoo model {name!r}; known: {', '.join(zoo_names())}.")
    return ZOO[name]


def _weights_key(spec: ZooSpec, width: float, seed: int) -> str:
    from edge_compress.zoo import models, train

    h = hashlib.sha256()
    h.update(inspect.getsource(getattr(models, spec.cls_name)).encode())
    h.update(inspect.getsource(train.train).encode())
    h.update(repr((spec, width, seed)).encode())
    return h.hexdigest()[:16]


def load_zoo(
    name: str, *, width: float = 1.0, trained: bool = True, seed: int = 0, epochs: int | None = None
) -> ZooModel:
    """A zoo model, trained (cached) unless ``trained=False``."""
    import torch

    from edge_compress.zoo.data import cache_dir, load_dataset
    from edge_compress.zoo.train import TrainConfig, train

    spec = _spec(name)
    ds = load_dataset(spec.dataset)
    torch.manual_seed(seed)
    model = build_model(name, width)
    if not trained:
        return ZooModel(name, model.eval(), ds, width)
    ep = epochs if epochs is not None else spec.epochs
    key = _weights_key(spec, width, seed) + (f"-e{ep}" if epochs is not None else "")
    path = cache_dir() / "zoo" / f"{name}-w{width:g}-{key}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        try:
            train(model, ds.x_train, ds.y_train, TrainConfig(epochs=ep, lr=spec.lr, seed=seed))
        finally:
            torch.set_num_threads(threads)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    model.eval()
    return ZooModel(name, model, ds, width, str(path), {"epochs": ep, "description": spec.description})
