"""The parsers of params.json, config.json, manifest.json and recipes raise only the project's errors."""
import json
import shutil
from pathlib import Path

import pytest
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
    from llama_mobile.core.bundle import verify_bundle

    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    if isinstance(data, dict) and data:
        data.setdefault("format", "llama-mobile-bundle")
        data.setdefault("schema_version", 1)
    (bundle / "manifest.json").write_text(json.dumps(data))
    only_project_errors(lambda: verify_bundle(bundle))


# --- Binary headers: mutated real tiny files (issue 19). Whatever the bytes, only the project's errors. ---

BINARY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
MUTATIONS = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6)


def mutated(original: bytes, edits, cut: int | None, header_bytes: int) -> bytes:
    """Byte edits aimed at the first `header_bytes` (where the parsers look), optionally truncated."""
    data = bytearray(original)
    for offset, value in edits:
        data[offset % min(header_bytes, len(data))] = value
    return bytes(data[:cut]) if cut is not None else bytes(data)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    from tests.checkpoints import TINY, random_state_dict, write_hf, write_meta
    from tests.test_hostile_inputs import write_tiny_gguf

    root = tmp_path_factory.mktemp("fuzz")
    state = random_state_dict(TINY.replace(n_layers=1), seed=1)
    arch = TINY.replace(n_layers=1)
    hf = write_hf(root / "hf", arch, state)
    meta = write_meta(root / "meta", arch, state)
    gguf = write_tiny_gguf(root / "tiny.gguf")
    return {"hf": hf, "meta": meta, "gguf": gguf,
            "safetensors": (hf / "model.safetensors").read_bytes(),
            "pth": (meta / "consolidated.00.pth").read_bytes(), "gguf_bytes": gguf.read_bytes()}


def fresh_copy(source: Path, target: Path) -> Path:
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    return target


@BINARY
@given(MUTATIONS, st.none() | st.integers(0, 4096))
def test_safetensors_header_mutations(tmp_path, tiny_files, edits, cut):
    from llama_mobile.export.checkpoint import load_checkpoint

    folder = fresh_copy(tiny_files["hf"], tmp_path / "hf")
    (folder / "model.safetensors").write_bytes(mutated(tiny_files["safetensors"], edits, cut, 2048))
    only_project_errors(lambda: load_checkpoint("llama", folder))


