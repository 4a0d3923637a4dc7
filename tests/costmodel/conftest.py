"""Shared fixtures: the host profile, an isolated cache directory, tiny real models."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_compress.profiles import DeviceProfile, load_profile


@pytest.fixture(scope="session")
def host() -> DeviceProfile:
    return load_profile("host")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache directory (cost models are stored under it), trained zoo weights reused."""
    import os

    from edge_compress.zoo.data import cache_dir

    real = cache_dir()
    d = tmp_path / "cache"
    d.mkdir()
    for sub in ("zoo", "data"):
        if (real / sub).exists():
            os.symlink(real / sub, d / sub)
    monkeypatch.setenv("EDGE_COMPRESS_CACHE", str(d))
    return d
