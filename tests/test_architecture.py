import pytest

from llama_mobile.core.architecture import Architecture, llama_ffn_hidden
from llama_mobile.core.errors import ConfigError, UsageError
from llama_mobile.core.presets import MODEL_PRESETS, get_model_preset
from llama_mobile.export.model import expected_shapes


@pytest.mark.parametrize("name", list(MODEL_PRESETS))
def test_every_preset_is_consistent(name):
    preset = MODEL_PRESETS[name]
    assert preset.architecture.problems() == []
    assert 2 <= preset.default_context <= preset.architecture.max_position
    assert "{content}" in preset.chat_template.user
    assert preset.specials.bos_id < preset.architecture.vocab_size
    assert all(e < preset.architecture.vocab_size for e in preset.specials.eos_ids)


def test_llama_32_shapes_match_meta_params():
    # params.json of Llama 3.2: dim 2048/3072, multiple_of 256, ffn_dim_multiplier 1.5/1.0
    assert llama_ffn_hidden(2048, 256, 1.5) == MODEL_PRESETS["llama3.2-1b"].architecture.ffn_hidden == 8192
    assert llama_ffn_hidden(3072, 256, 1.0) == MODEL_PRESETS["llama3.2-3b"].architecture.ffn_hidden == 8192


@pytest.mark.parametrize("name,params_m", [("llama3.2-1b", 1236), ("llama3.2-3b", 3213),
                                           ("smollm2-135m-instruct", 135)])
def test_parameter_counts_match_published(name, params_m):
    assert round(MODEL_PRESETS[name].architecture.param_count() / 1e6) == params_m


def test_problems_are_collected_together():
    arch = Architecture(dim=100, n_layers=2, n_heads=3, n_kv_heads=2, ffn_hidden=8, vocab_size=10, rope_theta=-1)
    problems = arch.problems()
    assert any("n_heads=3 does not divide dim=100" in p for p in problems)
    assert any("rope_theta" in p for p in problems)
    with pytest.raises(ConfigError) as info:
        arch.check("params.json")
    assert "params.json" in str(info.value)


def test_kv_heads_must_divide_heads():
    arch = Architecture(dim=64, n_layers=1, n_heads=4, n_kv_heads=3, ffn_hidden=8, vocab_size=10, rope_theta=1e4)
    assert any("n_kv_heads=3" in p for p in arch.problems())


def test_unknown_preset_names_the_choices():
    with pytest.raises(UsageError, match="llama3.2-1b"):
        get_model_preset("llama4")


def test_tied_models_have_no_output_tensor():
    assert "output.weight" not in expected_shapes(MODEL_PRESETS["llama3.2-1b"].architecture)
