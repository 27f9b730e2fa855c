import json
import os
import pickle
import shutil

import pytest
import torch

from llama_mobile.core.errors import CheckpointError, ConfigError, UsageError
from llama_mobile.export.checkpoint import load_checkpoint
from tests.checkpoints import TINY, write_hf, write_meta


def test_meta_and_hf_load_to_the_same_weights(tiny_meta, tiny_hf, tiny_state):
    meta = load_checkpoint("llama", tiny_meta)
    hf = load_checkpoint("llama", tiny_hf)
    assert meta.architecture.replace(max_position=0) == hf.architecture.replace(max_position=0)
    assert set(meta.state_dict) == set(hf.state_dict) == set(tiny_state)
    for name, tensor in tiny_state.items():
        expected = tensor.to(torch.bfloat16)
        assert torch.equal(meta.state_dict[name], expected), name
        assert torch.equal(hf.state_dict[name], expected), name
    assert meta.source_format == "meta" and hf.source_format == "hf"
    assert all(len(s.sha256) == 64 for s in meta.sources + hf.sources)


def test_hf_rope_permutation_round_trips():
    from llama_mobile.export.hf_loader import hf_to_meta_rope, meta_to_hf_rope

    w = torch.arange(8 * 3 * 5, dtype=torch.float32).reshape(24, 5)
    assert torch.equal(hf_to_meta_rope(meta_to_hf_rope(w, 4), 4), w)
    assert not torch.equal(meta_to_hf_rope(w, 4), w)


def test_wrong_shape_names_the_tensor(tmp_path, tiny_state):
    state = dict(tiny_state)
    state["layers.1.feed_forward.w2.weight"] = torch.zeros(64, 100)
    folder = write_meta(tmp_path / "m", TINY, state)
    with pytest.raises(CheckpointError, match=r"layers\.1\.feed_forward\.w2\.weight.*\[64, 100\]"):
        load_checkpoint("llama", folder)


def test_missing_key_names_the_tensor(tmp_path, tiny_state):
    state = {k: v for k, v in tiny_state.items() if k != "layers.0.attention.wv.weight"}
    folder = write_meta(tmp_path / "m", TINY, state)
    with pytest.raises(CheckpointError, match=r"missing tensor 'layers\.0\.attention\.wv\.weight'"):
        load_checkpoint("llama", folder)


def test_unexpected_key_is_refused(tmp_path, tiny_state):
    folder = write_meta(tmp_path / "m", TINY, {**tiny_state, "layers.9.extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match="unexpected tensor 'layers.9.extra.weight'"):
        load_checkpoint("llama", folder)


def test_nan_weights_are_refused(tmp_path, tiny_state):
    state = dict(tiny_state)
    state["norm.weight"] = torch.full((64,), float("nan"))
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        load_checkpoint("llama", write_hf(tmp_path / "h", TINY, state))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path, tiny_meta):
    folder = tmp_path / "evil"
    shutil.copytree(tiny_meta, folder)
    marker = tmp_path / "pwned"
    torch.save({"tok_embeddings.weight": _RunsCode(marker)}, folder / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint("llama", folder)
    assert not marker.exists()
    # The legacy (non-zip) pickle format is refused the same way.
    with open(folder / "consolidated.00.pth", "wb") as handle:
        pickle.dump({"tok_embeddings.weight": _RunsCode(marker)}, handle)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint("llama", folder)
    assert not marker.exists()


def test_truncated_files_are_clear_errors(tmp_path, tiny_meta, tiny_hf):
    meta = shutil.copytree(tiny_meta, tmp_path / "meta")
    data = (meta / "consolidated.00.pth").read_bytes()
    (meta / "consolidated.00.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint("llama", meta)
    hf = shutil.copytree(tiny_hf, tmp_path / "hf")
    data = (hf / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint("llama", hf)


def test_params_json_problems_are_reported_together(tmp_path, tiny_meta):
    folder = shutil.copytree(tiny_meta, tmp_path / "m")
    params = json.loads((folder / "params.json").read_text())
    params.pop("n_layers")
    params["dim"] = "sixty-four"
    (folder / "params.json").write_text(json.dumps(params))
    with pytest.raises(ConfigError) as info:
        load_checkpoint("llama", folder)
    assert "missing field 'n_layers'" in str(info.value) and "'dim' must be int" in str(info.value)
    assert "params.json" in str(info.value)


def test_config_json_heads_not_dividing_dim(tmp_path, tiny_hf):
    folder = shutil.copytree(tiny_hf, tmp_path / "h")
    config = json.loads((folder / "config.json").read_text())
    config["num_attention_heads"] = 5
    config["num_key_value_heads"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="n_heads=5 does not divide dim=64"):
        load_checkpoint("llama", folder)


def test_preset_mismatch_is_refused_before_reading_weights(tiny_hf):
    with pytest.raises(CheckpointError, match="does not match the preset"):
        load_checkpoint("llama3.2-1b", tiny_hf)


def test_missing_checkpoint_and_unknown_layout(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint("llama", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither params.json"):
        load_checkpoint("llama", tmp_path / "empty")
    with pytest.raises(UsageError, match="no embedded weights"):
        load_checkpoint("llama3.2-1b", None)


def test_embedded_gguf_loads_with_the_preset_shapes():
    loaded = load_checkpoint("smollm2-135m-instruct", None)
    arch = loaded.architecture
    assert (arch.n_layers, arch.dim, arch.n_heads, arch.n_kv_heads, arch.vocab_size) == (30, 576, 9, 3, 49152)
    assert arch.tied_embeddings and "output.weight" not in loaded.state_dict
    assert loaded.tokenizer_path.name == "tokenizer.json"
    from llama_mobile.core.tokenizer import Tokenizer

    ids = Tokenizer(loaded.tokenizer_path).encode("<|im_start|>user\nHello<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2


def test_truncated_gguf_is_a_clear_error(tmp_path):
    from llama_mobile.export.embedded import embedded_checkpoint

    source = embedded_checkpoint("smollm2-135m-instruct")
    with open(source, "rb") as handle:
        (tmp_path / "cut.gguf").write_bytes(handle.read(1 << 20))
    with pytest.raises(CheckpointError, match="GGUF"):
        load_checkpoint("llama", tmp_path / "cut.gguf")


def test_tokenizer_that_does_not_match_the_model_is_refused(tmp_path, tiny_state):
    from llama_mobile.core.errors import TokenizerError
    from tests.checkpoints import write_tiny_tokenizer_json
    from tests.conftest import export_tiny

    folder = write_hf(tmp_path / "h", TINY, tiny_state)
    write_tiny_tokenizer_json(folder / "tokenizer.json", vocab_size=400)  # the model has 300 rows
    with pytest.raises(TokenizerError, match=r"tokenizer has 3\d\d tokens but the model only 300"):
        export_tiny(folder, tmp_path / "out", "fp32")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
