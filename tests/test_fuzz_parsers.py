"""The parsers of params.json, config.json, manifest.json and recipes raise only the project's errors."""
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_mobile.core.errors import LlamaMobileError

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
PARAMS_KEYS = ["dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim_multiplier",
               "norm_eps", "rope_theta", "use_scaled_rope"]
CONFIG_KEYS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "intermediate_size", "vocab_size", "rope_theta", "rms_norm_eps", "tie_word_embeddings",
               "rope_scaling", "model_type", "head_dim", "llama_mobile", "eos_token_id"]
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def objects_over(keys):
    return st.dictionaries(st.sampled_from(keys), JSON_VALUES | st.integers(1, 4096), max_size=len(keys))


def only_project_errors(call):
    try:
        call()
    except LlamaMobileError:
        pass


@FUZZ
@given(objects_over(PARAMS_KEYS) | JSON_VALUES)
def test_params_json(tmp_path, data):
    from llama_mobile.export.meta_loader import architecture_from_params

    path = tmp_path / "params.json"
    path.write_text(json.dumps(data))
    only_project_errors(lambda: architecture_from_params(path))


@FUZZ
@given(objects_over(CONFIG_KEYS) | JSON_VALUES)
def test_config_json(tmp_path, data):
    from llama_mobile.export.hf_loader import architecture_from_config

    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    only_project_errors(lambda: architecture_from_config(path))


@FUZZ
@given(st.binary(max_size=64))
def test_params_json_bytes(tmp_path, raw):
    from llama_mobile.export.meta_loader import architecture_from_params

    path = tmp_path / "params.json"
    path.write_bytes(raw)
    only_project_errors(lambda: architecture_from_params(path))


@FUZZ
@given(st.dictionaries(st.sampled_from(["name", "summary", "version", "dtype", "targets", "linear", "embedding",
                                        "output", "overrides", "thresholds", "extra"]),
                       JSON_VALUES | objects_over(["scheme", "group_size", "symmetric", "algorithm", "pattern",
                                                   "min_top1"]), max_size=8))
def test_recipe(data):
    from llama_mobile.quantize.recipe import parse_recipe

    only_project_errors(lambda: parse_recipe(data, "fuzz.toml"))


@FUZZ
@given(JSON_VALUES | objects_over(["format", "schema_version", "files", "tool", "model", "runtime"]))
def test_manifest(tmp_path, data):
    from llama_mobile.core.manifest import verify_bundle

    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    if isinstance(data, dict) and data:
        data.setdefault("format", "llama-mobile-bundle")
        data.setdefault("schema_version", 1)
    (bundle / "manifest.json").write_text(json.dumps(data))
    only_project_errors(lambda: verify_bundle(bundle))
