"""sot_jax.xla_defaults: the measured XLA flags are added to XLA_FLAGS without overriding the user's own."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from sot_jax import xla_defaults

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_added_when_xla_flags_is_unset():
    environ = {}
    assert xla_defaults.apply(environ=environ) == " ".join(xla_defaults.FLAGS)
    assert environ["XLA_FLAGS"] == " ".join(xla_defaults.FLAGS)


def test_a_flag_the_user_set_keeps_the_users_value_and_is_not_repeated():
    for name in map(xla_defaults.flag_name, xla_defaults.FLAGS):
        for user in (f"--{name}=other", f"--{name}", f"-{name}=other"):
            environ = {"XLA_FLAGS": user}
            xla_defaults.apply(environ=environ)
            assert environ["XLA_FLAGS"].split().count(user) == 1
            assert [xla_defaults.flag_name(f) for f in environ["XLA_FLAGS"].split()].count(name) == 1


def test_other_user_flags_are_kept_in_their_order_before_the_defaults():
    user = "--xla_force_host_platform_device_count=8  --xla_dump_to=/tmp/dump"
    environ = {"XLA_FLAGS": user}
    xla_defaults.apply(environ=environ)
    assert environ["XLA_FLAGS"].split() == user.split() + list(xla_defaults.FLAGS)


def test_apply_is_idempotent_and_defaults_can_be_given():
    environ = {"XLA_FLAGS": "--a=1"}
    first = xla_defaults.apply(("--a=2", "--b=true", "--c"), environ=environ)
    assert first == "--a=1 --b=true --c"
    assert xla_defaults.apply(("--a=2", "--b=true", "--c"), environ=environ) == first
    assert xla_defaults.apply((), environ={}) == ""


def test_the_module_itself_imports_no_jax():
    # Loaded from its file alone (the package's __init__ imports jax; the module must not need it).
    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('xd', {str(ROOT / 'sot_jax' / 'xla_defaults.py')!r}); "
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
        "assert 'jax' not in sys.modules, 'jax imported'; print(module.FLAGS)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert importlib.util.find_spec("sot_jax.xla_defaults") is not None


def run_after_importing_main(xla_flags: str | None) -> subprocess.CompletedProcess:
    """A fresh CPU process that imports sot_jax.main (which sets the defaults), then computes with JAX."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    code = (
        "import os; import sot_jax.main; "
        "from jax._src import xla_bridge; initialized = xla_bridge.backends_are_initialized(); "
        "import jax.numpy as jnp; "
        "print(initialized); print(os.environ['XLA_FLAGS']); print(float(jnp.arange(4.0).sum()))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_the_trainers_defaults_are_set_before_the_backend_and_run_on_the_cpu():
    # An unknown XLA flag aborts the process, so this also checks that XLA's CPU backend accepts the GPU flags.
    done = run_after_importing_main(None)
    assert done.returncode == 0, done.stderr[-2000:]
    initialized, flags, value = done.stdout.splitlines()[-3:]
    assert initialized == "False"  # importing the trainer started no backend: the flags still count
    assert flags.split() == list(xla_defaults.FLAGS)
    assert float(value) == 6.0


def test_the_trainer_keeps_a_users_xla_flags():
    name = xla_defaults.flag_name(xla_defaults.FLAGS[0])
    user = f"--{name}=true --xla_cpu_enable_fast_math=false"
    done = run_after_importing_main(user)
    assert done.returncode == 0, done.stderr[-2000:]
    flags = done.stdout.splitlines()[-2]
    assert flags.split() == user.split() + list(xla_defaults.FLAGS[1:])
