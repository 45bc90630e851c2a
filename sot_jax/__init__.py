"""sot_jax: vision transformers with second-order (SoT) and token-pooling classification heads in JAX/Flax."""

from sot_jax import ops

__version__ = "0.1.0"
__all__ = ["ops"]
