"""Model zoo: registry, parameter counts, and fidelity to the official PyTorch code (fixtures in tests/fixtures)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from official_fixtures import FIXTURES, load_fixture, rel_err, state_dict_of

from sot_jax import models
from sot_jax.models.heads import ClassifierHead
from sot_jax.models.layers import REMAT_POLICIES
from sot_jax.models.vision_transformer import hvt_pooled_lengths

# SPEC §1, §5, §6 (millions of trainable parameters, 1000 classes; lvvit_l at its 448 px resolution) and timm's
# DeiT counts.
PARAMS_M = {
    "sot_tiny": (7.98, 224),
    "sot_small": (27.01, 224),
    "sot_base": (76.77, 224),
    "hvt_ti_1": (5.74, 224),
    "hvt_s_0": (22.05, 224),
    "hvt_s_1": (22.09, 224),
    "hvt_s_2": (22.11, 224),
    "hvt_s_3": (22.11, 224),
    "scale_hvt_ti_4": (22.12, 224),
    "lvvit_t": (8.53, 224),
    "lvvit_s": (26.15, 224),
    "lvvit_m": (55.83, 224),
    "lvvit_l": (150.47, 448),
    "deit_tiny_patch16_224": (5.72, 224),
    "deit_small_patch16_224": (22.05, 224),
    "deit_base_patch16_224": (86.57, 224),
}


@pytest.mark.parametrize("name", sorted(PARAMS_M))
def test_parameter_counts_match_the_papers(name):
    expected, img_size = PARAMS_M[name]
    model = models.create_model(name, img_size=img_size)
    count = models.count_params(models.abstract_variables(model)["params"])
    assert round(count / 1e6, 2) == expected


def test_every_name_is_listed_and_builds():
    names = models.list_models()
    assert set(PARAMS_M) | {"deit_tiny_sot", "deit_small_sot", "deit_base_sot"} | set(models.TEXT_MODELS) == set(names)
    for name in names:
        assert "params" in models.abstract_variables(models.create_model(name, num_classes=7))


def fixture_overrides(config: dict) -> dict:
    """create_model/from_torch overrides that rebuild a fixture's architecture."""
    return {**config.get("backbone", {}), **config.get("overrides", {}), "img_size": config.get("img_size", 224)}


@pytest.mark.parametrize(
    "fixture", ["sot_tiny_variant.npz", "hvt_variant.npz", "lvvit_variant.npz", "deit_variant.npz"]
)
def test_converted_official_model_gives_official_logits(fixture):
    data = load_fixture(fixture)
    config = json.loads(str(data["config"]))
    overrides = fixture_overrides(config)
    variables = models.from_torch(config["model"], state_dict_of(data), **overrides)
    model = models.create_model(config["model"], num_classes=config["num_classes"], **overrides)
    with jax.default_matmul_precision("highest"):
        logits = model.apply(variables, jnp.asarray(data["images"]), train=False)
    assert logits.shape == data["logits"].shape
    assert rel_err(logits, data["logits"]) <= 1e-4


HEAD_FIXTURES = sorted(p.name for p in FIXTURES.glob("sot_head_*.npz"))


@pytest.mark.parametrize("fixture", HEAD_FIXTURES + ["head_small_official.npz"])
def test_sot_head_matches_official_classifier(fixture):
    data = load_fixture(fixture)
    config = json.loads(str(data["config"])) if "config" in data else dict(head="mgcrp", fusion="sum_fc", wr_dim=24)
    tokens = jnp.asarray(data["tokens"])
    head = ClassifierHead(
        num_classes=data["logits"].shape[-1],
        head=config["head"],
        fusion=config["fusion"],
        mgcrp_heads=6,
        wr_dim=config["wr_dim"],
    )
    abstract = jax.eval_shape(lambda t: head.init(jax.random.key(0), t, train=False), tokens)
    renames = (("representation.svpn_start", "representation.norm.weight"),)
    ignored = tuple(k.removeprefix("classifier.") for k in models.unused_official_keys(config["fusion"]))
    variables = models.convert_variables(abstract, state_dict_of(data), renames, ignored)
    with jax.default_matmul_precision("highest"):
        logits = head.apply(variables, tokens, train=False)
        if config["fusion"] == "sum_loss":  # official eval returns both logit sets; training returns them here
            pair = head.apply(variables, tokens, train=True)
            assert rel_err(jnp.stack([pair.cls, pair.other]), data["logits"]) <= 1e-4
            np.testing.assert_allclose(logits, pair.cls + pair.other, rtol=1e-6)
            return
    assert rel_err(logits, data["logits"].reshape(logits.shape)) <= 1e-4


