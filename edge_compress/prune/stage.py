"""The compiler's pruning stage: prune the float model to a FLOPs budget before quantization.

Runs group lasso (or one-shot L1) on the compile context's model, removes the channels
physically, re-estimates batch-norm statistics, fine-tunes on the model's own training split (the
zoo model's data, or ``--data``), and replaces the context's model and graph with the smaller
ones. Returns the manifest record:
channels per layer before / after, FLOPs (and the budget) and parameters before / after, test
accuracy of the original, the pruned (before fine-tuning) and the fine-tuned model, the groups left
unpruned and why, the groups whose kept count was rounded to the channel multiple, and the kept
channel indices per layer (which the compiler also writes into plan.json).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from edge_compress.errors import UserError

if TYPE_CHECKING:
    from edge_compress.compiler import CompileContext
    from edge_compress.prune.config import PruneConfig
    from edge_compress.zoo.data import Dataset

FINETUNE_LR = 1e-3


def training_data(ds: Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """The labelled training split, or None when the data set has none."""
    x, y = getattr(ds, "x_train", None), getattr(ds, "y_train", None)
    if x is None or y is None or len(x) == 0 or len(x) != len(y):
        return None
    return np.asarray(x), np.asarray(y)


def require_data(ds: Dataset, model: str, what: str, instead: str) -> tuple[np.ndarray, np.ndarray] | None:
    data = training_data(ds)
    if data is None:
        raise UserError(
            f"{what} {model} needs labelled training data (x_train / y_train, e.g. --data PATH.npz) "
            f"and data set {ds.name!r} has none; {instead}."
        )
    return data


def recalibrate(model: Any, ds: Dataset) -> None:
    """Re-estimate batch-norm statistics of a changed network on training inputs (no labels needed):
    the layers behind removed channels see new input statistics, and a short fine-tune moves the
    running averages only a little way."""
    from edge_compress.prune.group_lasso import recalibrate_bn

    x = getattr(ds, "x_train", None)
    if x is not None and len(x):
        recalibrate_bn(model, np.asarray(x))


def eval_accuracy(model: Any, ds: Dataset) -> float:
    from edge_compress.zoo.train import accuracy

    return accuracy(model, ds.x_test, ds.y_test)


def run_prune(ctx: CompileContext, cfg: PruneConfig) -> dict[str, Any]:
    """Prune ``ctx.model`` to ``cfg.flops`` x its MACs (see the module doc); returns the manifest record."""
    from edge_compress.graph import extract_graph
    from edge_compress.prune.apply import count_params, kept_by_layer
    from edge_compress.prune.group_lasso import GroupLassoConfig, finetune, group_lasso_prune
    from edge_compress.prune.l1 import l1_prune

    assert cfg.flops is not None, "resolve_prune fills in the budget"
    ds, model, graph = ctx.spec.dataset, ctx.model, ctx.graph
    data = None
    if cfg.needs_data:
        what = "group-lasso pruning of" if cfg.method == "group_lasso" else "fine-tuning the pruned"
        data = require_data(ds, ctx.spec.name, what, "prune without data by --prune method=l1,finetune=0")
    if not graph.traced:
        raise UserError(
            f"cannot prune {ctx.spec.name}: {graph.trace_error}; no channel dependencies are known."
        )
    acc0 = eval_accuracy(model, ds)
    trajectory: list[dict[str, Any]] = []
    if cfg.method == "group_lasso":
        assert data is not None
        gl = GroupLassoConfig(
            epochs=cfg.epochs,
            finetune_epochs=0,
            select_finetune_epochs=cfg.finetune_epochs or GroupLassoConfig.select_finetune_epochs,
            channel_multiple=cfg.channel_multiple or 1,
            min_keep_frac=cfg.min_keep_frac,
            seed=cfg.seed,
        )
        res = group_lasso_prune(model, graph, cfg.flops, data[0], data[1], gl, x_val=ds.x_val, y_val=ds.y_val)
        trajectory = [
            {
                k: r[k]
                for k in ("epoch", "loss", "flops_ratio", "multiplier", "live_channels", "val_acc")
                if k in r
            }
            for r in res.trajectory
        ]
    else:
        res = l1_prune(
            model,
            graph,
            cfg.flops,
            finetune_epochs=0,
            seed=cfg.seed,
            min_keep_frac=cfg.min_keep_frac,
            channel_multiple=cfg.channel_multiple or 1,
        )
        res.notes = [n for n in res.notes if not n.startswith("not fine-tuned")]
    pruned = res.model.eval()
    recalibrate(pruned, ds)
    acc_pruned = eval_accuracy(pruned, ds)
    if cfg.finetune_epochs > 0:
        assert data is not None
        finetune(pruned, data[0], data[1], cfg.finetune_epochs, FINETUNE_LR, cfg.seed)
    acc_ft = eval_accuracy(pruned, ds)
    new_graph = extract_graph(pruned, ctx.spec.example_input(2))
    kept = kept_by_layer(graph, res.keep)
    after = {li.name: li.out_channels for li in new_graph.layers}
    channels = {
        li.name: {"before": li.out_channels, "after": after.get(li.name, li.out_channels)}
        for li in graph.layers
    }
    params_before = count_params(model)
    notes = list(res.notes)
    if not res.keep:
        notes.append("no channel was removed: the budget is met without pruning")
    ctx.model, ctx.graph = pruned, new_graph
    return {
        "method": cfg.method,
        "flops_budget": cfg.flops,
        "budget_source": cfg.source,
        "channel_multiple": cfg.channel_multiple,
        "finetune_epochs": cfg.finetune_epochs,
        "epochs": cfg.epochs if cfg.method == "group_lasso" else None,
        "min_keep_frac": cfg.min_keep_frac,
        "flops": {
            "before": graph.total_macs,
            "after": new_graph.total_macs,
            "ratio": res.flops_ratio,
            "budget": cfg.flops,
        },
        "params": {
            "before": params_before,
            "after": count_params(pruned),
            "ratio": count_params(pruned) / max(1, params_before),
        },
        "accuracy": {"original": acc0, "before_finetune": acc_pruned, "after_finetune": acc_ft},
        "channels": channels,
        "kept": kept,
        "skipped": dict(res.skipped),
        "rounded": dict(res.rounded),  # group -> [kept count before, after rounding to channel_multiple]
        "trajectory": trajectory,
        "notes": [n for n in notes if not n.startswith("skipped ")],
    }
