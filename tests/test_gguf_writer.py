"""The GGUF written for llama.cpp's side of `bench`: read back by our GGUF loader (transformers' and
gguf-py's readers, not the writer's code), tokenized like Meta's own tokenizer, and, where the bench
extra is installed, run by llama.cpp to the same logits as the reference model."""
import dataclasses
import importlib.util

import pytest
import torch

from llama_mobile.core.architecture import Architecture, RopeScaling
from llama_mobile.core.errors import ConfigError, UsageError
from llama_mobile.export.checkpoint import load_checkpoint
from llama_mobile.runtime_harness.gguf_writer import tiktoken_merges, write_gguf
from tests.checkpoints import llama3_tokenizer_model, random_state_dict, write_meta

LLAMA3_TINY = Architecture(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=192, vocab_size=128256,
                           rope_theta=500000.0, rope_scaling=RopeScaling(), max_position=131072)
TEXT = ("The quick brown fox: naïve café, 12345 items... ::.:.:  two spaces\tand a tab\n\n"
        "  newlines   and <|eot_id|> a special token.")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A Meta checkpoint with Llama 3's real tokenizer (tiny dims, real vocabulary) and its GGUF."""
    folder = tmp_path_factory.mktemp("gguf-writer")
    state = random_state_dict(LLAMA3_TINY)
    write_meta(folder / "meta", LLAMA3_TINY, state, tokenizer=llama3_tokenizer_model(), dtype=torch.float32)
    loaded = load_checkpoint("llama", folder / "meta")
    return loaded, write_gguf(loaded, folder / "model.gguf")


@pytest.fixture(scope="module")
def read_back(written):
    return load_checkpoint("llama", written[1])  # also rebuilds tokenizer.json from the GGUF's vocabulary


@pytest.fixture
def small_vocabulary(monkeypatch):
    """Writes with a 300-token byte-level vocabulary instead of Llama 3's: quick files for the checks
    that are not about the vocabulary."""
    from llama_mobile.core.tokenizer import byte_level
    from llama_mobile.runtime_harness import gguf_writer
    from llama_mobile.runtime_harness.gguf_writer import Vocabulary

    tokens = [byte_level(bytes([b])) for b in range(256)] + [f"<|special_{i}|>" for i in range(44)]
    vocab = Vocabulary(tokens, [1] * 256 + [3] * 44, [])
    monkeypatch.setattr(gguf_writer, "vocabulary", lambda loaded: vocab)


def small_checkpoint(folder, **changes):
    from tests.checkpoints import TINY

    arch = dataclasses.replace(TINY, **changes)
    write_meta(folder / "meta", arch, random_state_dict(arch))
    return load_checkpoint("llama", folder / "meta")


def test_weights_and_architecture_read_back_by_the_gguf_loader(written, read_back):
    loaded, path = written
    back = read_back
    assert back.architecture == loaded.architecture  # incl. RoPE scaling recovered from rope_freqs
    assert set(back.state_dict) == set(loaded.state_dict)
    for name, tensor in loaded.state_dict.items():
        expected = tensor.float() if tensor.dim() == 1 else tensor.half().float()  # F32 norms, F16 matrices
        assert torch.equal(back.state_dict[name], expected), name
    assert not list(path.parent.glob(".*tmp*"))


def test_vocabulary_tokenizes_like_metas_tokenizer(read_back):
    """The merges rebuilt from tiktoken ranks, read by Hugging Face's tokenizers (via transformers' GGUF
    converter, in the loader), give the token ids of Meta's reference tokenizer."""
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(read_back.tokenizer_path))
    meta = MetaTokenizer(llama3_tokenizer_model())
    expected = meta.encode(TEXT, bos=False, eos=False, allowed_special="all")
    assert hf.encode(TEXT, add_special_tokens=False).ids == expected


def test_merges_are_every_split_in_rank_order():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5}
    assert tiktoken_merges(ranks) == [(b"a", b"b"), (b"b", b"c"), (b"a", b"bc"), (b"ab", b"c")]