@BINARY
@given(MUTATIONS, st.none() | st.integers(0, 1 << 16))
def test_zip_pth_mutations(tmp_path, tiny_files, edits, cut):
    from llama_mobile.export.checkpoint import load_checkpoint

    folder = fresh_copy(tiny_files["meta"], tmp_path / "meta")
    original = tiny_files["pth"]
    # the zip's local headers at the start and its central directory at the end both get hit
    data = bytearray(mutated(original, edits[: len(edits) // 2 + 1], None, 4096))
    for offset, value in edits[len(edits) // 2 + 1:]:
        data[len(data) - 1 - offset % min(4096, len(data))] = value
    (folder / "consolidated.00.pth").write_bytes(bytes(data[:cut]) if cut is not None else bytes(data))
    only_project_errors(lambda: load_checkpoint("llama", folder))


@BINARY
@given(MUTATIONS, st.none() | st.integers(0, 8192))
def test_gguf_header_mutations(tmp_path, tiny_files, edits, cut):
    from llama_mobile.export.checkpoint import load_checkpoint

    path = tmp_path / "m.gguf"
    path.write_bytes(mutated(tiny_files["gguf_bytes"], edits, cut, 1024))
    only_project_errors(lambda: load_checkpoint("llama", path, preflight=stop_before_tensors))


class _Stop(LlamaMobileError):
    pass


def stop_before_tensors(arch):
    """The header parsed into a valid architecture: enough for a header fuzzer (tensors are another target)."""
    raise _Stop("header accepted")


GGUF_KEYS = ["llama.embedding_length", "llama.block_count", "llama.attention.head_count",
             "llama.attention.head_count_kv", "llama.feed_forward_length", "llama.context_length",
             "llama.rope.freq_base", "llama.vocab_size", "llama.attention.layer_norm_rms_epsilon",
             "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id"]
GGUF_VALUES = (st.integers(-(1 << 40), 1 << 40) | st.floats(allow_nan=True, width=32) | st.text(max_size=6)
               | st.booleans())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(GGUF_KEYS), GGUF_VALUES, max_size=4),
       st.lists(st.sampled_from(GGUF_KEYS), max_size=2))
def test_gguf_header_fields(tmp_path, fields, drop):
    from llama_mobile.export.checkpoint import load_checkpoint
    from tests.test_hostile_inputs import write_tiny_gguf

    path = write_tiny_gguf(tmp_path / "f.gguf", fields=fields, drop=tuple(drop))
    only_project_errors(lambda: load_checkpoint("llama", path, preflight=stop_before_tensors))


# --- Text readers: the shard index, JSONL prompt files, recipe TOML, evaluation texts ---

@FUZZ
@given(JSON_VALUES | st.dictionaries(st.just("weight_map"), JSON_VALUES | st.dictionaries(
    st.text(max_size=6), st.text(max_size=12) | st.integers(), max_size=3)))
def test_shard_index(tmp_path, tiny_files, data):
    from llama_mobile.export.hf_loader import safetensors_files

    folder = fresh_copy(tiny_files["hf"], tmp_path / "hf")
    (folder / "model.safetensors.index.json").write_text(json.dumps(data))
    only_project_errors(lambda: safetensors_files(folder))


TEXT_BYTES = st.binary(max_size=96) | st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.lists(JSON_VALUES.map(json.dumps) | st.text(max_size=24), max_size=4), TEXT_BYTES)
def test_jsonl_prompt_files(tmp_path, lines, raw):
    from llama_mobile.jobs.validate_job import read_guard_prompts, read_prompts

    for content in ("\n".join(lines).encode("utf-8", "surrogatepass"), raw):
        path = tmp_path / "p.jsonl"
        path.write_bytes(content)
        only_project_errors(lambda path=path: read_prompts(path))
        only_project_errors(lambda path=path: read_guard_prompts(path))


@FUZZ
@given(TEXT_BYTES | st.text(alphabet='[]{}=".,\n abc\\', max_size=80).map(str.encode))
def test_recipe_toml_bytes(tmp_path, raw):
    from llama_mobile.quantize.recipe import read_recipe_file

    path = tmp_path / "r.toml"
    path.write_bytes(raw)
    only_project_errors(lambda: read_recipe_file(path))


@FUZZ
@given(st.text(alphabet=r"ab.\d*+?|()[]{},0123456789^-:", max_size=24), st.text(alphabet="ab.0123", max_size=12))
def test_override_patterns(pattern, name):
    """Any pattern: refused with ConfigError, or matched the way Python's re would (on names re finishes fast)."""
    import re

    from llama_mobile.quantize.recipe import parse_recipe

    try:
        recipe = parse_recipe({"name": "r", "overrides": [{"pattern": pattern, "scheme": "8w"}]}, "r.toml")
    except LlamaMobileError:
        return
    expected = re.fullmatch(pattern, name) is not None
    assert (recipe.quant_for(name) == recipe.overrides[0].quant) == expected


@FUZZ
@given(TEXT_BYTES, st.integers(1, 64))
def test_evaluation_text(tmp_path, raw, positions):
    from llama_mobile.runtime_harness.parity import eval_token_ids

    path = tmp_path / "t.txt"
    path.write_bytes(raw)
    encode = type("Bytes", (), {"encode": staticmethod(lambda text: list(text.encode("utf-8")))})
    only_project_errors(lambda: eval_token_ids(encode, positions, path, bos_id=0))
