"""Apply a recipe to a model through torchao's quantize_ and record exactly what was done."""
from __future__ import annotations

import logging
from collections import defaultdict

import torch
from torch import nn

from quantize.recipe import LayerQuant, Recipe

log = logging.getLogger(__name__)


def torchao_config(quant: LayerQuant, *, embedding: bool = False):
    """The torchao config for one layer scheme, or None to leave the layer in float."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_primitives import MappingType

    if quant.is_float:
        return None
    granularity = PerGroup(quant.group_size) if quant.group_size else PerAxis(0)
    mapping = MappingType.SYMMETRIC if quant.symmetric else MappingType.ASYMMETRIC
    algorithm = "hqq_scale_only" if quant.algorithm == "hqq" else "affine"
    weight_dtype = torch.int4 if quant.weight_bits == 4 else torch.int8
    if quant.dynamic_activations and not embedding:
        return Int8DynamicActivationIntxWeightConfig(
            weight_dtype=weight_dtype, weight_granularity=granularity, weight_mapping_type=mapping,
            intx_choose_qparams_algorithm=algorithm,
        )
    return IntxWeightOnlyConfig(weight_dtype=weight_dtype, granularity=granularity, mapping_type=mapping,
                                intx_choose_qparams_algorithm=algorithm)


def linear_in_features(model: nn.Module) -> dict[str, int]:
    return {name: m.in_features for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def quantize_model(model: nn.Module, recipe: Recipe, tied: bool = False) -> dict[str, dict]:
    """Quantize in place. Returns {module name pattern: torchao config dict} for the manifest.

    With ``tied`` (the output layer reuses the embedding matrix) and a recipe that stores both the same
    way, the quantized output weight also serves the embedding lookup, so the file can hold it once.
    """
    from torchao.core.config import config_to_dict
    from torchao.quantization import quantize_

    applied: dict[str, dict] = {}
    share = tied and recipe.shares_tied_weights() and not recipe.embedding.is_float
    embedding_config = torchao_config(recipe.embedding, embedding=True)
    if embedding_config is not None and not share:
        names = {n for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
        quantize_(model, embedding_config, filter_fn=lambda m, fqn: fqn in names)
        applied["embedding:" + ",".join(sorted(names))] = config_to_dict(embedding_config)

    by_scheme: dict[LayerQuant, list[str]] = defaultdict(list)
    for name in linear_in_features(model):
        by_scheme[recipe.quant_for(name)].append(name)
    for quant, names in by_scheme.items():
        config = torchao_config(quant)
        if config is None:
            continue
        selected = set(names)
        log.info("quantizing %d linear layers as %s (group %s)", len(names), quant.scheme, quant.group_size)
        quantize_(model, config, filter_fn=lambda m, fqn: fqn in selected)
        applied["linear:" + _describe(names)] = config_to_dict(config)
    if share:
        model.tok_embeddings.weight = model.output.weight  # torchao's embedding dequantizes it row by row
        applied["embedding:tok_embeddings"] = {"shared_with": "output"}
    _check_all_quantized(model, recipe)
    return applied


def _describe(names: list[str]) -> str:
    return ",".join(names) if len(names) <= 4 else f"{len(names)} layers incl. {names[0]}"


def _check_all_quantized(model: nn.Module, recipe: Recipe) -> None:
    """torchao leaves a layer in float when it cannot quantize it; an export must not ship that silently."""
    from llama_mobile.errors import ExportError

    missed = [name for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and not recipe.quant_for(name).is_float
              and type(m.weight) in (torch.Tensor, nn.Parameter)]
    if missed:
        raise ExportError(f"{len(missed)} linear layers stayed unquantized (first: {missed[0]})",
                          fix="choose a group size that divides every layer's input width")
