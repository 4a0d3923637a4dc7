from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def lenet():
    from edge_compress.zoo import load_zoo

    torch.set_num_threads(1)
    return load_zoo("lenet5")
