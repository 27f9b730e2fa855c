"""Hostile and careless input files (issue 19): every file a user hands the tool, with any content, ends
in the project's one-line error with its documented exit code; checks cannot pass vacuously or hang.

Each case records (exit code, error class); `HOSTILE_CASES` counts them for the issue's report."""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from llama_mobile.core.errors import (
    CheckpointError,
    ConfigError,
    LlamaMobileError,
    ResourceError,
    UsageError,
)
from llama_mobile.export.checkpoint import load_checkpoint
from tests.checkpoints import TINY, random_state_dict, write_hf

NON_UTF8 = b"\xff\xfe\x80 not utf-8 \xc3\x28"


def expect(error: type[LlamaMobileError], call, *, within: float = 20.0, match: str | None = None):
    """The call fails with `error` (one line, a documented exit code) and does so promptly."""
    started = time.monotonic()
    with pytest.raises(error) as info:
        call()
    assert time.monotonic() - started < within
    message = str(info.value)
    assert "\n" not in message, message
    assert info.value.exit_code in (2, 3, 4, 5, 9, 10, 11)
    if match:
        assert match in message, message
    return info.value


# ---------------------------------------------------------------------------------------------------------------
# Meta: params.json and consolidated.00.pth

@pytest.fixture()
def meta(tmp_path, tiny_meta) -> Path:
    folder = tmp_path / "meta"
    shutil.copytree(tiny_meta, folder)
    return folder


def save_pth(folder: Path, state: dict) -> None:
    torch.save(state, folder / "consolidated.00.pth")


def edit_params(folder: Path, **changes) -> None:
    params = json.loads((folder / "params.json").read_text())
    params.update(changes)
    (folder / "params.json").write_text(json.dumps(params))


def test_empty_pth_is_a_checkpoint_error(meta):
    (meta / "consolidated.00.pth").write_bytes(b"")
    expect(CheckpointError, lambda: load_checkpoint("llama", meta), match="consolidated.00.pth")


def test_pth_that_is_a_folder(meta):
    (meta / "consolidated.00.pth").unlink()
    (meta / "consolidated.00.pth").mkdir()
    expect(CheckpointError, lambda: load_checkpoint("llama", meta), match="consolidated.00.pth")


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.int64, torch.bool, torch.float64,
                                   torch.int8, torch.complex64])
def test_weights_of_an_unsupported_dtype_are_refused_by_name(meta, tiny_state, dtype):
    state = {k: v.clone() for k, v in tiny_state.items()}
    state["layers.1.feed_forward.w2.weight"] = state["layers.1.feed_forward.w2.weight"].to(dtype)
    save_pth(meta, state)
    expect(CheckpointError, lambda: load_checkpoint("llama", meta), match="layers.1.feed_forward.w2.weight")


def test_complex_weights_full_of_nan_are_refused(meta, tiny_state):
    state = dict(tiny_state)
    state["norm.weight"] = torch.full(state["norm.weight"].shape, complex(math.nan, math.nan), dtype=torch.complex64)
    save_pth(meta, state)
    expect(CheckpointError, lambda: load_checkpoint("llama", meta), match="norm.weight")


def test_quantized_tensor_is_refused(meta, tiny_state):
    state = dict(tiny_state)
    state["norm.weight"] = torch.quantize_per_tensor(state["norm.weight"], 0.1, 0, torch.qint8)
    save_pth(meta, state)
    expect(CheckpointError, lambda: load_checkpoint("llama", meta))


def test_meta_device_tensor_is_refused(meta, tiny_state):
    state = dict(tiny_state)
    state["norm.weight"] = torch.empty(state["norm.weight"].shape, device="meta")
    save_pth(meta, state)
    expect(CheckpointError, lambda: load_checkpoint("llama", meta))


def test_integer_dict_keys_are_refused(meta, tiny_state):
    state = dict(tiny_state)
    state[7] = state.pop("norm.weight")
    save_pth(meta, state)
    expect(CheckpointError, lambda: load_checkpoint("llama", meta))


def test_missing_embedding_is_named(meta, tiny_state):
    state = {k: v for k, v in tiny_state.items() if k != "tok_embeddings.weight"}
    save_pth(meta, state)
    expect(CheckpointError, lambda: load_checkpoint("llama", meta), match="tok_embeddings.weight")


