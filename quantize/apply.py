"""Apply a recipe to a model through torchao's quantize_ and record exactly what was done."""
from __future__ import annotations

import contextlib
import copy
import logging
from collections import defaultdict

import torch
from torch import nn
from torchao.core.config import config_to_dict
from torchao.quantization import (
    Int8DynamicActivationIntxWeightConfig,
    IntxWeightOnlyConfig,
    quantize_,
)
from torchao.quantization.granularity import PerAxis, PerGroup
from torchao.quantization.quant_primitives import MappingType
from torchao.quantization.transform_module import _QUANTIZE_CONFIG_HANDLER

from llama_mobile.core.errors import ExportError
from llama_mobile.quantize.calibrate import Calibrator, calibrates
from llama_mobile.quantize.recipe import LayerQuant, Recipe
from llama_mobile.quantize.rowwise import rowwise_quantizers

log = logging.getLogger(__name__)


def torchao_config(quant: LayerQuant, *, embedding: bool = False):
    """The torchao config for one layer scheme, or None to leave the layer in float."""

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
    quantizer = PartQuantizer(model, recipe, tied)
    quantizer.quantize("")
    return quantizer.finish()


class PartQuantizer:
    """Quantizes a model one part (module name prefix) at a time, so a model can be built, scored and
    quantized block by block without ever holding all of its float weights."""

    def __init__(self, model: nn.Module, recipe: Recipe, tied: bool = False,
                 calibrator: Calibrator | None = None):
        self.model, self.recipe, self.calibrator = model, recipe, calibrator
        self.calibrated: list[str] = []
        self.share = tied and recipe.shares_tied_weights() and not recipe.embedding.is_float
        self.applied: dict[str, dict] = {}
        self._by_scheme: dict[LayerQuant, list[str]] = defaultdict(list)

    def quantize(self, prefix: str) -> None:
        """Quantize the embeddings and linears named ``prefix`` or under it ("" is the whole model)."""


        def inside(name: str) -> bool:
            return not prefix or name == prefix or name.startswith(prefix + ".")

        embedding_config = torchao_config(self.recipe.embedding, embedding=True)
        embeddings = {n for n, m in self.model.named_modules() if isinstance(m, nn.Embedding) and inside(n)}
        if embedding_config is not None and not self.share and embeddings:
            with rowwise_quantizers():
                quantize_(self.model, embedding_config, filter_fn=lambda m, fqn: fqn in embeddings)
            self.applied["embedding:" + ",".join(sorted(embeddings))] = _config_dict(embedding_config)
        by_scheme: dict[LayerQuant, list[str]] = defaultdict(list)
        for name in linear_in_features(self.model):
            if inside(name):
                by_scheme[self.recipe.quant_for(name)].append(name)
        for quant, names in by_scheme.items():
            config = torchao_config(quant)
            if config is None:
                continue
            self._by_scheme[quant].extend(names)
            if self.calibrator is not None and calibrates(quant):  # the layers that saw calibration text
                names = [n for n in names if not self._quantize_calibrated(n, quant, config)]
                if not names:
                    continue
            selected = set(names)
            log.debug("quantizing %d linear layers as %s (group %s)", len(names), quant.scheme, quant.group_size)
            with rowwise_quantizers():
                quantize_(self.model, config, filter_fn=lambda m, fqn, selected=selected: fqn in selected)
        if self.share and inside("output"):
            self.model.tok_embeddings.weight = self.model.output.weight  # torchao's embedding dequantizes it row by row
            self.applied["embedding:tok_embeddings"] = {"shared_with": "output"}
        if self.calibrator is not None:
            self.calibrator.clear()

    def observe(self, prefix: str):
        """A context in which the part's calibrated linears record their inputs (stream_build runs the
        calibration tokens through the float part inside it, just before ``quantize(prefix)``)."""
        modules = {name: m for name, m in self.model.named_modules()
                   if isinstance(m, nn.Linear) and (name == prefix or name.startswith(prefix + "."))
                   and calibrates(self.recipe.quant_for(name))} if self.calibrator is not None else {}
        return self.calibrator.observer.observe(modules) if modules else contextlib.nullcontext()

    def _quantize_calibrated(self, name: str, quant: LayerQuant, config) -> bool:
        """Calibration picks the layer's integers and scales; torchao's own handler for the recipe's config
        stores them, given as a custom scale (how torchao's QAT convert hands over learned scales).
        False when the layer saw no calibration input (it is then quantized as usual)."""

        module = self.model.get_submodule(name)
        solved = self.calibrator.solve(name, module.weight, quant)
        if solved is None:
            return False
        qdata, scale = solved
        group = quant.group_size
        # float values that torchao's quantize_affine(w, scale) turns back into exactly these integers
        module.weight = nn.Parameter(qdata.to(torch.float32) * scale.repeat_interleave(group, dim=1),
                                     requires_grad=False)
        custom = copy.deepcopy(config)
        if hasattr(custom, "intx_choose_qparams_algorithm"):
            custom.intx_choose_qparams_algorithm = None  # torchao's rule for custom scales
        _QUANTIZE_CONFIG_HANDLER[type(custom)](module, custom, custom_scale=scale,
                                               custom_zero_point=torch.zeros_like(scale, dtype=torch.int8))
        stored = module.weight
        if not (torch.equal(stored.qdata, qdata) and torch.equal(stored.scale, scale)):
            raise ExportError(f"calibrated weights of {name} did not survive torchao's packing",
                              fix="report this; export without [calibration] meanwhile")
        self.calibrated.append(name)
        return True

    def finish(self, check: bool = True) -> dict[str, dict]:
        """Check nothing was left in float by accident (``check``: unless the caller checks the whole model
        itself); the configs applied, for the manifest."""
        for quant, names in self._by_scheme.items():
            self.applied["linear:" + _describe(names)] = _config_dict(torchao_config(quant))
        if check:
            _check_all_quantized(self.model, self.recipe)
        return self.applied


def _config_dict(config) -> dict:

    return config_to_dict(config)


def _describe(names: list[str]) -> str:
    return ",".join(names) if len(names) <= 4 else f"{len(names)} layers incl. {names[0]}"


def _check_all_quantized(model: nn.Module, recipe: Recipe) -> None:
    """torchao leaves a layer in float when it cannot quantize it; an export must not ship that silently."""

    missed = [name for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and not recipe.quant_for(name).is_float
              and type(m.weight) in (torch.Tensor, nn.Parameter)]
    if missed:
        raise ExportError(f"{len(missed)} linear layers stayed unquantized (first: {missed[0]})",
                          fix="choose a group size that divides every layer's input width")
