"""Artifact building is atomic; parity failures have their own exit code."""

from __future__ import annotations

import pytest

from edge_compress.artifact import ArtifactBuilder, load_artifact
from edge_compress.errors import UserError
from edge_compress.export.parity import ParityError, ParityReport, check


def test_failed_build_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), ArtifactBuilder(tmp_path, "abc123") as b:
        b.path("model.onnx").write_bytes(b"x" * 10)
        raise RuntimeError("export failed half-way")
    assert list(tmp_path.iterdir()) == []


def test_commit_writes_manifest_last_and_verifies(tmp_path):
    with ArtifactBuilder(tmp_path, "abc123") as b:
        b.path("m.onnx").write_bytes(b"1234")
        files = {"m.onnx": {"sha256": "", "bytes": 0, "format": "onnx", "variant": "qdq", "planned_bytes": 4}}
        final = b.commit("m-abc", {"id": "abc123", "files": files})
    art = load_artifact(final)
    assert art.manifest["files"]["m.onnx"]["bytes"] == 4
    (final / "m.onnx").write_bytes(b"4321")
    with pytest.raises(UserError, match="SHA-256 differs"):
        load_artifact(final)
    assert [p.name for p in tmp_path.iterdir()] == ["m-abc"]


def test_parity_error_exit_code():
    r = ParityReport("m.onnx", "onnx", "qdq", "onnxruntime", 10, 0.9, 20.0, 1.0, 0.9, 0.95, 0.99, False)
    with pytest.raises(ParityError) as e:
        check([r])
    assert e.value.exit_code == 1
    assert "0.9000" in str(e.value) and "--no-parity-gate" in str(e.value)
