"""Evaluation: the config's `evals` entries resolved (and checked) before training, top-1/top-5 on each.

`config.evals` maps a name to {dataset, data_dir, split, optional, label_subset, multi_label, mcc}
(`recipes.eval_set`); results are logged as `<name>_top1`, `<name>_top5` and, with `mcc`, `<name>_mcc`
(`config.best_metric` names the one that ranks the best checkpoint). Image and text models alike: `model_inputs`
turns either kind of batch into the model's keyword inputs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sot_jax import augment, checkpoints, models, recipes, sharding
from sot_jax.errors import UserError

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """A batch's model inputs: ImageNet-normalized `images`, or a text batch's token ids and masks."""
    if "image" in batch:
        return {"images": augment.normalize(batch["image"])}
    return {k: batch[k] for k in TEXT_INPUTS if k in batch}


def eval_step(
    params: Any, batch_stats: Any, batch: dict[str, jax.Array], *, model: Any, class_mask: Any, confusion: bool = False
) -> dict:
    """Counts of top-1/top-5 hits over the unpadded examples (with `real` labels: a hit is any of them), and with
    `confusion` the confusion matrix (true × predicted classes)."""
    logits = model.apply({"params": params, "batch_stats": batch_stats}, **model_inputs(batch))
    if class_mask is not None:  # e.g. ImageNet-A: predict among its 200 classes only
        logits = jnp.where(class_mask, logits, -jnp.inf)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]  # top-5 is top-all below 5 classes
    mask = batch["mask"].astype(jnp.float32)
    if "real" in batch:
        hits = jnp.take_along_axis(batch["real"], top5, axis=1).astype(jnp.float32)
        mask = mask * (jnp.sum(batch["real"], axis=1) > 0)  # ReaL leaves out images without any real label
    else:
        hits = (top5 == batch["label"][:, None]).astype(jnp.float32)
    counts = {"top1": jnp.sum(hits[:, 0] * mask), "top5": jnp.sum(jnp.max(hits, axis=1) * mask), "count": jnp.sum(mask)}
    if confusion:
        classes = logits.shape[-1]
        counts["confusion"] = jnp.zeros((classes, classes)).at[batch["label"], top5[:, 0]].add(mask)
    return counts


@dataclasses.dataclass
class EvalSet:
    name: str
    source: Any  # data.sources.Source
    split: str
    multi_label: bool
    class_mask: np.ndarray | None
    mcc: bool  # also report Matthews' correlation (CoLA's metric)


def resolve_evals(config: Any, train_source: Any, num_classes: int) -> list[EvalSet]:
    """Every `config.evals` entry with its data source, checked now rather than at the first evaluation: an unknown
    key, dataset or split, or another number of classes, is an error; an unprepared dataset too, unless the entry
    is `optional` (then one warning line, and the set is left out)."""
    from sot_jax.data import pipeline, sources

    if "val" not in config.evals:
        raise UserError("config.evals needs a 'val' entry (it ranks the best checkpoint)")
    sets = []
    for name, entry in config.evals.items():
        unknown = set(entry) - set(recipes.EVAL_KEYS)
        if unknown:
            valid = ", ".join(recipes.EVAL_KEYS)
            raise UserError(f"evals.{name}: unknown key(s) {', '.join(sorted(unknown))}; valid: {valid}")
        dataset, data_dir = entry.dataset or config.dataset, entry.data_dir or config.data_dir
        try:
            if (dataset, data_dir) == (config.dataset, config.data_dir):
                source = train_source
            else:
                source = sources.get_source(dataset, data_dir, prepare_embedded=jax.process_index() == 0)
            split = entry.split or source.eval_split
            source.num_examples(split)  # an unknown split or an unreadable folder stops here
        except sources.DatasetNotReadyError as e:
            if not entry.optional:
                raise UserError(f"evals.{name}: {e}") from None
            if jax.process_index() == 0:
                print(f"warning: evals.{name} skipped: {e}", flush=True)
            continue
        except UserError as e:
            raise UserError(f"evals.{name}: {e}") from None
        if source.num_classes != num_classes:
            raise UserError(f"evals.{name}: {dataset} has {source.num_classes} classes, the model {num_classes}")
        class_mask = pipeline.label_subset(source, split) if entry.label_subset else None
        sets.append(EvalSet(name, source, split, entry.multi_label, class_mask, entry.mcc))
    return sets


class Evaluator:
    """Top-1/top-5 (percent) of given weights on each eval set; the jitted steps are built once."""

    def __init__(self, config: Any, model: Any, eval_sets: list[EvalSet], mesh: Any):
        self.config, self.model, self.eval_sets, self.mesh = config, model, eval_sets, mesh
        replicated = sharding.replicated(mesh)
        step = functools.partial(eval_step, model=model)
        self.steps = {
            s.name: jax.jit(functools.partial(step, class_mask=s.class_mask, confusion=s.mcc), out_shardings=replicated)
            for s in eval_sets
        }
        self.batch_sharding = sharding.batch_sharding(mesh)

    def __call__(self, params: Any, batch_stats: Any) -> dict[str, float]:
        from sot_jax import data

        results = {}
        for eval_set in self.eval_sets:
            totals: dict[str, Any] = {}
            batches = data.eval_batches(eval_set.source, eval_set.split, self.config, self.model, eval_set.multi_label)
            for local in batches:
                batch = sharding.global_batch(local, self.batch_sharding)
                counts = self.steps[eval_set.name](params, batch_stats, batch)
                totals = {k: totals.get(k, 0.0) + np.asarray(v, np.float64) for k, v in counts.items()}
            count = max(float(totals["count"]), 1.0)
            results[f"{eval_set.name}_top1"] = 100 * float(totals["top1"]) / count
            results[f"{eval_set.name}_top5"] = 100 * float(totals["top5"]) / count
            if eval_set.mcc:
                results[f"{eval_set.name}_mcc"] = 100 * data.text.matthews_corrcoef(totals["confusion"])
        return results


def evaluate_checkpoint(config: Any) -> dict[str, float]:
    """eval_only: top-1/top-5 of `config.init_from` on every eval set (and of its EMA weights when it has them)."""
    from sot_jax.data import sources

    source = sources.get_source(config.dataset, config.data_dir, prepare_embedded=jax.process_index() == 0)
    model = recipes.build_model(config.model, source.num_classes)
    mesh = sharding.make_mesh()
    evaluator = Evaluator(config, model, resolve_evals(config, source, source.num_classes), mesh)
    loaded = checkpoints.read_init_variables(config.init_from)
    fresh = models.abstract_variables(model)
    results = {}
    for prefix in ("", "ema_"):
        if f"{prefix}params" not in loaded:
            continue
        params = checkpoints.merge_exact(fresh["params"], loaded[f"{prefix}params"], config.init_from)
        batch_stats = checkpoints.merge_exact(
            fresh.get("batch_stats", {}), loaded.get(f"{prefix}batch_stats", {}), config.init_from
        )
        params, batch_stats = jax.device_put((params, batch_stats), sharding.replicated(mesh))
        results.update({prefix + k: v for k, v in evaluator(params, batch_stats).items()})
    return results
