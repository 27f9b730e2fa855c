"""Before any weight is read: will this export fit in the machine's memory?"""
from __future__ import annotations

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.errors import ResourceError
from llama_mobile.core.memory import available_bytes
from llama_mobile.jobs.plan import predict_size

# The export reads the checkpoint memory-mapped and builds, scores and quantizes one block at a time,
# so the float model never exists whole; the peak is the quantized model plus the lowering. Modelled as
#   BASE + PER_LAYER * blocks + PER_PROGRAM_BYTE * program bytes + PER_QUANTIZED_WEIGHT * quantized weights
# (the FX graphs grow with the blocks; XNNPACK's packed copy and the serialized program with the
# program; torchao holds every quantized weight unpacked, one byte each, until lowering has packed it).
# Least-squares fit to exports measured on this project's 2-core/24 GiB machine (BENCHMARKS.md), all
# within 6%: SmolLM2-135M 8da4w-mixed 1.99 GiB and fp32 2.15 GiB, Llama 3.2 1B shapes 8da4w 3.67 GiB,
# 3B shapes 8da4w 7.91 GiB.
BASE_BYTES = 0.8e9
PER_LAYER_BYTES = 35.6e6
PER_PROGRAM_BYTE = 0.79
PER_QUANTIZED_WEIGHT = 1.35


def export_peak_bytes(arch: Architecture, recipe, context: int) -> int:

    program = predict_size(arch, recipe, context).total
    quantized = sum(rows * cols for name, (rows, cols) in arch.linear_shapes().items()
                    if not recipe.quant_for(name).is_float)
    if not recipe.embedding.is_float and not (arch.tied_embeddings and recipe.shares_tied_weights()):
        quantized += arch.vocab_size * arch.dim
    return int(BASE_BYTES + PER_LAYER_BYTES * arch.n_layers + PER_PROGRAM_BYTE * program
               + PER_QUANTIZED_WEIGHT * quantized)


def check_export_fits(arch: Architecture, recipe, context: int) -> int:
    """Returns the estimate; raises when the machine's available memory cannot hold it."""
    needed = export_peak_bytes(arch, recipe, context)
    available = available_bytes()
    if available is not None and needed > available:
        raise ResourceError(
            f"this export needs about {needed / 2**30:.1f} GiB of memory but {available / 2**30:.1f} GiB is "
            f"available", fix="close other programs, use a machine with more memory, or pass --skip-memory-check")
    return needed
