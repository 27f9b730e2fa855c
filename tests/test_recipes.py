
import pytest

from llama_mobile.core.errors import ConfigError, UsageError
from llama_mobile.core.presets import MODEL_PRESETS
from llama_mobile.jobs.export_request import linear_widths
from llama_mobile.quantize.recipe import (
    check_recipe_fits,
    load_recipe,
    parse_recipe,
    shipped_recipes,
)


@pytest.mark.parametrize("name", list(shipped_recipes()))
def test_shipped_recipe_validates_and_round_trips(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    data = recipe.to_dict()
    data.pop("version")
    for section in ("linear", "embedding", "output"):
        data[section] = {k: v for k, v in data[section].items()}
    data["overrides"] = [{"pattern": o["pattern"], **o["quant"]} for o in data["overrides"]]
    data["targets"] = list(data["targets"])
    assert parse_recipe(data, "round-trip") == recipe


@pytest.mark.parametrize("name", list(shipped_recipes()))
@pytest.mark.parametrize("model", ["llama3.2-1b", "llama3.2-3b", "smollm2-135m-instruct", "llama-guard-3-1b"])
def test_shipped_recipes_fit_or_are_refused_clearly(name, model):
    arch = MODEL_PRESETS[model].architecture
    recipe = load_recipe(name)
    groups = {q.group_size for q in (recipe.linear, recipe.output, recipe.embedding) if q.group_size}
    widths = {arch.dim, arch.n_heads * arch.head_dim, arch.ffn_hidden}
    if all(w % g == 0 for g in groups for w in widths):
        check_recipe_fits(recipe, linear_widths(arch), arch.dim)
    else:  # e.g. group 256 on SmolLM2's width 576: refused up front, never silently left in float
        with pytest.raises(ConfigError, match="does not divide"):
            check_recipe_fits(recipe, linear_widths(arch), arch.dim)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as info:
        parse_recipe({"name": "bad", "colour": "red", "linear": {"scheme": "3da2w", "group_size": 48},
                      "thresholds": {"min_top1": -1}}, "bad.toml")
    message = str(info.value)
    for expected in ("unknown key 'colour'", "scheme '3da2w'", "group_size 48 is not a power of two",
                     "min_top1 must be a non-negative"):
        assert expected in message
    assert len(info.value.problems) == 4


def test_group_size_that_does_not_divide_is_refused_before_loading():
    recipe = parse_recipe({"name": "g256", "linear": {"scheme": "8da4w", "group_size": 256}}, "g256.toml")
    arch = MODEL_PRESETS["smollm2-135m-instruct"].architecture  # dim 576 = 2.25 * 256
    with pytest.raises(ConfigError, match="group_size 256 does not divide"):
        check_recipe_fits(recipe, linear_widths(arch), arch.dim)


def test_overrides_pick_the_first_matching_pattern():
    recipe = parse_recipe({"name": "mixed", "linear": {"scheme": "8da4w", "group_size": 32},
                           "overrides": [{"pattern": r"layers\.0\..*", "scheme": "8da8w"}]}, "mixed.toml")
    assert recipe.quant_for("layers.0.attention.wq").scheme == "8da8w"
    assert recipe.quant_for("layers.1.attention.wq").scheme == "8da4w"
    assert recipe.quant_for("output").scheme == "8da4w"


def test_unknown_recipe_names_the_choices(tmp_path):
    with pytest.raises(UsageError, match="8da4w"):
        load_recipe("9da9w")
    bad = tmp_path / "broken.toml"
    bad.write_text("name = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(str(bad))


def test_torchao_configs_match_the_scheme():
    import torch
    from torchao.quantization import (
        Int8DynamicActivationIntxWeightConfig,
        IntxWeightOnlyConfig,
    )
    from torchao.quantization.granularity import PerAxis, PerGroup

    from llama_mobile.quantize.apply import torchao_config

    recipe = load_recipe("8da4w")
    linear = torchao_config(recipe.linear)
    assert isinstance(linear, Int8DynamicActivationIntxWeightConfig)
    assert linear.weight_dtype == torch.int4 and linear.weight_granularity == PerGroup(32)
    embedding = torchao_config(recipe.embedding, embedding=True)
    assert isinstance(embedding, IntxWeightOnlyConfig)
    assert embedding.weight_dtype == torch.int8 and embedding.granularity == PerAxis(0)
    assert torchao_config(load_recipe("fp32").linear) is None
