"""Feed a checkpoint's own integers and scales into the torchao tensors a recipe produces: no rounding.

A recipe's PartQuantizer makes ``IntxUnpackedToInt8Tensor`` weights (qdata int8, one scale per group,
zero point 0) from float weights; here the same tensor is built from the checkpoint's qdata and scale, so
torch.export and the XNNPACK lowering see exactly what they see for a recipe (tests/test_prequantized.py
compares the two). The records come from export/prequantized.py (``PrequantizedTensor``: qdata, scale,
bits, group_size, source); this module only relies on those attributes.

XNNPACK in ExecuTorch 1.5.1 holds int4 in groups (qb4w, bf16 group scales) and int8 per channel, but not
int8 in groups ("Only 4b group quantization is supported"). An int8-in-groups matrix (GGUF Q8_0) is then
held exactly as two int4 matrices and a group sum: q = 16*hi + lo + 8 with hi, lo in [-8, 7], so
x.W^T = x.(16s*hi)^T + x.(s*lo)^T + (sum of x over each group).(8s)^T; XNNPACK also takes positive group
scales only, and Q4_0 stores half its groups with a negative one (``GroupLinear``).
"""
from __future__ import annotations

import contextlib
import re
from collections import Counter

import torch
from torch import nn
from torchao.core.config import config_to_dict
from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import IntxUnpackedToInt8Tensor

from llama_mobile.core.errors import ExportError
from llama_mobile.quantize.apply import torchao_config
from llama_mobile.quantize.lora import LoraLinear
from llama_mobile.quantize.recipe import LayerQuant, Override, Recipe, Thresholds

AS_PUBLISHED = "as-published"  # the recipe name that means: the checkpoint's own quantization

# The gate for a program built from the checkpoint's own integers against the float model of the same
# integers: only XNNPACK's bf16 group scales and int8 per-token dynamic activations separate them
# (SmolLM2-135M as a Q4_0 GGUF: top-1 0.91, KL 0.021, ppl ratio 1.012 over 256 positions; most of it is
# the activation quantization, which the eager torchao model shows too).
AS_PUBLISHED_THRESHOLDS = Thresholds(min_top1=0.8, min_cosine=0.98, max_ppl_ratio=1.1, max_kl_mean=0.1)


def placeholder_recipe() -> Recipe:
    """What `--recipe as-published` checks against before the checkpoint is read (the Meta/GGUF schemes)."""
    return Recipe(name=AS_PUBLISHED, summary="the checkpoint's own quantization, kept as published", dtype="fp32",
                  linear=LayerQuant("8da4w", 32), embedding=LayerQuant("8w"), output=LayerQuant("8da8w"),
                  thresholds=AS_PUBLISHED_THRESHOLDS)


def intx_tensor(qdata: torch.Tensor, scale: torch.Tensor, bits: int, group_size: int, *, dynamic: bool):
    """The IntxUnpackedToInt8Tensor torchao's Int8DynamicActivationIntxWeightConfig (dynamic) or
    IntxWeightOnlyConfig makes, with these integers and scales."""
    scale = scale.to(torch.float32).contiguous()
    return IntxUnpackedToInt8Tensor(
        qdata=qdata.to(torch.int8).contiguous(), scale=scale, zero_point=torch.zeros_like(scale, dtype=torch.int8),
        target_dtype=torch.int4 if bits == 4 else torch.int8, block_size=(1, group_size), dtype=torch.float32,
        activation_quantization="int8_asym_per_token" if dynamic else None)


def layer_quant(record, *, embedding: bool) -> LayerQuant:
    columns = record.qdata.shape[1]
    group = 0 if record.group_size == columns else record.group_size
    if embedding:
        return LayerQuant("4w" if record.bits == 4 else "8w", group)
    return LayerQuant("8da4w" if record.bits == 4 else "8da8w", group)


