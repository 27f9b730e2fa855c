"""The architecture of a Llama-family decoder, as plain data shared by every stage."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from llama_mobile.core.errors import ConfigError

# Sane maxima for every size a config or file header can claim (the largest Llama 3.x, 405B, has 126 layers,
# dim 16384, 128 heads, MLP 53248, vocabulary 128256, context 131072). Checked before anything is allocated, so
# a 300-byte config cannot claim 100,000,000 layers; what passes is then priced by the memory preflight.
BOUNDS = {
    "dim": 65536,
    "n_layers": 1024,
    "n_heads": 1024,
    "n_kv_heads": 1024,
    "ffn_hidden": 1 << 18,
    "vocab_size": 1 << 20,
    "max_position": 1 << 20,
    "attn_head_dim": 1024,
}
MAX_ROPE_THETA = 1e12
MAX_ROPE_FACTOR = 1024.0


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1+ frequency scaling ("rope_type": "llama3")."""

    factor: float = 32.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass(frozen=True)
class Architecture:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_hidden: int
    vocab_size: int
    rope_theta: float
    norm_eps: float = 1e-5
    rope_scaling: RopeScaling | None = None
    tied_embeddings: bool = False
    max_position: int = 8192
    # Per-layer MLP widths after pruning; None means every layer has ffn_hidden.
    layer_ffn_hidden: tuple[int, ...] | None = None
    # Rows kept in the output layer after vocabulary pruning (original token ids, ascending).
    output_token_ids: tuple[int, ...] | None = None
    # Set when attention heads were pruned: dim is then no longer n_heads x head_dim.
    attn_head_dim: int | None = None

    @property
    def head_dim(self) -> int:
        return self.attn_head_dim or self.dim // self.n_heads

    def ffn_hidden_of(self, layer: int) -> int:
        return self.layer_ffn_hidden[layer] if self.layer_ffn_hidden else self.ffn_hidden

    @property
    def output_rows(self) -> int:
        return len(self.output_token_ids) if self.output_token_ids else self.vocab_size

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(out_features, in_features) of every linear layer, block by block and then the output layer,
        under the model's module names (Meta's), which recipes match: the one place these shapes are spelled."""
        q_width, kv_width = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        shapes = {}
        for i in range(self.n_layers):
            hidden = self.ffn_hidden_of(i)
            for name, shape in (("attention.wq", (q_width, self.dim)), ("attention.wk", (kv_width, self.dim)),
                                ("attention.wv", (kv_width, self.dim)), ("attention.wo", (self.dim, q_width)),
                                ("feed_forward.w1", (hidden, self.dim)), ("feed_forward.w2", (self.dim, hidden)),
                                ("feed_forward.w3", (hidden, self.dim))):
                shapes[f"layers.{i}.{name}"] = shape
        shapes["output"] = (self.output_rows, self.dim)
        return shapes

    def problems(self) -> list[str]:
        """Every inconsistency at once, so a user fixes a config in one pass."""
        found = []
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "vocab_size", "max_position"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                found.append(f"{name} must be a positive integer, got {value!r}")
            elif value > BOUNDS[name]:
                found.append(f"{name}={value} is above this tool's limit of {BOUNDS[name]}")
        if found:
            return found
        if self.attn_head_dim is not None:
            if (not isinstance(self.attn_head_dim, int) or isinstance(self.attn_head_dim, bool)
                    or not 0 < self.attn_head_dim <= BOUNDS["attn_head_dim"] or self.attn_head_dim % 2):
                found.append(f"attn_head_dim must be a positive even integer up to {BOUNDS['attn_head_dim']}, "
                             f"got {self.attn_head_dim!r}")
        elif self.dim % self.n_heads:
            found.append(f"n_heads={self.n_heads} does not divide dim={self.dim}")
        elif self.head_dim % 2:
            found.append(f"head_dim={self.head_dim} must be even for RoPE")
        elif self.head_dim > BOUNDS["attn_head_dim"]:
            found.append(f"head_dim={self.head_dim} is above this tool's limit of {BOUNDS['attn_head_dim']}")
        if self.n_heads % self.n_kv_heads:
            found.append(f"n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}")
        if not (_finite(self.rope_theta) and 0 < self.rope_theta <= MAX_ROPE_THETA):
            found.append(f"rope_theta must be a positive number up to {MAX_ROPE_THETA:g}, got {self.rope_theta!r}")
        if not (_finite(self.norm_eps) and 0 < self.norm_eps < 1):
            found.append(f"norm_eps must be in (0, 1), got {self.norm_eps!r}")
        if not isinstance(self.tied_embeddings, bool):
            found.append(f"tied_embeddings must be true or false, got {self.tied_embeddings!r}")
        scaling = self.rope_scaling
        if scaling is not None and not (
                isinstance(scaling, RopeScaling) and all(_finite(v) and 0 < v <= MAX_ROPE_FACTOR for v in
                                                         (scaling.factor, scaling.low_freq_factor,
                                                          scaling.high_freq_factor))
                and scaling.low_freq_factor < scaling.high_freq_factor
                and isinstance(scaling.original_max_position, int)
                and 0 < scaling.original_max_position <= BOUNDS["max_position"]):
            found.append(f"rope_scaling must have factors in (0, {MAX_ROPE_FACTOR:g}] (low < high) and an original "
                         f"context up to {BOUNDS['max_position']}, got {scaling!r}")
        if self.layer_ffn_hidden is not None:
            widths = self.layer_ffn_hidden
            if len(widths) != self.n_layers:
                found.append(f"layer_ffn_hidden has {len(widths)} entries for {self.n_layers} layers")
            elif not all(isinstance(w, int) and not isinstance(w, bool) and 0 < w <= BOUNDS["ffn_hidden"]
                         for w in widths):
                found.append(f"layer_ffn_hidden entries must be integers in 1..{BOUNDS['ffn_hidden']}")
        if self.output_token_ids is not None:
            ids = self.output_token_ids
            if self.tied_embeddings:
                found.append("a pruned output vocabulary cannot be tied to the embedding")
            if (not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
                    or list(ids) != sorted(set(ids)) or ids[0] < 0 or ids[-1] >= self.vocab_size):
                found.append("output_token_ids must be unique ascending ids below vocab_size")
        return found

    def check(self, path: str | None = None) -> "Architecture":
        found = self.problems()
        if found:
            raise ConfigError(found, path=path, fix="correct the architecture fields listed")
        return self

    def param_count(self) -> int:
        attn = self.dim * (self.n_heads * self.head_dim) * 2 + self.dim * self.n_kv_heads * self.head_dim * 2
        mlp = sum(3 * self.dim * self.ffn_hidden_of(i) for i in range(self.n_layers))
        norms = (2 * self.n_layers + 1) * self.dim
        embed = self.vocab_size * self.dim
        output = 0 if self.tied_embeddings else self.output_rows * self.dim
        return self.n_layers * attn + mlp + norms + embed + output

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Architecture":
        data = dict(data)
        if data.get("rope_scaling"):
            data["rope_scaling"] = RopeScaling(**data["rope_scaling"])
        for key in ("layer_ffn_hidden", "output_token_ids"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)

    def replace(self, **changes) -> "Architecture":
        return dataclasses.replace(self, **changes)


def llama_ffn_hidden(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """The MLP width Meta's params.json implies (llama/model.py FeedForward)."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        scaled = ffn_dim_multiplier * hidden
        if not math.isfinite(scaled) or abs(scaled) > 1 << 62:
            return 0  # out of any range: Architecture.problems() reports ffn_hidden
        hidden = int(scaled)
    return multiple_of * math.ceil(hidden / multiple_of)