TINY = dict(embed_dim=24, depth=2, num_heads=2, mlp_hidden=48)


@pytest.mark.parametrize(
    "head,fusion,extra",
    [
        ("cls", "sum_fc", {}),
        ("gap", "sum_fc", {}),
        ("gem", "concat", {}),
        ("ggem", "sum_fc", {}),
        ("ggem", "aggre_all", {"gem_positive": "softplus"}),
        ("gcp", "sum_fc", {}),
        ("mgcrp", "sum_fc", {}),
        ("mgcrp", "sum_fc", {"svpn": "gram_eigh"}),
        ("mgcrp", "concat", {"svpn": "svd"}),
        ("token_label", "sum_fc", {}),
    ],
)
def test_every_head_runs_on_a_cls_backbone_in_eval_and_training(head, fusion, extra):
    model = models.create_model(
        "deit_tiny_patch16_224", num_classes=5, img_size=32, head=head, fusion=fusion, wr_dim=4, **TINY, **extra
    )
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    variables = model.init({"params": jax.random.key(0)}, images)
    logits = model.apply(variables, images, train=False)
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
    out = model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(1)})
    if head == "token_label":
        assert out.cls.shape == (2, 5) and out.other.shape == (2, 4, 5) and out.per_token
    else:
        assert out.shape == (2, 5)
    grads = jax.grad(lambda p: jnp.sum(model.apply({**variables, "params": p}, images, train=False)))(
        variables["params"]
    )
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_ggem_learns_one_power_per_head_group():
    model = models.create_model("deit_tiny_patch16_224", num_classes=3, img_size=32, head="ggem", **TINY)
    params = models.abstract_variables(model)["params"]
    assert params["classifier"]["representation"]["p"].shape == (2,)  # the backbone's 2 attention heads


def test_generalized_mean_interpolates_mean_and_max():
    from sot_jax.models.heads import GeM

    x = jnp.asarray(np.random.default_rng(0).uniform(0.1, 2.0, size=(2, 9, 4)), jnp.float32)
    for p, expected in ((1.0, x.mean(axis=1)), (60.0, x.max(axis=1))):
        out = GeM(groups=2, p_init=p).apply({"params": {"p": jnp.full((2,), p)}}, x)
        np.testing.assert_allclose(out, expected, rtol=0.05)


def test_hvt_pooling_schedule():
    assert [n for n in hvt_pooled_lengths(196, 12, 3) if n] == [97, 48, 23, 11]
    assert hvt_pooled_lengths(196, 12, None) == [None] * 12
    params = models.abstract_variables(models.create_model("hvt_s_1"))["params"]
    assert params["blocks_0"]["pos_embed"].shape == (1, 97, 384) and "pos_embed" not in params["blocks_1"]


@pytest.mark.slow
def test_bfloat16_computes_in_bfloat16_with_float32_parameters():
    model = models.create_model("sot_tiny", num_classes=4, dtype=jnp.bfloat16, wr_dim=4, **TINY)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(1, 224, 224, 3)), jnp.float32)
    variables = model.init({"params": jax.random.key(0)}, images)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
    logits = model.apply(variables, images)
    reference = models.create_model("sot_tiny", num_classes=4, wr_dim=4, **TINY).apply(variables, images)
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
    assert rel_err(logits, reference) < 0.1  # bf16 rounding, not a different function


