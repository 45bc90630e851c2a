r"""Train or evaluate: `python -m sot_jax.main --config=configs/sot_deit.py[:VARIANT] --workdir=DIR`.

Config values are overridden with `--config.KEY=VALUE` (e.g. `--config.total_steps=100`,
`--config.model.head=gem`). Rerunning the same command with the same workdir resumes from the latest checkpoint.
`--config.eval_only=True --config.init_from=DIR` evaluates a checkpoint. Multi-host: on TPU pods and SLURM
`jax.distributed` is initialized automatically; elsewhere pass --coordinator_address, --num_processes and
--process_id. Problems the user can fix (config, data, checkpoints) end with one `error: ...` line.
"""

from __future__ import annotations

import os
import re
import sys

from sot_jax import xla_defaults  # imports no JAX backend: the flags below still take effect

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # if TensorFlow loads (preparing a dataset): no C++ INFO lines
# The measured XLA defaults (sot_jax/xla_defaults.py), before JAX's backend starts: XLA reads XLA_FLAGS only then.
os.environ["XLA_FLAGS"] = xla_defaults.with_defaults(os.environ.get("XLA_FLAGS", ""))

from absl import app, flags, logging
from ml_collections import config_flags

from sot_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:VARIANT]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")


def check_config_arguments(argv: list[str]) -> None:
    """Load the `--config` file and check every `--config.KEY=VALUE` key before absl parses them, so that an
    unknown variant or key is one line naming the valid choices (absl would print a traceback)."""
    from sot_jax import recipes

    specs = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if not specs:
        raise UserError("--config is required, e.g. --config=configs/sot_deit.py:digits")
    config = recipes.load_config_file(specs[-1])  # the last one counts, as for absl
    for arg in argv:
        match = re.match(r"--config\.([^=]+)", arg)
        if match:
            recipes.config_node(config, match.group(1))


def parse_flags(argv: list[str]) -> list[str]:
    check_config_arguments(argv)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:  # e.g. a value of the wrong type
        raise UserError(str(e).splitlines()[0]) from None


def initialize_distributed() -> None:
    import jax

    if _COORDINATOR.value is not None:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ:
        jax.distributed.initialize()


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax reports every save at INFO
    config = _CONFIG.value
    if config.dry_run:  # the resolved recipe; no device, workdir or preparing (only the training split's size)
        from sot_jax import recipes

        print(recipes.describe(config))
        return
    if not config.eval_only and not _WORKDIR.value:
        raise UserError("--workdir is required for training")
    initialize_distributed()
    from sot_jax import evaluate, experiment, train

    resolved = experiment.build(config)  # every check, before anything is trained or written
    if config.eval_only:
        for key, value in evaluate.evaluate_checkpoint(resolved, _WORKDIR.value).items():
            print(f"{key}: {value:.2f}")
    else:
        train.train_and_evaluate(resolved, _WORKDIR.value)


def run() -> None:
    try:
        argv = parse_flags(sys.argv)
        app.run(main, argv=argv, flags_parser=lambda args: args)
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    run()
