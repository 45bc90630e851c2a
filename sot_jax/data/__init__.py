"""TFDS dataset builders shipped with sot_jax (importing this package registers them)."""

from sot_jax.data.digits import Digits

__all__ = ["Digits"]