def test_image_size_sets_the_position_embedding_and_is_checked():
    model = models.create_model("deit_tiny_patch16_224", img_size=(32, 48))
    assert models.abstract_variables(model)["params"]["pos_embed"].shape == (1, 1 + 2 * 3, 192)
    with pytest.raises(ValueError, match="image size 30x30 must be positive and divisible by its stride 16"):
        models.create_model("sot_small", img_size=30)
    variables = models.abstract_variables(model)
    with pytest.raises(ValueError, match="built for NHWC images of 32x48"):
        model.apply(variables, jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: models.create_model("sot_huge"), "unknown model 'sot_huge'; valid names: deit_base_patch16_224"),
        (lambda: models.create_model("sot_small", svnp="svd"), "unknown option"),
        (lambda: models.create_model("sot_small", num_classes=0), "num_classes must be a positive integer"),
        (lambda: models.create_model("sot_small", embed_dim=100), "embed_dim 100 is not divisible by num_heads 6"),
        (lambda: models.create_model("scale_hvt_ti_4", img_size=64), "HVT pooling at block 9 needs at least 3 tokens"),
        (lambda: models.create_model("hvt_s_1", remat="dots"), "unknown remat policy 'dots'; valid: None, nothing_"),
        (lambda: models.create_model("sot_tiny", bn_group_size=-1), "bn_group_size must be a non-negative integer"),
        (lambda: models.create_model("sot_small", head_dropout=1.0), r"head_dropout must be a dropout rate in \[0, 1"),
    ],
)
def test_registry_errors_are_clear(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"head": "attention"}, "unknown head 'attention'"),
        ({"fusion": "mean"}, "unknown fusion 'mean'"),
        ({"svpn": "qr"}, "unknown svpn method 'qr'"),
        ({"head": "cls"}, "needs a class token"),
    ],
)
def test_bad_head_options_are_named(overrides, message):
    model = models.create_model("hvt_ti_1", img_size=32, **overrides)
    with pytest.raises(ValueError, match=message):
        models.abstract_variables(model)


def test_from_torch_names_missing_unexpected_and_misshaped_keys():
    data = load_fixture("deit_variant.npz")
    config = json.loads(str(data["config"]))
    state_dict = state_dict_of(data)
    del state_dict["blocks.1.mlp.fc2.bias"]
    state_dict["blocks.0.extra.weight"] = np.zeros(3)
    state_dict["norm.weight"] = np.zeros(47)
    with pytest.raises(ValueError) as error:
        models.from_torch(config["model"], state_dict, **fixture_overrides(config))
    message = str(error.value)
    assert "1 missing key(s): blocks.1.mlp.fc2.bias" in message
    assert "1 unexpected key(s): blocks.0.extra.weight" in message
    assert "norm.weight: checkpoint (47,), model needs (48,)" in message


