"""The compiler's factorization stage: low-rank factorization of the float model before quantization.

Chooses ranks (energy threshold, or a global params / FLOPs budget), replaces each chosen layer by
its two-layer factorization (``<layer>.down`` / ``.up`` for Linear, ``.vertical`` / ``.horizontal``
for spatial SVD, ``.basis`` / ``.combine`` for channel SVD), fine-tunes briefly on the training split,
and replaces the context's model and graph. Returns the manifest record: rank per layer (with its
full rank, the factorization and the two new layers), FLOPs and parameters before / after, test
accuracy before and after fine-tuning, and the layers left as they are with the reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge_compress.errors import UserError

if TYPE_CHECKING:
    from edge_compress.compiler import CompileContext
    from edge_compress.factorize.config import FactorizeConfig

FINETUNE_LR = 1e-3


def run_factorize(ctx: CompileContext, cfg: FactorizeConfig) -> dict[str, Any]:
    """Factorize ``ctx.model`` by ``cfg`` (see the module doc); returns the manifest record."""
    from edge_compress.factorize.rank import (
        breakeven_rank,
        eligible_how,
        layer_cost,
        ranks_by_budget,
        ranks_by_energy,
    )
    from edge_compress.factorize.svd import (
        CHILD_NAMES,
        check_factorizable,
        default_how,
        factorize_model,
        full_rank,
    )
    from edge_compress.graph import extract_graph
    from edge_compress.prune.apply import count_params
    from edge_compress.prune.group_lasso import finetune
    from edge_compress.prune.stage import eval_accuracy, recalibrate, require_data

    ds, model, graph = ctx.spec.dataset, ctx.model, ctx.graph
    data = None
    if cfg.needs_data:
        data = require_data(
            ds,
            ctx.spec.name,
            "fine-tuning the factorized",
            f"factorize without it by --factorize {cfg.mode}=...,finetune=0",
        )
    how = cfg.how
    if cfg.mode == "energy":
        ranks = ranks_by_energy(model, graph, cfg.value, how)
    elif cfg.mode == "params":
        ranks = ranks_by_budget(model, graph, params_ratio=cfg.value, how=how)
    else:
        ranks = ranks_by_budget(model, graph, flops_ratio=cfg.value, how=how)
    skipped: dict[str, str] = {}
    for li in graph.layers:
        if li.name in ranks:
            continue
        h = eligible_how(li, how)
        if h is None:
            try:
                check_factorizable(li, default_how(li) if how == "auto" else how)
                skipped[li.name] = f"{how} factorization does not apply to this layer"
            except UserError as e:
                skipped[li.name] = str(e).split(": ", 1)[-1].rstrip(".")
        elif breakeven_rank(li, h, "params") < 1:
            skipped[li.name] = "no rank saves parameters (the layer is too thin)"
        elif cfg.mode == "energy":
            skipped[li.name] = f"the rank keeping {cfg.value:g} of the energy saves no parameters or MACs"
        else:
            skipped[li.name] = "not needed to meet the budget"
    acc0 = eval_accuracy(model, ds)
    params0 = count_params(model)
    if not ranks:
        return {
            "mode": cfg.mode,
            "value": cfg.value,
            "how": how,
            "finetune_epochs": 0,
            "layers": {},
            "flops": {"before": graph.total_macs, "after": graph.total_macs, "ratio": 1.0},
            "params": {"before": params0, "after": params0, "ratio": 1.0},
            "accuracy": {"before_finetune": acc0, "after_finetune": acc0},
            "skipped": skipped,
            "notes": ["no layer was factorized: no rank choice saves parameters and MACs at these settings"],
        }
    new = factorize_model(model, graph, ranks).eval()
    recalibrate(new, ds)
    acc_fact = eval_accuracy(new, ds)
    if cfg.finetune_epochs > 0:
        assert data is not None
        finetune(new, data[0], data[1], cfg.finetune_epochs, FINETUNE_LR, cfg.seed)
    acc_ft = eval_accuracy(new, ds)
    new_graph = extract_graph(new, ctx.spec.example_input(2))
    info = {li.name: li for li in graph.layers}
    layers = {}
    for name, (rank, h) in ranks.items():
        li = info[name]
        a, b = CHILD_NAMES[h]
        layers[name] = {
            "rank": int(rank),
            "full_rank": full_rank(li, h),
            "how": h,
            "into": [f"{name}.{a}", f"{name}.{b}"],
            "weight_params": {"before": li.weight_params, "after": int(layer_cost(li, rank, h, "params"))},
            "macs": {"before": li.macs, "after": int(layer_cost(li, rank, h, "macs"))},
        }
    ctx.model, ctx.graph = new, new_graph
    params1 = count_params(new)
    return {
        "mode": cfg.mode,
        "value": cfg.value,
        "how": how,
        "finetune_epochs": cfg.finetune_epochs,
        "layers": layers,
        "flops": {
            "before": graph.total_macs,
            "after": new_graph.total_macs,
            "ratio": new_graph.total_macs / max(1, graph.total_macs),
        },
        "params": {"before": params0, "after": params1, "ratio": params1 / max(1, params0)},
        "accuracy": {"before_finetune": acc_fact, "after_finetune": acc_ft, "unfactorized": acc0},
        "skipped": skipped,
        "notes": [],
    }
