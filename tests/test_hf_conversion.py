"""HF checkpoints into sot_jax's text models (sot_jax.models.hf_conversion): logits equal HF transformers' PyTorch
models for every family, legacy .bin files, the official fork's head settings and label names, the convert CLI, and
conversion errors. Small configs (hidden 32, 2 layers) on CPU."""

import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from official_fixtures import load_fixture, rel_err
from test_text_models import TOL, fixture_entries, padded_batch, random_variables

from sot_jax import checkpoints, convert
from sot_jax.errors import UserError
from sot_jax.models import text_heads
from sot_jax.models.hf_conversion import from_hf
from sot_jax.models.text import create_text_model


def _torch_inputs(torch, ids, mask, types):
    inputs = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
    return inputs if types is None else {**inputs, "token_type_ids": torch.tensor(types)}


def _write_checkpoint(directory, config: dict, state: dict) -> str:
    from safetensors.numpy import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, directory / "model.safetensors")
    return str(directory)


def _trunk(config: dict) -> dict:
    return {"vocab_size": config["vocab_size"], "hidden_size": config["hidden_size"],
            "num_layers": config["num_hidden_layers"], "num_heads": config["num_attention_heads"],
            "intermediate_size": config["intermediate_size"],
            "max_position_embeddings": config["max_position_embeddings"]}  # fmt: skip


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def transformers(torch):
    return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def safetensors_numpy():
    return pytest.importorskip("safetensors.numpy")