def test_llama3_merge_count_matches_hugging_face(read_back):
    import json

    merges = json.loads(read_back.tokenizer_path.read_text())["model"]["merges"]
    assert len(merges) == 280147  # as in Hugging Face's Llama 3 tokenizer.json


def test_tied_model_has_no_output_tensor(tmp_path, small_vocabulary):
    import gguf

    loaded = small_checkpoint(tmp_path, tied_embeddings=True)
    path = write_gguf(loaded, tmp_path / "tied.gguf")
    from llama_mobile.export.gguf_loader import architecture_from_gguf

    reader = gguf.GGUFReader(str(path))
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names and "token_embd.weight" in names and "rope_freqs.weight" not in names
    assert reader.fields["tokenizer.ggml.pre"].contents() == "llama-bpe"
    arch, _, _ = architecture_from_gguf(reader, path)
    assert arch.tied_embeddings and arch.rope_scaling is None


def test_rope_factors_that_are_not_llama3_scaling_are_refused(tmp_path, small_vocabulary, monkeypatch):
    from llama_mobile.runtime_harness import gguf_writer

    loaded = small_checkpoint(tmp_path, rope_scaling=RopeScaling())
    monkeypatch.setattr(gguf_writer, "rope_scale_factors",
                        lambda head_dim, theta, scaling: torch.linspace(1, 7, head_dim // 2))
    path = write_gguf(loaded, tmp_path / "edited.gguf")
    with pytest.raises(ConfigError, match="rope_freqs.weight is not Llama 3's RoPE scaling"):
        load_checkpoint("llama", path)


def test_other_vocabularies_and_pruned_models_are_refused(tmp_path):
    from tests.checkpoints import TINY

    write_meta(tmp_path / "meta", TINY, random_state_dict(TINY))
    with pytest.raises(UsageError, match="only Llama 3's 128256-token vocabulary"):
        write_gguf(load_checkpoint("llama", tmp_path / "meta"), tmp_path / "x.gguf")
    loaded = load_checkpoint("llama", tmp_path / "meta")
    loaded.architecture = dataclasses.replace(loaded.architecture, layer_ffn_hidden=(128, 64))
    with pytest.raises(UsageError, match="per-layer MLP widths"):
        write_gguf(loaded, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*"))


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="needs the bench extra (llama-cpp-python); the loader tests above cover the file")
def test_llama_cpp_runs_it_to_the_reference_logits(written):
    from llama_mobile.core.tokenizer import Tokenizer
    from llama_mobile.export.model import build_model, load_custom_ops
    from llama_mobile.runtime_harness.parity import reference_logits
    from llama_mobile.runtime_harness.peer_quality import llama_cpp_logits

    loaded, path = written
    load_custom_ops()
    ids = [loaded.specials.bos_id] + Tokenizer(loaded.tokenizer_path).encode("Name three planets of the sun.")
    reference = reference_logits(build_model(loaded.architecture, 256, loaded.state_dict), ids)
    peer = llama_cpp_logits(path, ids)
    assert torch.equal(reference.argmax(-1), peer.argmax(-1))
    assert (reference - peer).abs().max() < 0.02 * reference.abs().max()  # F16 weights


def test_hugging_face_tokenizer_json_gives_the_same_vocabulary(written, read_back):
    """A Llama 3 tokenizer.json (here: the one rebuilt from our GGUF) converts to the same tokens,
    types and merges as Meta's tiktoken file."""
    from llama_mobile.runtime_harness.gguf_writer import (
        hf_vocabulary,
        tiktoken_vocabulary,
    )

    loaded, _ = written
    from_meta = tiktoken_vocabulary(loaded.tokenizer_path, 128256, loaded.specials.names)
    from_hf = hf_vocabulary(read_back.tokenizer_path, 128256)
    assert from_hf.tokens == from_meta.tokens and from_hf.merges == from_meta.merges
    assert from_hf.types == from_meta.types