class GroupLinear(nn.Module):
    """A linear with symmetric integers in groups, as XNNPACK can run it exactly.

    XNNPACK's group weights (qb4w) take int4 in [-8, 7] with positive scales: a group with a negative scale
    (half of Q4_0's groups: its largest-magnitude value is always stored as -8, with the scale's sign
    opposite) is negated, and -q in [-7, 8] is stored as -q - 1 with +1 x scale added back through the
    group's sum; a zero scale becomes 1 (its integers are then 0). int8 groups (no XNNPACK form) are
    q = 16*hi + lo + 8 (+ 1 in negated groups) with hi, lo in [-8, 7]. Then, exactly:
        x.W^T = sum over parts of x.(scale_p * q_p)^T + (x summed over each group).(offset)^T"""

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor, bits: int, group_size: int):
        super().__init__()
        rows, columns = qdata.shape
        scale = scale.to(torch.float32)
        negative, zero = scale < 0, scale == 0
        per_value = lambda mask: mask.repeat_interleave(group_size, dim=1)  # noqa: E731
        q = torch.where(per_value(negative), -qdata.to(torch.int16), qdata.to(torch.int16))
        q = torch.where(per_value(zero), torch.zeros_like(q), q)
        scale = torch.where(zero, torch.ones_like(scale), scale.abs())
        if bits == 4:
            shift = (q.unflatten(1, (-1, group_size)).amax(-1) > 7).to(torch.int16)  # only negated groups
            parts = [(q - per_value(shift), scale)]
        else:
            shift = 8 + negative.to(torch.int16)  # a negated -128 is 128: one more on its group's sum
            rest = q - per_value(shift) + 8  # [-128, 127]
            hi = torch.div(rest, 16, rounding_mode="floor")
            parts = [(hi, scale * 16), (rest - 16 * hi - 8, scale)]
        self.group_size = group_size
        self.parts = nn.ModuleList()
        for values, part_scale in parts:
            if int(values.min()) < -8 or int(values.max()) > 7:
                raise ExportError("integers outside the int4 range after splitting",
                                  fix="report this; export with --requantize meanwhile")
            linear = nn.Linear(columns, rows, bias=False)
            linear.weight = nn.Parameter(intx_tensor(values, part_scale, 4, group_size, dynamic=True),
                                         requires_grad=False)
            self.parts.append(linear)
        self.offset = None
        if bool(shift.any()):
            # The group sums run as a portable sum op: as a 32 -> 1 linear inside XNNPACK instead, the squeeze
            # after it splits the delegate (SmolLM2 Q4_0: 273 delegated calls + 211 squeezes against 153 + 211 sums).
            self.offset = nn.Linear(columns // group_size, rows, bias=False)  # the group sums' weights
            self.offset.weight = nn.Parameter(shift.to(torch.float32) * scale, requires_grad=False)

    @staticmethod
    def needed(record) -> bool:
        """Whether a record needs more than one plain int4/int8 linear (else it is stored as the recipe
        would store it)."""
        per_row = record.group_size == record.qdata.shape[1]
        if record.bits == 8 and not per_row:
            return True
        return not per_row and bool((record.scale <= 0).any())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.parts[0](x)
        for part in self.parts[1:]:
            out = out + part(x)
        if self.offset is not None:
            out = out + self.offset(x.unflatten(-1, (-1, self.group_size)).sum(-1))
        return out

    def dense(self) -> torch.Tensor:
        """The float weight it computes with (tests)."""
        weight = sum(part.weight.dequantize() for part in self.parts)
        if self.offset is not None:
            weight = weight + self.offset.weight.repeat_interleave(self.group_size, dim=1)
        return weight


class HadamardInput(nn.Module):
    """SpinQuant's R4: the layer sees its input through a normalized Hadamard transform, computed online by
    ExecuTorch's llama::fast_hadamard_transform (what `--use_spin_quant native` injects before w2)."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(torch.ops.llama.fast_hadamard_transform(x))


def per_row_ready(record) -> tuple[torch.Tensor, torch.Tensor]:
    """(qdata, scale) with the positive scales XNNPACK needs: a zero-scale row (an unused token's) holds
    zeros with scale 1; a negative-scale row is negated. The weight they stand for is unchanged."""
    qdata, scale = record.qdata, record.scale.to(torch.float32)
    if bool((scale > 0).all()):
        return qdata, scale
    per_value = lambda mask: mask.repeat_interleave(record.group_size, dim=1)  # noqa: E731
    zero, negative = scale == 0, scale < 0
    if bool((qdata[per_value(negative)] == -128).any()):
        raise ExportError("a negative-scale row holds -128, which has no positive-scale form",
                          fix="export with --requantize")
    qdata = torch.where(per_value(negative), -qdata, torch.where(per_value(zero), torch.zeros_like(qdata), qdata))
    return qdata, torch.where(zero, torch.ones_like(scale), scale.abs())


class PrequantizedQuantizer:
    """Stands in for quantize/apply.PartQuantizer when weight matrices come quantized: each part's
    embedding and linears get the checkpoint's integers and scales. The float weights already in the
    module must be exactly their dequantized value (checked), so the float reference is the model of
    those integers. A matrix without a record goes to ``fallback`` (a PartQuantizer: the recipe's scheme
    for it, from its float values); without one it is an error."""

    calibrator = None

    def __init__(self, model: nn.Module, records: dict, tied: bool = False, fallback=None):
        self.model, self.records, self.tied, self.fallback = model, records, tied, fallback
        self.calibrated: list[str] = []
        self.schemes: dict[str, LayerQuant] = {}
        self.sources: dict[str, str] = {}
        self.split: list[str] = []  # linears held as GroupLinear
        self.shared = False  # the tied embedding reads the output layer's int8 matrix

    def _key(self, name: str) -> str:
        return "tok_embeddings.weight" if (self.tied and name == "output") else f"{name}.weight"

    def _record(self, name: str):
        record = self.records.get(self._key(name))
        if record is None:
            raise ExportError(f"{name} has no quantized weights in the checkpoint",
                              fix="export with --requantize to quantize it with a recipe")
        return record

    def observe(self, prefix: str):
        return contextlib.nullcontext()

    @torch.no_grad()
    def quantize(self, prefix: str) -> None:
        def inside(name: str) -> bool:
            return not prefix or name == prefix or name.startswith(prefix + ".")

        targets = [(name, module) for name, module in self.model.named_modules()
                   if inside(name) and isinstance(module, (nn.Embedding, nn.Linear))
                   and type(module.weight) in (torch.Tensor, nn.Parameter) and name != "output_mix"]
        for name, module in targets:
            if self.fallback is not None and self._key(name) not in self.records:
                self.fallback.quantize(name)
                continue
            record = self._record(name)
            embedding = isinstance(module, nn.Embedding)
            if not module.weight.is_meta and not torch.equal(module.weight, record.float_weight()):
                raise ExportError(f"{name}: the float weights are not the checkpoint's integers x scales",
                                  fix="report this; export with --requantize meanwhile")
            self.schemes[name] = layer_quant(record, embedding=embedding)
            self.sources[name] = record.source
            if embedding:
                output = getattr(self.model, "output", None)
                if self.tied and self._shares(record) and isinstance(output, nn.Linear) and \
                        type(output.weight) not in (torch.Tensor, nn.Parameter):
                    module.weight = output.weight  # one int8 matrix for the lookup and the output matmul
                    self.shared = True
                    continue
                module.weight = nn.Parameter(intx_tensor(record.qdata, record.scale, record.bits,
                                                         record.group_size, dynamic=False), requires_grad=False)
                continue
            if GroupLinear.needed(record):
                layer = GroupLinear(record.qdata, record.scale, record.bits, record.group_size)
                self.split.append(name)
            else:
                qdata, scale = per_row_ready(record) if record.group_size == record.qdata.shape[1] else \
                    (record.qdata, record.scale)
                module.weight = nn.Parameter(intx_tensor(qdata, scale, record.bits, record.group_size, dynamic=True),
                                             requires_grad=False)
                layer = module
            if record.lora_a is not None:
                layer = LoraLinear(layer, record.lora_a, record.lora_b, record.lora_scale)
            if record.online_hadamard:
                layer = HadamardInput(layer)
            if layer is not module:
                parent, _, child = name.rpartition(".")
                setattr(self.model.get_submodule(parent) if parent else self.model, child, layer)

    @staticmethod
    def _shares(record) -> bool:
        """A tied matrix stored once: int8 per row serves the embedding lookup and the output matmul."""
        return record.bits == 8 and record.group_size == record.qdata.shape[1]

    def finish(self) -> dict[str, dict]:
        """Every matrix holds the checkpoint's integers; the configs that describe them, for the manifest."""
        missed = [name for name, m in self.model.named_modules()
                  if isinstance(m, (nn.Linear, nn.Embedding)) and type(m.weight) in (torch.Tensor, nn.Parameter)
                  and not name.endswith((".offset", ".lora_a", ".lora_b")) and name != "output_mix"]
        if missed:
            raise ExportError(f"{len(missed)} weight matrices got no quantized weights (first: {missed[0]})",
                              fix="export with --requantize")
        applied = self.fallback.finish(check=False) if self.fallback is not None else {}
        groups: dict[tuple, list[str]] = {}
        for name, quant in self.schemes.items():
            groups.setdefault((quant, self.sources[name], name == "tok_embeddings"), []).append(name)
        if self.shared:
            applied["embedding:tok_embeddings"] = {"shared_with": "output"}
            groups = {key: names for key, names in groups.items() if not key[2]}
        for (quant, source, embedding), names in groups.items():
            kind = "embedding" if embedding else "linear"
            described = ",".join(names) if len(names) <= 4 else f"{len(names)} layers incl. {names[0]}"
            split = sum(name in self.split for name in names)
            config = torchao_config(LayerQuant(quant.scheme if not split or quant.weight_bits == 4 else "8da4w",
                                               quant.group_size), embedding=embedding)
            held = ("two int4 group matrices (q = 16*hi + lo + 8) + 8 x scale on each group's sum: XNNPACK has "
                    "no int8 group weights" if quant.weight_bits == 8 else
                    "int4 groups with positive scales (negative-scale groups as -q - 1, + scale on the group's "
                    "sum): XNNPACK takes positive group scales only")
            applied[f"{kind}:{described}"] = {
                "prequantized": source, "values": "the checkpoint's integers and scales, not requantized",
                **({"held_as": held, "split_layers": split} if split else {}),
                "config": config_to_dict(config)}
        return applied


def schemes_of(records: dict, tied: bool) -> dict[str, LayerQuant]:
    """{module name: the scheme its record is kept as} ({Meta weight name: record} in)."""
    schemes = {name.removesuffix(".weight"): layer_quant(record, embedding=name == "tok_embeddings.weight")
               for name, record in records.items()}
    if tied and "tok_embeddings.weight" in records:
        schemes["output"] = layer_quant(records["tok_embeddings.weight"], embedding=False)
    return schemes


def as_published_recipe(schemes: dict[str, LayerQuant], summary: str) -> Recipe:
    """The recipe that describes what was kept (manifest, plan, quant_for): the most common block scheme,
    the embedding's and the output's, and an override for every other layer."""
    embedding = schemes.get("tok_embeddings", LayerQuant("8w"))
    output = schemes.get("output", LayerQuant("8da8w"))
    blocks = {name: quant for name, quant in schemes.items() if name.startswith("layers.")}
    linear = Counter(blocks.values()).most_common(1)[0][0] if blocks else LayerQuant("8da4w", 32)
    overrides = tuple(Override(re.escape(name), quant) for name, quant in blocks.items() if quant != linear)
    return Recipe(name=AS_PUBLISHED, summary=summary, dtype="fp32", linear=linear, embedding=embedding,
                  output=output, overrides=overrides, thresholds=AS_PUBLISHED_THRESHOLDS)
