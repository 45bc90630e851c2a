"""The device mesh, the train state's shardings (data parallel or FSDP) and batch placement."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh() -> Mesh:
    """One "data" axis over every device of every process."""
    return Mesh(np.array(jax.devices()), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], mesh_size: int) -> P:
    """Shard the largest axis that the mesh divides (replicate small or indivisible arrays)."""
    candidates = [i for i in np.argsort(shape)[::-1] if shape[i] % mesh_size == 0 and shape[i] >= mesh_size]
    if not candidates or int(np.prod(shape)) < 2**10:
        return P()
    spec = [None] * len(shape)
    spec[candidates[0]] = "data"
    return P(*spec)


def state_shardings(abstract_state: Any, mesh: Mesh, mode: str) -> Any:
    """A sharding per leaf: replicated ("data") or `fsdp_spec` ("fsdp")."""

    def sharding(x):
        spec = fsdp_spec(x.shape, mesh.size) if mode == "fsdp" else P()
        return NamedSharding(mesh, spec)

    return jax.tree.map(sharding, abstract_state)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """Abstract arrays that carry their shardings (what Orbax restores onto)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """One global array per key from each process's slice of the batch."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
