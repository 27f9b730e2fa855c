"""Quantization schemes as one enum (core/schemes.py): every scheme a shipped recipe or a target names is a
member, and a member reads as its plain name wherever it is compared, joined or formatted."""
from __future__ import annotations

import json

import pytest

from llama_mobile.core.schemes import (
    EMBEDDING_SCHEMES,
    LINEAR_SCHEMES,
    PT2E_SCHEMES,
    Activations,
    Scheme,
)
from llama_mobile.core.targets import TARGETS
from llama_mobile.quantize.recipe import LayerQuant, load_recipe, shipped_recipes


def recipe_schemes(recipe) -> set[str]:
    found = {recipe.linear.scheme, recipe.embedding.scheme, recipe.output.scheme,
             *(o.quant.scheme for o in recipe.overrides)}
    return found | ({recipe.pt2e.scheme} if recipe.pt2e else set())


@pytest.mark.parametrize("name", shipped_recipes())
def test_every_shipped_recipe_names_members(name):
    recipe = load_recipe(name)
    assert recipe_schemes(recipe) <= set(Scheme)
    for quant in (recipe.linear, recipe.output, *(o.quant for o in recipe.overrides)):
        assert quant.scheme in LINEAR_SCHEMES
    assert recipe.embedding.scheme in EMBEDDING_SCHEMES
    assert recipe.pt2e is None or recipe.pt2e.scheme in PT2E_SCHEMES


def test_every_scheme_is_used_by_a_recipe_or_a_target():
    used = set().union(*(recipe_schemes(load_recipe(n)) for n in shipped_recipes()),
                       *(set(t.linear_schemes) | set(t.embedding_schemes) for t in TARGETS.values()))
    assert used <= set(Scheme)
    # Offered to recipe files but shipped by none: bf16 layers (bf16.toml sets the dtype instead) and 16a8w.
    assert set(Scheme) - used == {Scheme.BF16, Scheme.A16W8}


def test_every_target_names_members():
    for target in TARGETS.values():
        assert all(isinstance(s, Scheme) and s in LINEAR_SCHEMES for s in target.linear_schemes), target.name
        assert all(isinstance(s, Scheme) and s in EMBEDDING_SCHEMES for s in target.embedding_schemes), target.name


def test_bits_and_activations_are_the_names():
    """The name spells the bits: <activation bits>[d]a<weight bits>w, or a float type."""
    for scheme in Scheme:
        if scheme.is_float:
            assert scheme.activation_bits is None and scheme.weight_bits == int(scheme.value[-2:])
            continue
        activations, weights = scheme.value.rstrip("w").rsplit("a", 1) if "a" in scheme.value else ("", scheme.value[:-1])
        assert scheme.weight_bits == int(weights)
        assert scheme.activation_bits == (int(activations.rstrip("d")) if activations else None)
        assert (scheme.activations is Activations.DYNAMIC) == activations.endswith("d")
        assert (scheme.activations is Activations.STATIC) == (scheme in PT2E_SCHEMES)
    assert LayerQuant("8da4w").dynamic_activations and not LayerQuant("8w").dynamic_activations
    assert LayerQuant("bf16").is_float and LayerQuant("bf16").weight_bits == 16


def test_members_read_as_their_names():
    assert Scheme.DA8W4 == "8da4w" and "8da4w" in LINEAR_SCHEMES and Scheme("8w") is Scheme.W8
    assert f"{Scheme.DA8W4}/g32" == "8da4w/g32" and str(Scheme.W4) == "4w"
    assert ", ".join(LINEAR_SCHEMES) == "fp32, bf16, 8da4w, 8da8w, 4w, 8w"
    assert ", ".join(EMBEDDING_SCHEMES) == "fp32, bf16, 8w, 4w"
    assert ", ".join(PT2E_SCHEMES) == "16a4w, 16a8w, 8a8w"
    assert json.dumps({Scheme.W8: [Scheme.FP32]}) == '{"8w": ["fp32"]}'