def randomized(model, torch):
    """Perturb every weight (N(0, 0.2)) so LayerNorm, biases and the activation all matter."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return model.eval()


HF_CASES = {
    # family: (HF class, its config, the attribute holding the base model; None: the class is the base model)
    "bert": (
        "BertForSequenceClassification",
        lambda hf: hf.BertConfig(
            vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=16, num_labels=3,
        ),
        "bert",
    ),
    "roberta": (
        "RobertaForSequenceClassification",
        lambda hf: hf.RobertaConfig(
            vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=16, type_vocab_size=1, num_labels=3,
        ),
        "roberta",
    ),
    "gpt": (
        "OpenAIGPTModel",
        lambda hf: hf.OpenAIGPTConfig(vocab_size=99, n_embd=32, n_layer=2, n_head=2, n_positions=16),
        None,
    ),
    "gpt2": (
        "GPT2ForSequenceClassification",
        lambda hf: hf.GPT2Config(
            vocab_size=99, n_embd=32, n_layer=2, n_head=2, n_positions=16, num_labels=3, pad_token_id=0,
            bos_token_id=None, eos_token_id=None,
        ),
        "transformer",
    ),
}  # fmt: skip


@pytest.mark.parametrize("family", list(HF_CASES))
def test_matches_hf(family, tmp_path, torch, transformers):
    """from_hf on a save_pretrained directory reproduces HF's hidden states (real positions of a padded batch) and
    logits; GPT-1 is the bare OpenAIGPTModel, so its `score` head is fresh and read at the last real token."""
    class_name, make_config, base = HF_CASES[family]
    hf = randomized(getattr(transformers, class_name)(make_config(transformers)), torch)
    hf.save_pretrained(tmp_path)
    pad_id = {"roberta": 1}.get(family, 0)
    ids, mask, types = padded_batch(pad_id, types=family == "bert")
    with torch.no_grad():
        body = hf if base is None else getattr(hf, base)
        hidden_hf = body(**_torch_inputs(torch, ids, mask, types)).last_hidden_state.numpy()
        logits_hf = None if base is None else hf(**_torch_inputs(torch, ids, mask, types)).logits.numpy()

    model, variables, metadata = from_hf(str(tmp_path))
    assert metadata["model"] == {"bert": "bert_base", "roberta": "roberta_base"}.get(family, family)
    assert metadata["fresh"] == ([] if base else ["score"])
    inputs = {"attention_mask": jnp.asarray(mask), "token_type_ids": None if types is None else jnp.asarray(types)}
    with jax.default_matmul_precision("highest"):
        hidden = model.apply(variables, jnp.asarray(ids), **inputs, method="encode")
        logits = model.apply(variables, jnp.asarray(ids), **inputs, train=False)
    real = mask.astype(bool)
    assert rel_err(np.asarray(hidden)[real], hidden_hf[real]) < TOL
    assert logits.dtype == jnp.float32 and logits.shape == (3, 3 if base else 2)
    if logits_hf is None:  # the fresh score head reads the last real token
        last = hidden_hf[np.arange(3), mask.sum(1) - 1]
        logits_hf = last @ np.asarray(variables["params"]["classifier"]["score"]["kernel"])
    assert rel_err(logits, logits_hf) < TOL


def test_bert_legacy_bin_without_classifier(tmp_path, torch, transformers):
    """A bare BertModel as pytorch_model.bin with legacy gamma/beta names, a stale position_ids buffer and a
    pretraining head: the trunk and pooler load, the classifier is fresh, the extras are ignored and reported."""
    config = HF_CASES["bert"][1](transformers)
    hf = randomized(transformers.BertModel(config), torch)
    state = {}
    for key, value in hf.state_dict().items():
        if "LayerNorm" in key:
            key = key.replace(".weight", ".gamma").replace(".bias", ".beta")
        state[key] = value
    state["embeddings.position_ids"] = torch.arange(16)[None]
    state["cls.predictions.bias"] = torch.zeros(99)
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(config.to_json_string())

    model, variables, metadata = from_hf(str(tmp_path), "bert_base", num_classes=4)
    assert metadata["fresh"] == ["classifier"] and metadata["num_classes"] == 4
    assert metadata["ignored_keys"] == ["cls.predictions.bias"]  # integer buffers are not weights
    pooler = variables["params"]["classifier"]["pooler"]["kernel"]
    np.testing.assert_array_equal(pooler, hf.pooler.dense.weight.detach().numpy().T)
    ids, mask, _ = padded_batch(0)
    with torch.no_grad():
        expected = hf(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    with jax.default_matmul_precision("highest"):
        hidden = model.apply(variables, jnp.asarray(ids), attention_mask=jnp.asarray(mask), method="encode")
    assert rel_err(np.asarray(hidden)[mask == 1], expected[mask == 1]) < TOL
    rebuilt = create_text_model(metadata["model"], metadata["num_classes"], **metadata["overrides"])
    assert rebuilt == model


def test_conversion_errors(tmp_path, transformers, safetensors_numpy):
    config = json.loads(HF_CASES["bert"][1](transformers).to_json_string())
    hf = transformers.BertForSequenceClassification(transformers.BertConfig(**config))
    state = {k: v.numpy() for k, v in hf.state_dict().items()}
    broken = dict(state)
    del broken["bert.encoder.layer.1.output.dense.bias"]
    broken["bert.encoder.layer.2.output.dense.bias"] = np.zeros(32, np.float32)
    broken["bert.embeddings.word_embeddings.weight"] = np.zeros((98, 32), np.float32)
    with pytest.raises(UserError) as error:
        from_hf(_write_checkpoint(tmp_path / "broken", config, broken), "bert_base_sot")
    message = str(error.value)
    assert "1 missing key(s): encoder.layer.1.output.dense.bias" in message
    assert "1 unexpected key(s): encoder.layer.2.output.dense.bias" in message
    assert "embeddings.word_embeddings.weight: checkpoint (98, 32), model needs (99, 32)" in message
    # A classifier of another size is named too.
    with pytest.raises(UserError, match=r"classifier.weight: checkpoint \(3, 32\), model needs \(5, 32\)"):
        from_hf(_write_checkpoint(tmp_path / "ok", config, state), num_classes=5)

    # Sharded safetensors (model.safetensors.index.json) load like one file.
    sharded = tmp_path / "sharded"
    keys = sorted(state)
    _write_checkpoint(sharded, config, {k: state[k] for k in keys[:10]})
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    safetensors_numpy.save_file({k: state[k] for k in keys[10:]}, sharded / "model-00002-of-00002.safetensors")
    weight_map = {k: f"model-0000{1 + (i >= 10)}-of-00002.safetensors" for i, k in enumerate(keys)}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _, variables, metadata = from_hf(str(sharded))
    assert metadata["fresh"] == [] and metadata["num_classes"] == 3
    np.testing.assert_array_equal(
        variables["params"]["classifier"]["classifier"]["kernel"], state["classifier.weight"].T
    )

    gpt2 = transformers.GPT2Model(HF_CASES["gpt2"][1](transformers))
    gpt2_dir = tmp_path / "gpt2"
    gpt2.save_pretrained(gpt2_dir)
    with pytest.raises(UserError, match="holds a gpt2 checkpoint, not bert .*use gpt2, gpt2_sot"):
        from_hf(str(gpt2_dir), "bert_base")
    gpt2_state = {k: v.numpy() for k, v in gpt2.state_dict().items()}
    with pytest.raises(UserError, match="config.json says bert but the weights are a gpt2 model's"):
        from_hf(_write_checkpoint(tmp_path / "mixed", config, gpt2_state))
    with pytest.raises(UserError, match="no config.json"):
        from_hf(str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="'t5' model; supported model_type: bert, roberta, openai-gpt, gpt2"):
        from_hf(_write_checkpoint(tmp_path / "t5", {**config, "model_type": "t5"}, state))


def test_bert_sot_matches_official_end_to_end(tmp_path, safetensors_numpy):
    """A BertModel with the official head under `bert.pooler.` (as the official fork names it), read by from_hf:
    the same logits on a padded batch (padding counted as word tokens, as the official code does)."""
    fixture = load_fixture("text_head_official.npz")
    state = fixture_entries(fixture, "bert/sd/")
    directory = _write_checkpoint(tmp_path, json.loads(str(fixture["bert/config"])), state)
    model, variables, metadata = from_hf(directory, "bert_base_sot")
    assert metadata["fresh"] == [] and metadata["num_classes"] == 3
    inputs = {k: jnp.asarray(fixture[f"bert/{k}"]) for k in ("attention_mask", "token_type_ids")}
    with jax.default_matmul_precision("highest"):
        logits = model.apply(variables, jnp.asarray(fixture["bert/input_ids"]), **inputs, train=False)
        assert rel_err(logits, fixture["bert/logits"]) < TOL
        # The second-order branch is a real part of the logits, so a wrong one could not pass.
        no_visual = jax.tree.map(jnp.zeros_like, variables["params"]["classifier"]["visual_fc"])
        params = {**variables["params"], "classifier": {**variables["params"]["classifier"], "visual_fc": no_visual}}
        cls_only = model.apply({**variables, "params": params}, jnp.asarray(fixture["bert/input_ids"]), **inputs)
        assert rel_err(cls_only, fixture["bert/logits"]) > 0.05
        masked = model.clone(mask_padding=True).apply(variables, jnp.asarray(fixture["bert/input_ids"]), **inputs)
        assert rel_err(masked, fixture["bert/logits"]) > 1e-3  # padding does count in the official head


def test_convert_cli_writes_a_checkpoint_that_loads_with_hf_logits(tmp_path, torch, transformers):
    from sot_jax import convert

    class_name, make_config, _ = HF_CASES["bert"]
    hf = randomized(getattr(transformers, class_name)(make_config(transformers)), torch)
    hf.save_pretrained(tmp_path / "hf")
    ids, mask, types = padded_batch(0, types=True)
    with torch.no_grad():
        expected = hf(**_torch_inputs(torch, ids, mask, types)).logits.numpy()
    convert.main(["--model", "bert_base", "--checkpoint", str(tmp_path / "hf"), "--output", str(tmp_path / "out")])
    model, variables, metadata = checkpoints.load_model(tmp_path / "out")
    assert metadata["model"] == "bert_base" and metadata["source"] == str(tmp_path / "hf")
    with jax.default_matmul_precision("highest"):
        inputs = {"attention_mask": jnp.asarray(mask), "token_type_ids": jnp.asarray(types)}
        logits = model.apply(variables, jnp.asarray(ids), **inputs)
    assert rel_err(logits, expected) < TOL
    with pytest.raises(SystemExit, match="error: .*gpt2"):  # another architecture's checkpoint is refused
        convert.main(["--model", "gpt2", "--checkpoint", str(tmp_path / "hf"), "--output", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_official_fork_head_settings_and_label_names_convert(tmp_path, transformers, safetensors_numpy):
    """A checkpoint whose config.json carries the official fork's MGCrP_q / MGCrP_k / MGCrP_dp (one fine-tuned per
    task by the official code) converts into a head of that shape and dropout, with its classes' names; head
    options given to the converter take precedence, trunk options are refused (config.json decides them)."""
    config = {**json.loads(HF_CASES["bert"][1](transformers).to_json_string()), "MGCrP_q": 24, "MGCrP_k": 8,
              "MGCrP_dp": 0.5, "id2label": {"0": "contradiction", "1": "entailment", "2": "neutral"}}  # fmt: skip
    model = create_text_model("bert_base_sot", 3, **_trunk(config), sot_q=24, sot_k=8)
    hf = transformers.BertModel(transformers.BertConfig(**config))
    state = {f"bert.{k}": v.numpy() for k, v in hf.state_dict().items()}
    head = random_variables(model, *padded_batch(0)[:2])
    keys = {"kernel": "weight", "scale": "weight", "bias": "bias", "svpn_start": "weight", "mean": "running_mean",
            "var": "running_var"}  # fmt: skip
    for collection in ("params", "batch_stats"):  # the official head's weights, in the fork's layout
        for path, value in flax.traverse_util.flatten_dict(head[collection]["classifier"]).items():
            value = np.asarray(value)
            if path[-1] == "kernel":  # Linear (out, in); the projections are 1×1 Conv2d (out, in, 1, 1)
                value = value.T if path[0].endswith("_fc") else value.T[..., None, None]
            state[f"bert.{text_heads.OFFICIAL_KEYS[path[:-1]]}.{keys[path[-1]]}"] = value
    directory = _write_checkpoint(tmp_path / "official", config, state)
    converted, variables, metadata = from_hf(directory, "bert_base_sot")
    assert metadata["overrides"]["sot_q"] == 24 and metadata["overrides"]["head_dropout"] == 0.5
    assert converted.head_config["q"] == 24 and converted.head_config["k"] == 8
    assert converted.head_config["dropout"] == 0.5 and metadata["fresh"] == []
    assert variables["params"]["classifier"]["conv_a"]["kernel"].shape == (32, 24)
    assert metadata["label_names"] == ["contradiction", "entailment", "neutral"]
    with pytest.raises(UserError, match=r"conv_dr_block.0.0.weight: checkpoint \(24, 32, 1, 1\), model needs \(12"):
        from_hf(directory, "bert_base_sot", sot_q=12)  # an explicit option wins, and must fit the weights
    with pytest.raises(UserError, match="num_layers: a HF checkpoint's architecture comes from its config.json"):
        from_hf(directory, "bert_base_sot", num_layers=1)
    _, _, plain = from_hf(_write_checkpoint(tmp_path / "plain", {**config, "id2label": {"0": "LABEL_0"}}, state))
    assert plain["label_names"] is None  # HF's placeholder names carry no meaning
    # The converter's options: the same head given on the command line; head options for a vision model refused.
    del config["MGCrP_q"], config["MGCrP_k"], config["MGCrP_dp"]
    bare = _write_checkpoint(tmp_path / "bare", config, state)
    convert.main(["--model", "bert_base_sot", "--checkpoint", bare, "--output", str(tmp_path / "out"), "--sot-q",
                  "24", "--sot-k", "8", "--head-dropout", "0.5"])  # fmt: skip
    written = json.loads((tmp_path / "out" / "sot_jax.json").read_text())
    assert {k: written["overrides"][k] for k in ("sot_q", "sot_k", "head_dropout")} == {"sot_q": 24, "sot_k": 8,
                                                                                         "head_dropout": 0.5}
    with pytest.raises(SystemExit, match="--sot-q, --sot-k and --head-dropout apply to the text models"):
        convert.main(["--model", "sot_small", "--checkpoint", bare, "--output", str(tmp_path / "v"), "--sot-q", "8"])
