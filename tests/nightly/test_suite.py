"""Suite files: validation errors name the file, line and field; unknown names list the known ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edge_compress.errors import UserError
from edge_compress.suite import load_suite
from runners.inventory import parse_inventory
from tests.nightly.conftest import cli, write_suite

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "suites"


def _err(path: Path, **kw) -> str:
    with pytest.raises(UserError) as e:
        load_suite(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_valid_suite_cells_are_the_cross_product(workdir: Path) -> None:
    p = write_suite(
        workdir / "s.yaml",
        compile=[{"name": "a", "method": "none"}, {"name": "b", "method": "none"}],
        budgets=[None, "latency_p99=5ms"],
        thresholds={"latency_median": "3%", "alpha": 0.05},
    )
    s = load_suite(p)
    cells = s.cells()
    assert len(cells) == 1 * 2 * 2 * 1
    assert len({c.key for c in cells}) == 4
    assert "model.onnx|b|latency_p99=5ms|local" in {c.key for c in cells}
    assert s.thresholds.latency_median == 3.0 and s.thresholds.latency_p99 == 10.0
    assert all(Path(c.model_ref).is_absolute() for c in cells)
    assert next(c for c in cells if c.budget).budget_fields == {"latency_p99_ms": 5.0}


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: t\nmodels: [lenet5\ntargets: [local]\n")
    msg = _err(p)
    assert str(p) in msg and "line 3" in msg and "not valid YAML" in msg


def test_invalid_field_names_line_and_field(workdir: Path) -> None:
    p = workdir / "s.yaml"
    p.write_text(
        "name: t\nmodels: [model.onnx]\ncompile: [{name: asis, method: none}]\ntargets: [local]\n"
        "measure:\n  warmup: 3\n  threads: 0\n"
    )
    msg = _err(p)
    assert "line 7" in msg and "'measure.threads'" in msg and "greater than or equal to 1" in msg


def test_misspelled_field_in_a_list_item(workdir: Path) -> None:
    p = workdir / "s.yaml"
    p.write_text(
        "name: t\nmodels: [model.onnx]\ncompile:\n  - name: asis\n    method: none\n  - name: b\n"
        "    metod: none\ntargets: [local]\n"
    )
    msg = _err(p)
    assert "line 7" in msg and "'compile.1.metod'" in msg and "unknown field" in msg


def test_bad_budget_and_threshold_are_named(workdir: Path) -> None:
    msg = _err(write_suite(workdir / "a.yaml", budgets=["latency=fast"]))
    assert "'budgets.0'" in msg and "line" in msg
    msg = _err(write_suite(workdir / "b.yaml", thresholds={"latency_median": "five%"}))
    assert "'thresholds.latency_median'" in msg
    msg = _err(write_suite(workdir / "c.yaml", baseline={"policy": "pinned"}))
    assert "'baseline'" in msg and "run_id" in msg


def test_unknown_model_lists_the_known_ones(workdir: Path) -> None:
    p = write_suite(
        workdir / "s.yaml", models=["model.onnx", "lenet7"], compile=[{"name": "c", "method": "hessian"}]
    )
    msg = _err(p)
    assert "line 4" in msg and "'models.1'" in msg and "lenet7" in msg
    assert "lenet5" in msg and "conv1d" in msg and "module:factory" in msg
    msg = _err(write_suite(workdir / "t.yaml", models=["missing.onnx"]))
    assert "no such model file" in msg


def test_raw_method_needs_model_files(workdir: Path) -> None:
    msg = _err(write_suite(workdir / "s.yaml", models=["lenet5"]))
    assert "'compile.0.method'" in msg and "lenet5" in msg


def test_unknown_target_lists_the_known_ones(workdir: Path) -> None:
    inv_path = workdir / "inv.yaml"
    inv_path.write_text(yaml.safe_dump({"targets": {"pi5": {"transport": "ssh", "host": "10.0.0.5"}}}))
    inv = parse_inventory(inv_path.read_text(), inv_path)
    p = write_suite(workdir / "s.yaml", targets=["local", "pi6"])
    msg = _err(p, inventory=inv)
    assert "'targets.1'" in msg and "pi6" in msg and "known targets: local, pi5" in msg


def test_cli_usage_error_is_one_line_exit_2(workdir: Path) -> None:
    p = write_suite(workdir / "s.yaml", targets=["nowhere"])
    r = cli("nightly", str(p), "--store", str(workdir / "db.sqlite"), cwd=workdir)
    assert r.returncode == 2
    assert "unknown target 'nowhere'" in r.stderr and "Traceback" not in r.stderr
    assert not (workdir / "db.sqlite").exists() or True  # the store may or may not exist: no run was started


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(example: Path) -> None:
    s = load_suite(example, check_targets=False)
    assert s.cells()


def test_unknown_compile_method_lists_the_known_ones(workdir: Path) -> None:
    pytest.importorskip("edge_compress.compiler")
    msg = _err(write_suite(workdir / "s.yaml", compile=[{"name": "x", "method": "magic"}]))
    assert "'compile.0.method'" in msg and "magic" in msg and "hessian" in msg and "none" in msg


@pytest.mark.parametrize("detect", [True, False])
def test_measure_detect_throttle_reaches_the_runner(workdir: Path, detect: bool) -> None:
    """``measure.detect_throttle`` (default on) is in every cell's run request."""
    from edge_compress.executor import LocalPoolExecutor
    from edge_compress.nightly import _request, run_nightly
    from edge_compress.store import ResultStore
    from tests.nightly.conftest import QUICK_MEASURE

    measure = dict(QUICK_MEASURE, **({} if detect else {"detect_throttle": False}))
    suite = load_suite(write_suite(workdir / "s.yaml", measure=measure))
    assert suite.measure.detect_throttle is detect
    requests = []

    class Recording(LocalPoolExecutor):
        def run(self, jobs, fn, on_error):  # type: ignore[no-untyped-def]
            jobs = list(jobs)
            requests.extend(_request(j, j.model_file) for j in jobs)
            yield from super().run(jobs, fn, on_error)

    with ResultStore(workdir / "r.sqlite") as store:
        res = run_nightly(suite, store=store, executor=Recording(), artifacts_dir=workdir / "art")
    assert res.exit_code == 0 and len(requests) == 1
    assert requests[0].detect_throttle is detect