@pytest.mark.parametrize("height,width", [(8, 8), (7, 9), (2, 3)])
@pytest.mark.parametrize("constant", [False, True], ids=["random", "ties"])
def test_stem_conv_max_pool_is_conv_then_max_pool(height, width, constant):
    """SoT's fused first conv + max-pool gives the plain conv → max-pool values and gradients (odd sizes included;
    a constant image makes the nine candidates tie, where the gradient must go to exactly one of them)."""
    import flax.linen as nn

    from sot_jax.models.sot import ConvMaxPool

    with jax.enable_x64(True):
        rng = np.random.default_rng(height * width)
        images = jnp.asarray(np.ones((2, height, width, 3)) if constant else rng.normal(size=(2, height, width, 3)))
        module = ConvMaxPool(5, jnp.float64)
        params = {"kernel": jnp.asarray(rng.normal(size=(3, 3, 3, 5))), "bias": jnp.asarray(rng.normal(size=5))}

        def plain(params):
            conv = jax.lax.conv_general_dilated(images, params["kernel"], (1, 1), ((1, 1), (1, 1)),
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
            return nn.max_pool(conv + params["bias"], (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

        def fused(params):
            return module.apply({"params": params}, images)

        for fn in (plain, fused):
            assert fn(params).shape == (2, -(-height // 2), -(-width // 2), 5)
        np.testing.assert_allclose(fused(params), plain(params), rtol=1e-12, atol=1e-12)
        weights = jnp.asarray(rng.normal(size=plain(params).shape))
        grads = [jax.grad(lambda p, fn=fn: jnp.sum(weights * fn(p)))(params) for fn in (fused, plain)]
        for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "hvt_ti_1"])
def test_remat_keeps_parameters_and_gradients_and_saves_less(name):
    """Block rematerialization changes what the backward pass keeps, not the function: same parameter tree, same
    training loss and gradients (drop path active, so the recomputed blocks must draw the same randomness), and
    fewer residual bytes per policy, `nothing_saveable` the fewest."""
    images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)))

    def loss_grads_and_residual_bytes(remat: str | None) -> tuple:
        model = models.create_model(
            name, num_classes=3, img_size=32, dtype=jnp.float64, drop_path_rate=0.5, remat=remat, **TINY
        )
        variables = model.init({"params": jax.random.key(0)}, images)

        def loss(params: dict) -> jax.Array:
            logits = model.apply({"params": params}, images, train=True, rngs={"dropout": jax.random.key(1)})
            return jnp.sum(jnp.sin(logits))

        value, backward = jax.vjp(loss, variables["params"])
        residual_bytes = sum(x.nbytes for x in jax.tree.leaves(backward) if x.ndim and x.shape[0] == len(images))
        return variables["params"], value, backward(jnp.ones_like(value))[0], residual_bytes

    with jax.enable_x64(True):
        params, value, grads, residual_bytes = loss_grads_and_residual_bytes(None)
        saved = {}
        for policy in REMAT_POLICIES:
            remat_params, remat_value, remat_grads, saved[policy] = loss_grads_and_residual_bytes(policy)
            assert jax.tree.map(jnp.shape, remat_params) == jax.tree.map(jnp.shape, params)
            np.testing.assert_allclose(remat_value, value, rtol=1e-12)
            for a, b in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(grads), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert min(saved, key=saved.get) == "nothing_saveable"
    assert max(saved.values()) < 0.8 * residual_bytes, (saved, residual_bytes)


@pytest.mark.parametrize("height,width,patch", [(8, 8, 4), (9, 7, 2), (3, 5, 3)])
def test_patch_conv_is_strided_conv(height, width, patch):
    """The patch embedding's space-to-depth + 1×1 convolution is `nn.Conv(kernel = stride = patch, VALID)`: same
    parameters and initial values, same outputs and gradients (parameters and image), leftover rows and columns
    dropped."""
    import flax.linen as nn

    from sot_jax.models.layers import PatchConv, conv

    with jax.enable_x64(True):
        images = jnp.asarray(np.random.default_rng(height).normal(size=(2, height, width, 3)))
        patch_conv = PatchConv(5, patch, jnp.float64)
        strided = conv(5, (patch, patch), "proj", jnp.float64, strides=(patch, patch), padding="VALID")
        params = patch_conv.init(jax.random.key(0), images)["params"]
        reference = strided.init(jax.random.key(0), images)["params"]
        assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, reference)
        np.testing.assert_array_equal(params["kernel"], reference["kernel"])
        params["bias"] = jnp.asarray(np.random.default_rng(1).normal(size=5))  # initialized to zero: make it count

        def loss(params: dict, images: jax.Array, module: nn.Module) -> tuple[jax.Array, jax.Array]:
            out = module.apply({"params": params}, images)
            return jnp.sum(jnp.sin(out)), out

        (_, out), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(params, images, patch_conv)
        (_, expected), expected_grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(params, images, strided)
        assert out.shape == (2, height // patch, width // patch, 5)
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
@pytest.mark.parametrize("tokens,head_dim", [(197, 64), (197, 60), (50, 66)])
def test_cudnn_attention_matches_xla(tokens, head_dim):
    """The padded cuDNN path (tokens to a multiple of 64, head dim to a multiple of 8) computes XLA's attention,
    forward and backward."""
    from sot_jax.models.layers import _cudnn_attention

    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, tokens, 3, head_dim), jnp.bfloat16)

    def value_and_grads(attention):
        loss = lambda *qkv: jnp.sum(jnp.sin(attention(*qkv).astype(jnp.float32)))  # noqa: E731
        return jax.jit(jax.value_and_grad(loss, (0, 1, 2)))(q, k, v)

    xla = value_and_grads(lambda *qkv: jax.nn.dot_product_attention(*qkv, implementation="xla"))
    cudnn = value_and_grads(_cudnn_attention)
    for a, b in zip(jax.tree.leaves(cudnn), jax.tree.leaves(xla), strict=True):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.linalg.norm(a - b) <= 2e-2 * np.linalg.norm(b)


