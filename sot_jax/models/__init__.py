"""The models, vision and text, by registered name.

    from sot_jax import models
    models.list_models()
    model = models.create_model("sot_small", num_classes=1000, head="mgcrp", svpn="gram_eigh", dtype=jnp.bfloat16)
    variables = model.init({"params": rng}, images, train=False)   # images: float32 NHWC, normalized
    logits = model.apply(variables, images, train=False)          # (B, num_classes): the official eval output
    variables = models.from_torch("sot_small", state_dict)         # official PyTorch keys -> Flax variables

Training: `model.apply(variables, images, train=True, rngs={"dropout": key}, mutable=["batch_stats"])`
(the SoT and LV-ViT stems hold BatchNorm statistics). It returns logits, except for the `sum_loss` fusion and
the LV-ViT `token_label` head, which return `PairedLogits` (class-token logits, other logits); see
`heads.PairedLogits`.

Files: `registry.py` (every name, vision and text), `factory.py` (`create_model`, its options), `torch_conversion.py`
(`from_torch`), `heads.py` (the head registry), `vision_transformer.py` (the shared trunk), one file per family
(`deit.py`, `sot.py`, `hvt.py`, `lvvit.py`). Language transformers (BERT, RoBERTa, GPT, GPT-2, with the SoT text
head): `text.py` (`create_text_model`), `hf_conversion.py` (`from_hf`), `bert.py`, `gpt.py`, their shared layers
`text_layers.py`, `text_heads.py`.
"""

from sot_jax.models.factory import OPTIONS, abstract_variables, count_params, create_model, example_inputs
from sot_jax.models.heads import HEADS, PairedLogits
from sot_jax.models.hf_conversion import from_hf
from sot_jax.models.registry import TEXT_MODELS, get_spec, list_models
from sot_jax.models.text import create_text_model
from sot_jax.models.torch_conversion import (
    convert_variables,
    from_torch,
    infer_num_classes,
    torch_key,
    unused_official_keys,
)

__all__ = [
    "HEADS", "OPTIONS", "TEXT_MODELS", "PairedLogits", "abstract_variables", "convert_variables", "count_params",
    "create_model", "create_text_model", "example_inputs", "from_hf", "from_torch", "get_spec", "infer_num_classes",
    "list_models", "torch_key", "unused_official_keys",
]  # fmt: skip
