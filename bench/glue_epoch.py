"""An MNLI epoch's wall time split into training, evaluation and checkpoint writes, for BERT-base + SoT with the
recipe of `configs/sot_glue.py:bert_base_sot,mnli` (batch 32, sequence length 128, bf16, MNLI's official head
112/48), on one GPU, numpy-fed (synthetic token ids: TensorFlow and TFDS are not needed; every sequence is padded to
128 tokens, so the cost does not depend on the text).

    python bench/glue_epoch.py [--steps 200] [--json out.json] [--no-xla-defaults] [--smoke]

It times the pieces the trainer runs and scales them to one epoch (392,702 examples = 12,271 steps):
- a training step (`train.jit_train_step`, median of `--steps`);
- one evaluation: the prediction step of `evaluate.Evaluator` (`eval_step(predict=True)`, eval batch 256) over
  MNLI's two dev sets (9,815 matched + 9,832 mismatched), predictions fetched to the host;
- writes: the resumable state (`checkpoints.checkpoint_manager`, params + AdamW moments) and the best weights
  (`checkpoints.BestWeights`, params + batch statistics): the time the call blocks the loop (Orbax then writes in
  the background) and until the write is finished.
The epoch is then reported for today's schedule (evaluation every `eval_every_steps` of the config, the state every
`checkpoint_every_steps`, the best weights at most at each evaluation) and for the previous one (evaluation every
100 steps, each writing the whole state).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sot_jax import xla_defaults

EPOCH_EXAMPLES = 392_702
DEV_EXAMPLES = (9_815, 9_832)  # validation_matched, validation_mismatched
SEQUENCE_LENGTH = 128


def synthetic(count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(1000, 28000, (count, SEQUENCE_LENGTH)).astype(np.int32),
        "attention_mask": np.ones((count, SEQUENCE_LENGTH), np.int32),
        "token_type_ids": np.zeros((count, SEQUENCE_LENGTH), np.int32),
        "label": rng.integers(0, 3, count).astype(np.int32),
    }


def measure(steps: int, smoke: bool = False) -> dict:
    import functools

    import jax
    import orbax.checkpoint as ocp

    from sot_jax import checkpoints, evaluate, experiment, sharding

    spec = importlib.util.spec_from_file_location("sot_glue", Path(__file__).parent.parent / "configs/sot_glue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("bert_base_sot,mnli")
    dev_examples = DEV_EXAMPLES
    if smoke:  # a 1-layer, 64-wide BERT and 600 dev examples: checks the script on a CPU in seconds
        config.model.update({"hidden_size": 64, "num_layers": 1, "num_heads": 2, "intermediate_size": 128})
        dev_examples = (300, 300)
    epoch_steps = EPOCH_EXAMPLES // config.batch_size
    total_steps = epoch_steps * config.optim.num_epochs
    trainer = experiment.build_trainer(config, num_classes=3, total_steps=total_steps)
    model, mesh, batch_sharding = trainer.model, trainer.mesh, trainer.batch_sharding
    state, step_fn = trainer.initial_state(), trainer.jit_step()
    batch = sharding.global_batch(synthetic(config.batch_size, 0), batch_sharding)

    compile_start = time.perf_counter()
    for _ in range(3):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics["loss"])
    compile_s = time.perf_counter() - compile_start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step_fn(state, batch)
        jax.block_until_ready(metrics["loss"])
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times))

    predict = jax.jit(
        functools.partial(evaluate.eval_step, model=model, class_mask=None, predict=True),
        out_shardings=sharding.replicated(mesh),
    )
    eval_batch = config.eval_batch_size

    def evaluation() -> float:
        start = time.perf_counter()
        for examples in dev_examples:
            for first in range(0, examples, eval_batch):
                arrays = synthetic(eval_batch, first)
                arrays["mask"] = (np.arange(first, first + eval_batch) < examples).astype(np.int32)
                outputs = predict(state.params, state.batch_stats, sharding.global_batch(arrays, batch_sharding))
                np.asarray(outputs["prediction"])
        return time.perf_counter() - start

    evaluation()  # compiles
    eval_s = float(np.median([evaluation() for _ in range(2)]))

    workdir = Path(tempfile.mkdtemp())
    manager = checkpoints.checkpoint_manager(workdir, config.keep_checkpoints)
    meta = {"model": config.model.name, "num_classes": 3}
    best = checkpoints.BestWeights(workdir, "val_glue", meta, 0)
    writes = {"state": [], "best": []}
    for index in range(3):
        step = index + 1
        start = time.perf_counter()
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        manager.save(step, args=args, force=True)
        blocking = time.perf_counter() - start
        manager.wait_until_finished()
        writes["state"].append((blocking, time.perf_counter() - start))
        start = time.perf_counter()
        best.update(step, {"val_glue": float(step)}, state)
        blocking = time.perf_counter() - start
        best.wait_until_finished()
        writes["best"].append((blocking, time.perf_counter() - start))
    state_bytes = sum(p.stat().st_size for p in (workdir / "checkpoints").rglob("*") if p.is_file())  # one kept
    write = {}
    for kind, values in writes.items():
        blocking, total = np.median(np.array(values), axis=0)
        write[kind] = {"blocking_s": float(blocking), "total_s": float(total)}

    evals_now = epoch_steps // config.eval_every_steps
    saves_now = epoch_steps // config.checkpoint_every_steps
    evals_before = epoch_steps // 100
    train_s = epoch_steps * step_s

    def split(evals: int, state_writes: int, best_writes: int) -> dict:
        checkpoint_s = state_writes * write["state"]["blocking_s"] + best_writes * write["best"]["blocking_s"]
        return {"train_s": train_s, "eval_s": evals * eval_s, "checkpoint_blocking_s": checkpoint_s,
                "evaluations": evals, "state_writes": state_writes, "best_writes": best_writes,
                "eval_fraction_of_train": evals * eval_s / train_s}  # fmt: skip

    return {
        "device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "batch": config.batch_size,
        "eval_batch": eval_batch, "eval_every_steps": config.eval_every_steps,
        "checkpoint_every_steps": config.checkpoint_every_steps, "epoch_steps": epoch_steps, "step_s": step_s,
        "compile_s": compile_s, "eval_s": eval_s, "writes": write, "state_checkpoint_bytes": state_bytes,
        "now": split(evals_now, saves_now, evals_now), "before": split(evals_before, evals_before, 0),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--json")
    parser.add_argument("--smoke", action="store_true", help="a tiny model and dev set (a CPU check of the script)")
    parser.add_argument("--no-xla-defaults", action="store_true", help="leave XLA_FLAGS as given")
    args = parser.parse_args()
    if not args.no_xla_defaults:
        xla_defaults.apply()
    result = measure(args.steps, args.smoke)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
