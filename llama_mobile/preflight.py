"""Before any weight is read: will this export fit in the machine's memory?"""
from __future__ import annotations

from llama_mobile.architecture import Architecture
from llama_mobile.errors import ResourceError

# peak RSS ~= BASE + PER_FLOAT_BYTE * fp32 model bytes + PER_PROGRAM_BYTE * predicted .pte bytes,
# fitted to three measured exports on this project's 2-core/24 GiB machine:
#   SmolLM2-135M fp32 3.26 GiB, SmolLM2-135M 8da4w 1.80 GiB, Llama 3.2 1B shapes llama3.2-quantized 7.42 GiB.
BASE_BYTES = 1.23e9
PER_FLOAT_BYTE = 0.74
PER_PROGRAM_BYTE = 2.87


def export_peak_bytes(arch: Architecture, recipe, context: int) -> int:
    from llama_mobile.plan import predict_size

    # Fitted when tied matrices were stored twice; the exporter still holds both while lowering.
    program = predict_size(arch, recipe, context, tied_stored_once=False).total
    return int(BASE_BYTES + PER_FLOAT_BYTE * arch.param_count() * 4 + PER_PROGRAM_BYTE * program)


def available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_export_fits(arch: Architecture, recipe, context: int) -> int:
    """Returns the estimate; raises when the machine's available memory cannot hold it."""
    needed = export_peak_bytes(arch, recipe, context)
    available = available_bytes()
    if available is not None and needed > available:
        raise ResourceError(
            f"this export needs about {needed / 2**30:.1f} GiB of memory but {available / 2**30:.1f} GiB is "
            f"available", fix="close other programs, use a machine with more memory, or pass --skip-memory-check")
    return needed
