"""PT2E quantization for NPU backends: a recipe's [pt2e] section -> the backend quantizer's settings.

The settings are plain data (what the manifest records, testable without any SDK); building the
quantizer and running prepare/calibrate/convert imports ExecuTorch's backend packages.
"""
from __future__ import annotations

import logging

import torch
from torch.export import Dim
from torchao.quantization.pt2e import MinMaxObserver
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

from llama_mobile.quantize.recipe import Pt2eQuant

log = logging.getLogger(__name__)

# The weighted ops the recipe's weight layout applies to (everything else is per tensor).
QNN_WEIGHT_OPS = ("aten.linear.default",)


def qnn_quant_settings(pt2e: Pt2eQuant) -> dict:
    """The QnnQuantizer configuration for a recipe: QuantDtype member names and granularities.

    As ExecuTorch's Llama 3.2 QNN recipe: activations per tensor with min/max observers (the default
    strategy, which QNN requires for weightless ops); linear weights per output channel, or with
    block_size the 16a4w_block dtype in blocks of block_size input columns (LPBQ).
    """
    default = {"quant_dtype": f"use_{pt2e.scheme}", "granularity": "PER_TENSOR",
               "act_observer": "MinMaxObserver", "act_symmetric": False, "is_qat": False}
    linear = {**default, "granularity": "PER_CHANNEL"}
    if pt2e.block_size:
        linear = {**default, "quant_dtype": "use_16a4w_block", "granularity": "PER_BLOCK",
                  "block_size": [1, pt2e.block_size]}
    return {"quantizer": "QnnQuantizer", "default": default,
            "node_targets": [{"ops": list(QNN_WEIGHT_OPS), **linear}]}


def neuropilot_quant_settings(pt2e: Pt2eQuant) -> dict:
    """NeuropilotQuantizer's precision (A16W4, ...) with per-channel weights (its only other knob)."""
    activation, weight = pt2e.scheme.rstrip("w").split("a")
    return {"quantizer": "NeuropilotQuantizer", "precision": f"A{activation}W{weight}", "is_per_channel": True,
            "is_qat": False}


def quant_settings(pt2e: Pt2eQuant) -> dict:
    return {"qnn": qnn_quant_settings, "neuropilot": neuropilot_quant_settings}[pt2e.quantizer](pt2e)


def build_quantizer(settings: dict, chip: str | None = None):
    """The ExecuTorch quantizer object for settings from ``quant_settings``."""
    if settings["quantizer"] == "NeuropilotQuantizer":
        from executorch.backends.mediatek.quantizer.qconfig import Precision
        from executorch.backends.mediatek.quantizer.quantizer import NeuropilotQuantizer

        quantizer = NeuropilotQuantizer()
        quantizer.setup_precision(Precision[settings["precision"]])
        return quantizer
    from executorch.backends.qualcomm.quantizer.quant_recipe import (
        QuantGranularity,
        QuantRecipe,
    )
    from executorch.backends.qualcomm.quantizer.quantizer import (
        QnnQuantizer,
        QuantDtype,
    )
    from executorch.backends.qualcomm.serialization.qc_schema import QcomChipset

    observers = {"MinMaxObserver": MinMaxObserver}

    def strategy(entry: dict) -> dict:
        extra = {"block_size": tuple(entry["block_size"])} if "block_size" in entry else None
        return {"quant_dtype": QuantDtype[entry["quant_dtype"]], "is_qat": entry["is_qat"],
                "act_observer": observers[entry["act_observer"]],
                "granularity": QuantGranularity[entry["granularity"]], "act_symmetric": entry["act_symmetric"],
                "extra_kwargs": extra}

    quantizer = QnnQuantizer(soc_model=QcomChipset[chip] if chip else QcomChipset.SM8650)
    recipe = QuantRecipe(**strategy(settings["default"]))
    for entry in settings["node_targets"]:
        ops = {getattr(torch.ops.aten, name.split(".")[1]).default for name in entry["ops"]}
        recipe.add_node_target(ops, **strategy(entry))
    quantizer.set_recipe(recipe)
    return quantizer


def quantize_graph(model, quantizer, example_inputs: tuple, calibration: list[tuple], dynamic_shapes=None):
    """torch.export -> prepare_pt2e -> run the calibration inputs -> convert_pt2e. Returns the
    quantized GraphModule (quantize/dequantize nodes around every annotated op)."""

    with torch.no_grad():
        graph = torch.export.export(model, example_inputs, dynamic_shapes=dynamic_shapes, strict=False).module()
        prepared = prepare_pt2e(graph, quantizer)
        for inputs in calibration:
            prepared(*inputs)
        log.info("calibrated on %d inputs", len(calibration))
        return convert_pt2e(prepared)


def quantize_for_target(model, recipe, target, token_ids, max_seq_len: int):
    """Quantize ``model`` with the target backend's quantizer, calibrated by prefilling the evaluation
    tokens. Returns (quantized GraphModule, the record the manifest keeps)."""

    settings = quant_settings(recipe.pt2e)
    chip = target.options.chip
    if hasattr(model, "reset_cache"):
        model.reset_cache()  # the reference pass filled it; the program's initial cache must be empty
    example = (torch.zeros((1, 2), dtype=torch.long), torch.tensor([0], dtype=torch.long))
    dynamic = ({1: Dim("seq", min=1, max=max_seq_len)}, None)
    ids = torch.as_tensor(token_ids, dtype=torch.long)[:max_seq_len].reshape(1, -1)
    calibration = [(ids, torch.tensor([0], dtype=torch.long))]
    graph = quantize_graph(model, build_quantizer(settings, chip), example, calibration, dynamic)
    return graph, {**settings, "chip": chip, "calibration_tokens": int(ids.shape[1])}
