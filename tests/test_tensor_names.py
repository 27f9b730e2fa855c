"""One table of tensor names (export/tensor_names.py): every direction derived from it, checked against
gguf-py's own map of Meta and Hugging Face names to GGUF's."""
from __future__ import annotations

import gguf
import pytest

from llama_mobile.core.presets import MODEL_PRESETS
from llama_mobile.export.model import expected_shapes
from llama_mobile.export.tensor_names import GGUF, HF, META, MODEL_TENSOR, ROPE_FREQS, WEIGHT, rename
from tests.checkpoints import TINY

ARCHS = {"tiny": TINY, "llama3.2-1b": MODEL_PRESETS["llama3.2-1b"].architecture.replace(tied_embeddings=False)}


@pytest.mark.parametrize("arch", ARCHS.values(), ids=ARCHS.keys())
def test_every_meta_name_maps_to_hf_and_gguf_and_back(arch):
    meta_names = list(expected_shapes(arch))
    assert [name for _, name in META.names(arch.n_layers)] == meta_names  # the table covers the model
    gguf_map = gguf.TensorNameMap(gguf.MODEL_ARCH.LLAMA, arch.n_layers)
    for name in meta_names:
        hf_name, gguf_name = rename(name, META, HF), rename(name, META, GGUF)
        assert rename(hf_name, HF, META) == name and rename(gguf_name, GGUF, META) == name
        assert rename(hf_name, HF, GGUF) == gguf_name and rename(gguf_name, GGUF, HF) == hf_name
        # gguf-py's map (llama.cpp's converter) agrees on both source names
        assert gguf_map.get_name(name.removesuffix(WEIGHT)) + WEIGHT == gguf_name
        assert gguf_map.get_name(hf_name.removesuffix(WEIGHT)) + WEIGHT == gguf_name
    assert len({rename(n, META, HF) for n in meta_names}) == len({rename(n, META, GGUF) for n in meta_names}) \
        == len(meta_names)


def test_hf_and_gguf_names_are_the_usual_ones():
    assert rename("layers.15.attention.wq.weight", META, HF) == "model.layers.15.self_attn.q_proj.weight"
    assert rename("layers.15.feed_forward.w1.weight", META, GGUF) == "blk.15.ffn_gate.weight"
    assert rename("lm_head.weight", HF, META) == "output.weight"
    assert rename("token_embd.weight", GGUF, META) == "tok_embeddings.weight"
    assert ROPE_FREQS == "rope_freqs.weight"


def test_the_linear_names_are_the_architectures():
    """Architecture.linear_shapes() (core cannot read the table) names the table's matrices but the embedding."""
    for arch in ARCHS.values():
        matrices = {name for name, shape in expected_shapes(arch).items() if len(shape) == 2}
        assert {name + WEIGHT for name in arch.linear_shapes()} == matrices - {META.name(MODEL_TENSOR.TOKEN_EMBD)}


@pytest.mark.parametrize("name, naming", [
    ("model.layers.0.self_attn.rotary_emb.inv_freq", HF), ("model.layers.0.mlp.experts.3.up_proj.weight", HF),
    ("model.layers.x.mlp.up_proj.weight", HF), ("layers.{bid}.ffn_norm.weight", META), ("blk.0.attn_q.bias", GGUF),
    ("rope_freqs.weight", GGUF), ("layers.0.attention.wq", META), ("output", GGUF)])
def test_names_outside_the_table_are_none(name, naming):
    assert naming.parse(name) is None
    with pytest.raises(KeyError):
        naming.split(name)
