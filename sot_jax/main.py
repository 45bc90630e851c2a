r"""Train or evaluate: `python -m sot_jax.main --config=configs/sot_deit.py[:VARIANT] --workdir=DIR`.

Config values are overridden with `--config.KEY=VALUE` (e.g. `--config.total_steps=100`). Rerunning the same
command with the same workdir resumes from the latest checkpoint. `--config.eval_only=True
--config.init_from=DIR` evaluates a checkpoint. Multi-host: on TPU pods and SLURM `jax.distributed` is
initialized automatically; elsewhere pass --coordinator_address, --num_processes and --process_id.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no C++ INFO/WARNING lines

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:VARIANT]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")


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
    if config is None:
        sys.exit("error: --config is required, e.g. --config=configs/sot_deit.py:digits")
    if not config.eval_only and not _WORKDIR.value:
        sys.exit("error: --workdir is required for training")
    initialize_distributed()
    from sot_jax import train  # after distributed initialization: importing JAX backends is fine, using them is not

    try:
        if config.eval_only:
            for key, value in train.evaluate_checkpoint(config).items():
                print(f"{key}: {value:.2f}")
        else:
            train.train_and_evaluate(config, _WORKDIR.value)
    except (ValueError, FileExistsError, train.NonFiniteLossError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