@pytest.mark.parametrize("bn_group_size", [0, 2, 8])
def test_batch_norm_normalizes_each_group_and_updates_running_statistics_as_pytorch(bn_group_size):
    """Training normalizes each run of `bn_group_size` images (0, or a group larger than the batch: the whole batch)
    by its own mean and biased variance; the running statistics move by PyTorch's momentum 0.1 towards the mean over
    groups of each group's mean and unbiased variance (not at initialization). Evaluation normalizes by the running
    statistics."""
    from sot_jax.models.layers import BatchNorm

    with jax.enable_x64(True):
        rng = np.random.default_rng(bn_group_size)
        x = rng.normal(3.0, 2.0, size=(6, 3, 2, 5))
        params = {"scale": rng.normal(size=5), "bias": rng.normal(size=5)}
        running = {"mean": rng.normal(size=5), "var": rng.uniform(0.5, 2.0, size=5)}
        module = BatchNorm(bn_group_size, jnp.float64)
        out, updates = module.apply({"params": params, "batch_stats": running}, x, True, mutable=["batch_stats"])
        evaluated = module.apply({"params": params, "batch_stats": running}, x, False)
        initial = module.init(jax.random.key(0), x, True)["batch_stats"]  # initializing in training updates nothing

    groups = x.reshape(3 if bn_group_size == 2 else 1, -1, 3, 2, 5)
    mean, var = groups.mean(axis=(1, 2, 3), keepdims=True), groups.var(axis=(1, 2, 3), keepdims=True)
    expected = ((groups - mean) / np.sqrt(var + 1e-5) * params["scale"] + params["bias"]).reshape(x.shape)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)
    group_means, group_vars = mean.reshape(-1, 5), groups.var(axis=(1, 2, 3), ddof=1)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.9 * running["mean"] + 0.1 * group_means.mean(0))
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 * running["var"] + 0.1 * group_vars.mean(0))
    expected = (x - running["mean"]) / np.sqrt(running["var"] + 1e-5) * params["scale"] + params["bias"]
    np.testing.assert_allclose(evaluated, expected, rtol=1e-10, atol=1e-10)
    assert np.all(initial["mean"] == 0) and np.all(initial["var"] == 1)


