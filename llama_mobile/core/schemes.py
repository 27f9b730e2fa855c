"""Quantization schemes: the one place their names are spelled, with the bits and activations each stores.

A scheme name reads "<activation bits><d: dynamic>a<weight bits>w": 8da4w is int8 activations quantized per
token at run time times int4 weights; 4w and 8w quantize the weights only; 16a4w (PT2E, NPU backends)
calibrates static 16-bit activations ahead of time. fp32 and bf16 leave a layer in float. Members are
strings ("8da4w" == Scheme.DA8W4), so recipe TOML values and manifests keep their text.
"""
from __future__ import annotations

from enum import Enum


class Activations(Enum):
    FLOAT = "float"  # the layer stays float: no quantization at all
    WEIGHT_ONLY = "weight-only"  # float activations; integer weights dequantized by the kernel
    DYNAMIC = "dynamic"  # int activations quantized per token at run time (torchao)
    STATIC = "static"  # int activations with scales calibrated ahead of time (a backend's PT2E quantizer)


class Scheme(str, Enum):
    weight_bits: int
    activations: Activations
    activation_bits: int | None  # None: float activations

    def __new__(cls, value: str, weight_bits: int, activations: Activations, activation_bits: int | None = None):
        member = str.__new__(cls, value)
        member._value_ = value
        member.weight_bits, member.activations, member.activation_bits = weight_bits, activations, activation_bits
        return member

    # The order is the one error messages list them in.
    FP32 = "fp32", 32, Activations.FLOAT
    BF16 = "bf16", 16, Activations.FLOAT
    DA8W4 = "8da4w", 4, Activations.DYNAMIC, 8
    DA8W8 = "8da8w", 8, Activations.DYNAMIC, 8
    W4 = "4w", 4, Activations.WEIGHT_ONLY
    W8 = "8w", 8, Activations.WEIGHT_ONLY
    A16W4 = "16a4w", 4, Activations.STATIC, 16
    A16W8 = "16a8w", 8, Activations.STATIC, 16
    A8W8 = "8a8w", 8, Activations.STATIC, 8

    # Read as the plain name wherever a string is formatted (Python 3.11 would say "Scheme.DA8W4").
    __str__ = str.__str__
    __format__ = str.__format__

    @property
    def is_float(self) -> bool:
        return self.activations is Activations.FLOAT


# Where each scheme may stand in a recipe: torchao quantizes linears and embeddings (an embedding is a
# lookup, so it has no activations to quantize); a [pt2e] section names a backend quantizer's scheme.
LINEAR_SCHEMES = tuple(s for s in Scheme if s.activations is not Activations.STATIC)
EMBEDDING_SCHEMES = (Scheme.FP32, Scheme.BF16, Scheme.W8, Scheme.W4)
PT2E_SCHEMES = tuple(s for s in Scheme if s.activations is Activations.STATIC)
FLOAT_SCHEMES = tuple(s for s in Scheme if s.is_float)