@pytest.mark.parametrize("text", ['{"dim": NaN}', '{"dim": 64, "norm_eps": Infinity}', '{"rope_theta": -Infinity}',
                                  '{"dim": ' + "7" * 5000 + "}", '{"norm_eps": 1' + "0" * 5000 + '.5}',
                                  "[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000])
def test_hostile_json_numbers_and_nesting(meta, text):
    (meta / "params.json").write_text(text)
    expect(ConfigError, lambda: load_checkpoint("llama", meta), match="params.json")


def test_params_json_that_is_a_folder(meta):
    (meta / "params.json").unlink()
    (meta / "params.json").mkdir()
    expect(LlamaMobileError, lambda: load_checkpoint("llama", meta), match="params.json")


def test_memory_bomb_params_is_refused_at_once(meta):
    """300 bytes claiming 100,000,000 layers: refused from the config, before any allocation."""
    edit_params(meta, n_layers=100_000_000)
    assert (meta / "params.json").stat().st_size < 400
    expect(ConfigError, lambda: load_checkpoint("llama", meta), within=5, match="n_layers")


@pytest.mark.parametrize("field,value", [("dim", 1 << 24), ("vocab_size", 1 << 30), ("n_heads", 1 << 20),
                                         ("n_kv_heads", 1 << 20), ("multiple_of", 1 << 40),
                                         ("ffn_dim_multiplier", 1e12), ("ffn_dim_multiplier", -3.0)])
def test_oversized_or_negative_params_fields(meta, field, value):
    edit_params(meta, **{field: value})
    expect(ConfigError, lambda: load_checkpoint("llama", meta), within=5)


def test_shapes_within_bounds_are_priced_before_any_tensor_is_read(meta):
    """A config within the bounds but too big for the machine: the preflight runs before the weights load
    (the .pth here is garbage, so reaching it would be a CheckpointError instead)."""
    edit_params(meta, n_layers=1024, dim=65536, n_heads=512, n_kv_heads=512, vocab_size=1 << 20)
    (meta / "consolidated.00.pth").write_bytes(b"garbage")
    priced = []

    def preflight(arch):
        priced.append(arch)
        raise ResourceError("too big for this machine")

    expect(ResourceError, lambda: load_checkpoint("llama", meta, preflight=preflight))
    assert priced and priced[0].n_layers == 1024


def test_export_prices_a_generic_config_before_loading(tmp_path, meta):
    from llama_mobile.jobs.export_job import ExportRequest, run_export

    edit_params(meta, n_layers=1024, dim=65536, n_heads=512, n_kv_heads=512, vocab_size=1 << 20)
    (meta / "consolidated.00.pth").write_bytes(b"garbage")
    request = ExportRequest(model="llama", checkpoint=meta, recipe="fp32", target="xnnpack",
                            output_dir=tmp_path / "out", context=64)
    expect(ResourceError, lambda: run_export(request), match="GiB")


def test_architecture_bounds_are_documented_and_enforced():
    from llama_mobile.core.architecture import BOUNDS

    arch = TINY.replace(n_layers=BOUNDS["n_layers"] + 1)
    assert any("n_layers" in p for p in arch.problems())
    assert not TINY.problems()
    assert TINY.replace(rope_theta=math.nan).problems() and TINY.replace(norm_eps=math.nan).problems()
    assert TINY.replace(max_position=1 << 40).problems()


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face: config.json, the shard index, safetensors

@pytest.fixture()
def hf(tmp_path, tiny_hf) -> Path:
    folder = tmp_path / "hf"
    shutil.copytree(tiny_hf, folder)
    return folder


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("eos", ["</s>", [1.5], ["2"], [True], 2.0, {"id": 2}, [1 << 40], -1])
def test_non_integer_eos_token_id_is_a_config_error(hf, eos):
    edit_config(hf, eos_token_id=eos)
    expect(ConfigError, lambda: load_checkpoint("llama", hf), match="eos_token_id")


@pytest.mark.parametrize("bos", ["<s>", 1.5, -3])
def test_non_integer_bos_token_id_is_a_config_error(hf, bos):
    edit_config(hf, bos_token_id=bos)
    expect(ConfigError, lambda: load_checkpoint("llama", hf), match="bos_token_id")


def test_memory_bomb_config_is_refused_at_once(hf):
    edit_config(hf, num_hidden_layers=100_000_000)
    expect(ConfigError, lambda: load_checkpoint("llama", hf), within=5, match="n_layers")


@pytest.mark.parametrize("changes", [{"hidden_size": 1 << 30}, {"intermediate_size": 1 << 40},
                                     {"max_position_embeddings": 1 << 50},
                                     {"llama_mobile": {"output_token_ids": list(range(400))}},
                                     {"llama_mobile": {"layer_ffn_hidden": [1 << 40, 1]}},
                                     {"rope_scaling": {"rope_type": "llama3", "factor": float("inf"),
                                                       "low_freq_factor": 1, "high_freq_factor": 4,
                                                       "original_max_position_embeddings": 1 << 60}},
                                     {"rope_scaling": {"rope_type": "llama3", "factor": "x"}},
                                     {"rope_scaling": {"rope_type": ["llama3"]}}])
def test_config_fields_out_of_bounds(hf, changes):
    edit_config(hf, **changes)
    expect(ConfigError, lambda: load_checkpoint("llama", hf), within=5)


def test_config_json_nan_and_deep_nesting(hf):
    (hf / "config.json").write_text('{"hidden_size": NaN, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    expect(ConfigError, lambda: load_checkpoint("llama", hf), match="config.json")


@pytest.mark.parametrize("index", [{"weight_map": ["model.safetensors"]}, {"weight_map": {"a": 5}},
                                   {"weight_map": {"a": None}}, {"weight_map": "model.safetensors"},
                                   {"weight_map": {"a": "../../../etc/passwd"}}, {"weight_map": {"a": "/etc/passwd"}},
                                   {"weight_map": {"a": ""}}, {"no_map": 1}, [1, 2], "NaN"])
def test_malformed_shard_index(hf, index):
    text = index if isinstance(index, str) else json.dumps(index)
    (hf / "model.safetensors.index.json").write_text(text)
    expect(CheckpointError, lambda: load_checkpoint("llama", hf), match="model.safetensors.index.json")


def test_shard_index_not_utf8(hf):
    (hf / "model.safetensors.index.json").write_bytes(NON_UTF8)
    expect(CheckpointError, lambda: load_checkpoint("llama", hf), match="model.safetensors.index.json")


def test_safetensors_that_is_a_folder(hf):
    (hf / "model.safetensors").unlink()
    (hf / "model.safetensors").mkdir()
    expect(CheckpointError, lambda: load_checkpoint("llama", hf), match="model.safetensors")


def test_config_json_that_is_a_folder(hf):
    (hf / "config.json").unlink()
    (hf / "config.json").mkdir()
    expect(LlamaMobileError, lambda: load_checkpoint("llama", hf), match="config.json")


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.float64, torch.float8_e4m3fn, torch.uint8])
def test_safetensors_of_an_unsupported_dtype(tmp_path, tiny_state, dtype):
    state = dict(tiny_state)
    folder = write_hf(tmp_path / "hf", TINY, state)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"].to(dtype)
    save_file(tensors, str(folder / "model.safetensors"))
    expect(CheckpointError, lambda: load_checkpoint("llama", folder), match="model.layers.0.mlp.up_proj.weight")


# ---------------------------------------------------------------------------------------------------------------
# GGUF headers

_TOP = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output"}
_BLOCK = {"attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v", "attention.wo": "attn_output",
          "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up",
          "attention_norm": "attn_norm", "ffn_norm": "ffn_norm"}


def _gguf_name(meta_name: str) -> str:
    """llama.cpp's tensor names (spelled here so the test does not depend on the writer's module layout)."""
    stem = meta_name.removesuffix(".weight")
    if stem in _TOP:
        return _TOP[stem] + ".weight"
    _, layer, rest = stem.split(".", 2)
    return f"blk.{layer}.{_BLOCK[rest]}.weight"


def write_tiny_gguf(path: Path, *, fields: dict | None = None, drop: tuple[str, ...] = (),
                    tensor_type: str | None = None, bad_tensor: str = "blk.1.ffn_down.weight") -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    values = {"llama.embedding_length": TINY.dim, "llama.block_count": TINY.n_layers,
              "llama.attention.head_count": TINY.n_heads, "llama.attention.head_count_kv": TINY.n_kv_heads,
              "llama.feed_forward_length": TINY.ffn_hidden, "llama.context_length": TINY.max_position,
              "llama.rope.freq_base": float(TINY.rope_theta), "llama.vocab_size": TINY.vocab_size,
              "llama.attention.layer_norm_rms_epsilon": 1e-5}
    values.update(fields or {})
    for key, value in values.items():
        if key in drop:
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value) if 0 <= value < 1 << 32 else writer.add_int64(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    for name, tensor in random_state_dict(TINY).items():
        gname = _gguf_name(name)
        data = tensor.numpy().astype(np.float32)
        if gname == bad_tensor and tensor_type is not None:
            kind = getattr(gguf.GGMLQuantizationType, tensor_type)
            data = data.astype({"F64": np.float64, "I32": np.int32, "I8": np.int8, "I16": np.int16,
                                "I64": np.int64}[tensor_type])
            writer.add_tensor(gname, data, raw_dtype=kind)
        else:
            writer.add_tensor(gname, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("fields", [{"llama.attention.head_count": 0}, {"llama.attention.head_count_kv": 0},
                                    {"llama.embedding_length": "sixty-four"}, {"llama.block_count": 1.5},
                                    {"llama.block_count": 100_000_000}, {"llama.embedding_length": -64},
                                    {"llama.feed_forward_length": [1, 2]}, {"llama.rope.freq_base": "x"},
                                    {"llama.rope.freq_base": math.nan}, {"llama.context_length": "long"},
                                    {"llama.attention.layer_norm_rms_epsilon": "tiny"},
                                    {"llama.vocab_size": 1 << 40}, {"tokenizer.ggml.eos_token_id": "eos"},
                                    {"tokenizer.ggml.bos_token_id": -5}, {"general.architecture": 5}])
def test_gguf_header_with_hostile_fields(tmp_path, fields):
    path = write_tiny_gguf(tmp_path / "m.gguf", fields=fields)
    expect(ConfigError, lambda: load_checkpoint("llama", path), within=10, match="m.gguf")


@pytest.mark.parametrize("kind", ["F64", "I32", "I8", "I64"])
def test_gguf_tensor_of_an_unsupported_type(tmp_path, kind):
    path = write_tiny_gguf(tmp_path / "m.gguf", tensor_type=kind)
    expect(CheckpointError, lambda: load_checkpoint("llama", path), match="blk.1.ffn_down.weight")


def test_gguf_that_is_a_folder_named_gguf(tmp_path):
    (tmp_path / "x.gguf").mkdir()
    expect(CheckpointError, lambda: load_checkpoint("llama", tmp_path / "x.gguf"))


def test_empty_gguf(tmp_path):
    (tmp_path / "e.gguf").write_bytes(b"")
    expect(CheckpointError, lambda: load_checkpoint("llama", tmp_path / "e.gguf"), match="e.gguf")


# ---------------------------------------------------------------------------------------------------------------
# Recipes

def recipe_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text('name = "r"\n' + body)
    return path


def test_recipe_path_that_is_a_folder(tmp_path):
    from llama_mobile.quantize.recipe import load_recipe

    (tmp_path / "mine.toml").mkdir()
    expect(UsageError, lambda: load_recipe(str(tmp_path / "mine.toml")))
    expect(UsageError, lambda: load_recipe(str(tmp_path)))


@pytest.mark.parametrize("pattern", ["(.*.*)*X", "(a+)+$", "(x|x)*y", ".*" * 40 + "X", "(?:(?:.*)*)*Z",
                                     "([a-z]*)*\\d*(.*)*!"])
def test_catastrophic_override_patterns_cannot_hang(tmp_path, pattern):
    """Refused, or matched in linear time: never minutes of backtracking in plan/export."""
    from llama_mobile.quantize.recipe import read_recipe_file

    body = f"[linear]\nscheme = \"8da4w\"\ngroup_size = 32\n[[overrides]]\npattern = '{pattern}'\nscheme = \"8w\"\n"
    started = time.monotonic()
    try:
        recipe = read_recipe_file(recipe_file(tmp_path, body))
    except ConfigError:
        return
    names = [f"layers.{i}.{part}" for i in range(64) for part in
             ("attention.wq", "attention.wk", "attention.wv", "attention.wo", "feed_forward.w1", "feed_forward.w2",
              "feed_forward.w3")] + ["output", "x" * 60, "layers.1." + "a" * 50]
    for name in names:
        recipe.quant_for(name)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("pattern", ["a{1000000000}", "a{4294967296}", "(" * 500 + "a" + ")" * 500,
                                     "(" * 10_000 + ")" * 10_000, "x" * 5000, "(?P<n>a)(?P=n)", "(?=a)a", "\\1",
                                     "[", "a{2,1}", "(?i)a", "\\p{L}"])
def test_override_patterns_that_overflow_nest_or_use_unsupported_syntax(tmp_path, pattern):
    from llama_mobile.quantize.recipe import parse_recipe

    data = {"name": "r", "overrides": [{"pattern": pattern, "scheme": "8w"}]}
    expect(ConfigError, lambda: parse_recipe(data, "r.toml"), within=5, match="overrides.0")


def test_shipped_override_patterns_match_as_before():
    from llama_mobile.quantize.recipe import load_recipe

    recipe = load_recipe("8da4w-mixed")
    assert recipe.quant_for("layers.0.attention.wq").scheme == recipe.overrides[0].quant.scheme
    assert recipe.quant_for("layers.0.feed_forward.w2") == recipe.overrides[0].quant
    assert recipe.quant_for("layers.0.feed_forward.w1") == recipe.linear
    assert recipe.quant_for("layers.12.attention.wv") == recipe.overrides[1].quant
    assert recipe.quant_for("layers.12.attention.wq") == recipe.linear
    assert recipe.quant_for("output") == recipe.output


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-0.5"])
def test_thresholds_must_be_finite(tmp_path, value):
    from llama_mobile.quantize.recipe import read_recipe_file

    path = recipe_file(tmp_path, f"[thresholds]\nmin_top1 = {value}\n")
    expect(ConfigError, lambda: read_recipe_file(path), match="min_top1")


def test_recipe_not_utf8_and_deeply_nested(tmp_path):
    from llama_mobile.quantize.recipe import read_recipe_file

    path = tmp_path / "r.toml"
    path.write_bytes(NON_UTF8)
    expect(ConfigError, lambda: read_recipe_file(path), match="r.toml")
    path.write_text("x = " + "[" * 100_000 + "]" * 100_000)
    expect(ConfigError, lambda: read_recipe_file(path), match="r.toml")


# ---------------------------------------------------------------------------------------------------------------
# validate: the gate cannot pass vacuously; text inputs

class ByteTokenizer:
    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


@pytest.mark.parametrize("text", ["", "abc", "\n"])
def test_gate_over_fewer_positions_than_its_minimum_is_an_error(tmp_path, text):
    from llama_mobile.runtime_harness.parity import eval_token_ids

    path = tmp_path / "t.txt"
    path.write_text(text)
    expect(UsageError, lambda: eval_token_ids(ByteTokenizer(), 256, path, bos_id=0), match="t.txt")
    assert len(eval_token_ids(ByteTokenizer(), 8, None, bos_id=0)) == 8


@pytest.mark.parametrize("make", [lambda p: p.write_bytes(NON_UTF8), lambda p: p.mkdir(), lambda p: None])
def test_validate_text_files_that_cannot_be_read(tmp_path, make):
    from llama_mobile.jobs.validate_job import read_guard_prompts, read_prompts
    from llama_mobile.runtime_harness.parity import eval_token_ids

    path = tmp_path / "input"
    make(path)
    expect(UsageError, lambda: eval_token_ids(ByteTokenizer(), 64, path), match="input")
    expect(UsageError, lambda: read_prompts(path), match="input")
    expect(UsageError, lambda: read_guard_prompts(path), match="input")


@pytest.mark.parametrize("line", ["{", '{"user": 5}', '["a"]', '{"assistant": "x"}', "NaN", '{"user": "a", "assistant": 7}',
                                  "[" * 100_000])
def test_guard_prompts_with_bad_lines(tmp_path, line):
    from llama_mobile.jobs.validate_job import read_guard_prompts

    path = tmp_path / "g.jsonl"
    path.write_text('{"user": "hello"}\n' + line + "\n")
    expect(ConfigError, lambda: read_guard_prompts(path), match="line 2")


@pytest.mark.parametrize("line", ['{"prompt": 5}', '{"prompt": NaN}', "[" * 100_000, '{"prompt": ' + "9" * 5000 + "}"])
def test_prompt_lines_that_are_not_text(tmp_path, line):
    from llama_mobile.jobs.validate_job import read_prompts

    path = tmp_path / "p.jsonl"
    path.write_text(line + "\n")
    expect(ConfigError, lambda: read_prompts(path), match="line 1")


def test_nan_metrics_or_thresholds_cannot_pass_the_gate():
    from llama_mobile.runtime_harness.metrics import ParityMetrics
    from llama_mobile.runtime_harness.parity import gate

    good = ParityMetrics(positions=64, top1_agreement=1.0, top5_overlap=1.0, cosine_mean=1.0, cosine_min=1.0,
                         kl_mean=0.0, kl_p99=0.0, ppl_reference=2.0, ppl_candidate=2.0, ppl_ratio=1.0)
    nan = ParityMetrics(**{**good.to_dict(), "top1_agreement": math.nan, "kl_mean": math.nan})
    assert not gate(nan, {"min_top1": 0.5, "max_kl_mean": 0.5}).passed
    expect(UsageError, lambda: gate(good, {"min_top1": math.nan}))
    expect(UsageError, lambda: gate(good, {"max_kl_mean": math.inf}))


def test_prune_calibration_not_utf8(tmp_path):
    from llama_mobile.jobs.prune_job import text_windows

    path = tmp_path / "calib.txt"
    path.write_bytes(NON_UTF8 * 100)
    expect(UsageError, lambda: text_windows(ByteTokenizer(), path, 16, 0), match="calib.txt")
