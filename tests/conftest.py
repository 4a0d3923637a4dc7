"""Shared pytest configuration. Fixture modules register themselves here as plugins."""

from __future__ import annotations

import os

# Keep BLAS / torch thread pools small: the suite runs on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

pytest_plugins: list[str] = ["tests.sshd"]
