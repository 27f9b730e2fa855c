"""Predict an export's .pte size, its runtime memory and a decode-speed ceiling, from shapes alone.

The byte rules follow what this toolchain serialises (torchao 0.18 IntxUnpackedToInt8Tensor ->
ExecuTorch 1.5 XNNPACK): int4 weights packed two per byte with one bf16 scale per group
(executorch/backends/xnnpack/operators/node_visitor.py casts per-channel-group scales to bf16);
int8 per-channel weights with one fp32 scale per row (torchao keeps the weight's dtype for scales
when weight_scale_dtype is unset); the embedding outside the delegate with fp32 row scales. A tied
output layer is stored once with the embedding when both hold the same bytes (fp32, or int8 per
channel): the export then puts every weight in model.ptd, ExecuTorch's content-addressed external
weights file; otherwise the two are stored apart. SmolLM2-135M 8da4w and fp32 exports match to 0.02%.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.devices import Device
from llama_mobile.core.errors import ResourceError, UsageError
from llama_mobile.core.schemes import Scheme
from llama_mobile.quantize.recipe import LayerQuant, Recipe

GROUP_SCALE_BYTES = 2  # bf16, as XNNPACK's qb4w kernels take them
ROW_SCALE_BYTES = 4  # fp32
FLOAT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# Delegate graphs, flatbuffer and alignment: 385 KB over 30 layers in the SmolLM2 8da4w build (estimate).
PROGRAM_BYTES_PER_LAYER = 13_000
KV_BYTES = 4  # the exported KV cache is fp32 ...
# ... or int8 with a float32 scale and an int8 zero point per position and KV head (recipe kv_cache = "int8")
KV_INT8_ROW_EXTRA = 5
PREFILL_CHUNK = 256  # max_seq_len the exporter uses: the runner prefills at most this many tokens per call
SDPA_KV_BLOCK = 512  # custom_sdpa scores one block of keys at a time (estimate of its scratch)
RAM_SHARE = 0.4  # an app may use this much of the device's RAM; the OS and other apps keep the rest
MIN_CONTEXT = 512


@dataclass(frozen=True)
class Component:
    name: str
    bytes: int
    detail: str


@dataclass(frozen=True)
class SizePrediction:
    components: tuple[Component, ...]

    @property
    def total(self) -> int:
        return sum(c.bytes for c in self.components)

    def of(self, prefix: str) -> int:
        return sum(c.bytes for c in self.components if c.name.startswith(prefix))

    def to_dict(self) -> dict:
        return {"total_bytes": self.total, "components": [dataclasses.asdict(c) for c in self.components]}


@dataclass(frozen=True)
class MemoryPrediction:
    weights: int  # the program's constants, mmapped
    kv_cache: int
    activations: int  # largest live buffers while prefilling one chunk (estimate)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "total_bytes": self.total}


@dataclass(frozen=True)
class DeviceFit:
    device: str
    ram_bytes: int
    budget_bytes: int  # RAM_SHARE of ram_bytes
    fits: bool
    bandwidth_gbs: float
    bytes_per_token: int  # weights read once per decoded token + a full KV cache
    decode_tokens_per_s_ceiling: float  # bandwidth / bytes_per_token: an upper bound, not a forecast
    threads: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Plan:
    recipe: str
    context: int
    requested_context: int
    max_seq_len: int
    size: SizePrediction
    memory: MemoryPrediction
    device: DeviceFit | None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "recipe": self.recipe, "context": self.context, "requested_context": self.requested_context,
            "max_seq_len": self.max_seq_len, "size": self.size.to_dict(), "memory": self.memory.to_dict(),
            "device": self.device.to_dict() if self.device else None, "notes": list(self.notes),
        }


def weight_bytes(rows: int, cols: int, quant: LayerQuant, group_scale_bytes: int = GROUP_SCALE_BYTES,
                 dtype: str = "fp32") -> int:
    """Bytes of one [rows, cols] weight stored under a scheme, scales included; float layers take the
    recipe's dtype unless the scheme itself says bf16."""
    if quant.is_float:
        return rows * cols * (FLOAT_BYTES[dtype] if quant.scheme == Scheme.FP32 else quant.weight_bits // 8)
    data = rows * cols * quant.weight_bits // 8
    if quant.group_size:
        scale = group_scale_bytes if quant.weight_bits == 4 else ROW_SCALE_BYTES
        return data + rows * (cols // quant.group_size) * scale
    return data + rows * ROW_SCALE_BYTES


def predict_size(arch: Architecture, recipe: Recipe, context: int, *,
                 group_scale_bytes: int = GROUP_SCALE_BYTES, tied_stored_once: bool | None = None) -> SizePrediction:
    """The program's bytes (model.pte + model.ptd) by component. group_scale_bytes=4 and
    tied_stored_once=False model Meta's Llama 3.2 quantized release (fp32 group scales, the tied
    matrix stored twice); by default the layout this toolchain writes."""
    if tied_stored_once is None:
        tied_stored_once = arch.tied_embeddings and recipe.shares_tied_weights()
    by_quant: dict[tuple[str, LayerQuant], list[int]] = {}
    for name, (rows, cols) in arch.linear_shapes().items():
        quant = recipe.quant_for(name)
        key = ("output" if name == "output" else "linears", quant)
        entry = by_quant.setdefault(key, [0, 0, 0])
        entry[0] += weight_bytes(rows, cols, quant, group_scale_bytes, recipe.dtype)
        entry[1] += rows * cols
        entry[2] += 1
    components = [
        Component(f"{kind}:{_describe(quant)}", total, f"{layers} layers, {params:,} weights")
        for (kind, quant), (total, params, layers) in by_quant.items()
    ]
    if tied_stored_once:
        components.append(Component("embedding:shared-with-output", 0,
                                    "tied: the output layer's bytes serve the lookup (model.ptd holds them once)"))
    else:
        # Embeddings are never grouped into 4-bit XNNPACK kernels: their group scales stay fp32.
        components.append(Component(f"embedding:{_describe(recipe.embedding)}",
                                    weight_bytes(arch.vocab_size, arch.dim, recipe.embedding, ROW_SCALE_BYTES,
                                                 recipe.dtype),
                                    f"{arch.vocab_size} x {arch.dim}"))
    norms = (2 * arch.n_layers + 1) * arch.dim * 4 + arch.dim * 4  # weights + the shared 1/dim row
    components.append(Component("norms", norms, f"{2 * arch.n_layers + 1} RMSNorm weights, fp32"))
    rope = 2 * context * arch.head_dim * 4 + arch.head_dim * arch.head_dim * 4
    components.append(Component("rope", rope, f"cos/sin for {context} positions + pair-swap matrix, fp32"))
    if arch.output_token_ids:
        components.append(Component("output_token_ids", len(arch.output_token_ids) * 8, "int64 ids"))
    components.append(Component("program", PROGRAM_BYTES_PER_LAYER * arch.n_layers,
                                "delegate graphs, flatbuffer, alignment (estimate)"))
    return SizePrediction(tuple(components))


def _describe(quant: LayerQuant) -> str:
    if quant.is_float:
        return quant.scheme
    return f"{quant.scheme}/g{quant.group_size}" if quant.group_size else f"{quant.scheme}/per-channel"


def kv_cache_bytes(arch: Architecture, context: int, kv_cache: str = "fp32") -> int:
    row = arch.head_dim + KV_INT8_ROW_EXTRA if kv_cache == "int8" else arch.head_dim * KV_BYTES
    return 2 * arch.n_layers * context * arch.n_kv_heads * row


def activation_bytes(arch: Architecture, context: int) -> int:
    """Largest live float buffers while prefilling one chunk; the memory planner reuses the rest."""
    chunk = min(context, PREFILL_CHUNK)
    hidden = max(arch.ffn_hidden_of(i) for i in range(arch.n_layers))
    residual = 2 * chunk * arch.dim * 4  # the residual stream and its normalised copy
    mlp = 3 * chunk * hidden * 4 + chunk * hidden  # w1 and w3 outputs, their product, int8 activations
    qkv = chunk * (arch.n_heads + 2 * arch.n_kv_heads) * arch.head_dim * 4
    attention = qkv + arch.n_heads * chunk * min(context, SDPA_KV_BLOCK) * 4 + chunk * arch.dim * 4
    logits = arch.vocab_size * 4  # one position
    return residual + max(mlp, attention) + logits


def predict_memory(arch: Architecture, recipe: Recipe, context: int,
                   size: SizePrediction | None = None) -> MemoryPrediction:
    size = size or predict_size(arch, recipe, context)
    return MemoryPrediction(weights=size.total, kv_cache=kv_cache_bytes(arch, context, recipe.kv_cache),
                            activations=activation_bytes(arch, context))


def device_fit(arch: Architecture, size: SizePrediction, memory: MemoryPrediction, context: int,
               device: Device) -> DeviceFit:
    ram = device.ram_gb * 2**30  # phone RAM is sold in binary gigabytes
    # A decoded token reads every linear weight once but only one row of the embedding table.
    embedding = size.of("embedding")
    per_token = size.total - embedding + embedding // arch.vocab_size + memory.kv_cache
    return DeviceFit(
        device=device.name, ram_bytes=ram, budget_bytes=int(ram * RAM_SHARE),
        fits=memory.total <= ram * RAM_SHARE, bandwidth_gbs=device.bandwidth_gbs, bytes_per_token=per_token,
        decode_tokens_per_s_ceiling=device.bandwidth_gbs * 1e9 / per_token, threads=device.threads,
    )


def plan(arch: Architecture, recipe: Recipe, *, context: int | None = None,
         device: Device | None = None) -> Plan:
    """Size, memory and (with a device) fit and decode ceiling. On a device whose RAM share cannot
    hold the requested context, the context halves down to MIN_CONTEXT; below that it is refused."""
    if context is None:
        if device is None:
            raise UsageError("no context length to plan for", fix="pass --context or --device")
        context = device.context
    if context < 1 or context > arch.max_position:
        raise UsageError(f"context {context} is outside 1..{arch.max_position}",
                         fix="choose a context the model supports")
    requested, notes = context, []
    while True:
        size = predict_size(arch, recipe, context)
        memory = predict_memory(arch, recipe, context, size)
        fit = device_fit(arch, size, memory, context, device) if device else None
        if fit is None or fit.fits:
            break
        if context // 2 < MIN_CONTEXT:
            raise ResourceError(
                f"{recipe.name} needs {_gib(memory.total)} at context {context}, over the "
                f"{_gib(fit.budget_bytes)} an app may use on {device.name} ({RAM_SHARE:.0%} of "
                f"{device.ram_gb} GB)", fix="choose a smaller model or a 4-bit recipe")
        context //= 2
    if recipe.pt2e is not None:
        notes.append(f"{recipe.name} is quantized by the backend's own PT2E quantizer at export: its weights are "
                     "priced here as the float graph it starts from (an upper bound)")
    if context != requested:
        notes.append(f"context shrunk from {requested} to {context}: at {requested} the model needs more "
                     f"than {RAM_SHARE:.0%} of {device.name}'s {device.ram_gb} GB")
    if fit:
        notes.append(f"decode ceiling {fit.decode_tokens_per_s_ceiling:.1f} tok/s = peak bandwidth / bytes "
                     f"read per token at a full context; measured decode is lower")
    return Plan(recipe=recipe.name, context=context, requested_context=requested,
                max_seq_len=min(context, PREFILL_CHUNK), size=size, memory=memory, device=fit,
                notes=tuple(notes))


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