@pytest.mark.parametrize("stem", ["sot_transition", "lvvit_stem"])
def test_grouped_batch_norm_is_each_group_alone(stem):
    """With bn_group_size 2, a training batch of 6 gives the outputs of its three pairs each run alone with
    whole-batch statistics, and running statistics the mean of theirs; a batch no larger than the group is one group.
    For SoT's transition and LV-ViT's convolutional stem (three BatchNorms)."""
    from sot_jax.models.lvvit import ConvStem
    from sot_jax.models.sot import DenseTransition

    def build(bn_group_size):
        if stem == "lvvit_stem":
            return ConvStem(7, 5, jnp.float64, bn_group_size)
        return DenseTransition(jnp.float64, bn_group_size)

    shape = (6, 16, 16, 3) if stem == "lvvit_stem" else (6, 4, 6, 5)
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(1.0, 2.0, size=shape))
        abstract = jax.eval_shape(lambda x: build(0).init(jax.random.key(0), x, False), x)
        variables = {
            "params": jax.tree.map(lambda v: jnp.asarray(rng.normal(size=v.shape)), abstract["params"]),
            "batch_stats": jax.tree.map(lambda v: jnp.asarray(rng.uniform(0.5, 2.0, v.shape)), abstract["batch_stats"]),
        }
        apply = lambda module, x: module.apply(variables, x, True, mutable=["batch_stats"])  # noqa: E731
        grouped, updates = apply(build(2), x)
        alone = [apply(build(0), x[i : i + 2]) for i in (0, 2, 4)]
        one_group = apply(build(4), x[:2])
    np.testing.assert_allclose(grouped, np.concatenate([out for out, _ in alone]), rtol=1e-10, atol=1e-10)
    mean_of_alone = jax.tree.map(lambda *stats: np.mean(stats, axis=0), *[updates for _, updates in alone])
    for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(mean_of_alone), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(jax.tree.leaves(one_group), jax.tree.leaves(alone[0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["sot_tiny", "lvvit_t"])
def test_bn_group_size_is_a_model_key_that_must_divide_the_training_batch(name):
    """`config.model.bn_group_size` reaches the stem's BatchNorms: a training batch it does not divide is a one-line
    UserError naming it, the group and the batch; evaluation (running statistics) takes any batch."""
    from sot_jax import experiment, recipes
    from sot_jax.errors import UserError

    config = recipes.base_config()
    config.model.update(name=name, img_size=32, dtype="float32", wr_dim=4, bn_group_size=4, **TINY)
    model = experiment.build_model(config.model, num_classes=3)
    variables = models.abstract_variables(model)
    images = jax.ShapeDtypeStruct((6, 32, 32, 3), jnp.float32)

    def train(variables, images):
        return model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])

    with pytest.raises(UserError) as error:
        jax.eval_shape(train, variables, images)
    assert str(error.value) == "bn_group_size 4 does not divide the (micro-)batch of 6 images"
    assert jax.eval_shape(lambda v, x: model.apply(v, x), variables, images).shape == (6, 3)
    jax.eval_shape(train, variables, jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("bn_group_size", [0, 2])
def test_transition_at_pooled_resolution_is_batch_norm_conv_avg_pool(train, bn_group_size):
    """SoT's transition (statistics at full resolution, then pool → normalize → 1×1 conv) has the variables of
    BatchNorm → Conv1x1 → AvgPool2 and gives its values, running-statistic updates and gradients (input and every
    parameter), with odd channel counts and odd sizes (the pool drops the last row and column)."""
    import flax.linen as nn

    from sot_jax.models.layers import BatchNorm, conv
    from sot_jax.models.sot import TRANSITION_WIDTH, DenseTransition

    class PlainTransition(nn.Module):
        @nn.compact
        def __call__(self, x: jax.Array, train: bool) -> jax.Array:
            x = BatchNorm(bn_group_size, jnp.float64, name="norm")(x, train)
            x = conv(TRANSITION_WIDTH, (1, 1), "conv", jnp.float64, use_bias=False)(x)
            return nn.avg_pool(x, (2, 2), strides=(2, 2))

    with jax.enable_x64(True):
        rng = np.random.default_rng(bn_group_size)
        x = jnp.asarray(rng.normal(1.0, 2.0, size=(4, 5, 7, 9)))
        fused, plain = DenseTransition(jnp.float64, bn_group_size), PlainTransition()
        shapes = jax.tree.map(jnp.shape, fused.init(jax.random.key(0), x, False))
        assert shapes == jax.tree.map(jnp.shape, plain.init(jax.random.key(0), x, False))
        params = {
            "norm": {"scale": rng.normal(size=9), "bias": rng.normal(size=9)},
            "conv": {"kernel": rng.normal(size=(1, 1, 9, TRANSITION_WIDTH))},
        }
        batch_stats = {"norm": {"mean": rng.normal(size=9), "var": rng.uniform(0.5, 2.0, size=9)}}
        assert jax.tree.map(jnp.shape, {"params": params, "batch_stats": batch_stats}) == shapes
        weights = jnp.asarray(rng.normal(size=(4, 2, 3, TRANSITION_WIDTH)))

        def loss(params, x, module):
            variables = {"params": params, "batch_stats": batch_stats}
            out, updates = module.apply(variables, x, train, mutable=["batch_stats"])
            return jnp.sum(weights * out), (out, updates)

        results = [jax.value_and_grad(loss, (0, 1), has_aux=True)(params, x, m) for m in (fused, plain)]
    (_, (out, updates)), grads = results[0]
    (_, (expected, expected_updates)), expected_grads = results[1]
    assert out.shape == (4, 2, 3, TRANSITION_WIDTH)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)
    expected_leaves = jax.tree.leaves((expected_updates, expected_grads))
    for a, b in zip(jax.tree.leaves((updates, grads)), expected_leaves, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
