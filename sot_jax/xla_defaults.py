"""XLA flags that sot_jax sets by default where the trainer and the benchmarks start.

Each flag in `FLAGS` was measured faster on every row of BENCHMARKS.md's "XLA defaults (measured)" table; a flag
that lost on any row is not here. `apply()` must run before JAX initializes its backend (XLA reads `XLA_FLAGS`
once, then), which is why this module imports no JAX. A flag that the user's own `XLA_FLAGS` already names, with
any value, is left as the user set it; the user's other flags are kept. XLA's CPU backend accepts the `xla_gpu_*`
flags and ignores them, so the defaults are harmless on a CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, MutableMapping

# cuBLAS for every matmul instead of Triton GEMM fusions: faster on every row measured, and less peak memory.
FLAGS: tuple[str, ...] = ("--xla_gpu_enable_triton_gemm=false",)


def flag_name(flag: str) -> str:
    """'--xla_gpu_enable_triton_gemm=false' -> 'xla_gpu_enable_triton_gemm'."""
    return flag.lstrip("-").split("=", 1)[0]


def with_defaults(xla_flags: str, defaults: Iterable[str] = FLAGS) -> str:
    """`xla_flags` (an XLA_FLAGS value) with each default whose flag it does not name appended."""
    user = xla_flags.split()
    named = {flag_name(flag) for flag in user}
    return " ".join(user + [flag for flag in defaults if flag_name(flag) not in named])


def apply(defaults: Iterable[str] = FLAGS, environ: MutableMapping[str, str] | None = None) -> str:
    """Add the defaults to `XLA_FLAGS` in `environ` (the process's environment by default); returns the new value.

    Idempotent. Call it before the first JAX computation (importing jax alone is fine); after the backend has
    initialized it changes nothing for this process, only for the processes it starts."""
    environ = os.environ if environ is None else environ
    value = with_defaults(environ.get("XLA_FLAGS", ""), defaults)
    if value:
        environ["XLA_FLAGS"] = value
    return value
