"""A Llama decoder fit for torch.export: static KV cache, ExecuTorch's custom SDPA and cache ops.

Weights use Meta's names and Meta's interleaved RoPE layout; every loader converts to them.
forward(tokens [1, S], input_pos [1]) -> logits of the last position [1, vocab], the signature
ExecuTorch's LLM runners call. The same module run eagerly is the parity reference.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from llama_mobile.core.architecture import Architecture, RopeScaling
from llama_mobile.export.tensor_names import META, MODEL_TENSOR, WEIGHT

# A recipe's dtype name -> the torch dtype its graph computes in.
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_custom_ops() -> None:
    """Register torch.ops.llama.* (update_cache, custom_sdpa) for eager runs and export."""
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is None:
        return freqs.float()
    # Llama 3.1's scaling (llama_models/llama3/model.py apply_scaling).
    low_wavelen = scaling.original_max_position / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position / scaling.high_freq_factor
    wavelen = 2 * math.pi / freqs
    smooth = (scaling.original_max_position / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    scaled = torch.where(wavelen > low_wavelen, freqs / scaling.factor, freqs)
    mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    blended = (1 - smooth) * freqs / scaling.factor + smooth * freqs
    return torch.where(mid, blended, scaled).float()


def rope_scale_factors(head_dim: int, theta: float, scaling: RopeScaling) -> torch.Tensor:
    """Per frequency, unscaled / scaled: what llama.cpp stores as the `rope_freqs` tensor."""
    return rope_frequencies(head_dim, theta, None) / rope_frequencies(head_dim, theta, scaling)


def rope_tables(arch: Architecture, max_context: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cos/sin per position, repeated over each interleaved pair ([max_context, 1, head_dim]), and
    the pair-swap matrix R with (x @ R.T)[2i] = -x[2i+1], (x @ R.T)[2i+1] = x[2i]."""
    freqs = torch.outer(torch.arange(max_context, dtype=torch.float32),
                        rope_frequencies(arch.head_dim, arch.rope_theta, arch.rope_scaling))
    cos = torch.cos(freqs).repeat_interleave(2, dim=-1).unsqueeze(1)
    sin = torch.sin(freqs).repeat_interleave(2, dim=-1).unsqueeze(1)
    swap = torch.zeros(arch.head_dim, arch.head_dim)
    even = torch.arange(0, arch.head_dim, 2)
    swap[even, even + 1] = -1.0
    swap[even + 1, even] = 1.0
    return cos, sin, swap


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, swap: torch.Tensor) -> torch.Tensor:
    """x: [B, S, H, D], pairs (2i, 2i+1) rotated together; cos/sin: [S, 1, D].

    The pair swap is a small matmul rather than strided slices and a stack: XNNPACK delegates
    linear/mul/add, while slices and stacks would stay outside as slow portable ops and split
    every block into several delegate calls."""
    return x * cos + torch.nn.functional.linear(x, swap) * sin


RMS_NORMS = ("mean_square", "l2")


class RMSNorm(nn.Module):
    """``kind="mean_square"``: mean(x^2) as a matmul with a constant 1/dim row (XNNPACK delegates it, a
    mean op it would not). ``kind="l2"``: x * sqrt(dim) / ||x||, for graphs computed in fp16 (Core ML):
    x^2 overflows fp16 for the residual stream's outliers (|x| ~ 25000 in SmolLM2), an L2 norm does not.
    The scale is formed before it multiplies x, which alone would overflow times sqrt(dim); eps becomes
    a floor on the norm, as in ExecuTorch's RMSNormCoreML."""

    def __init__(self, dim: int, eps: float, kind: str = "mean_square"):
        super().__init__()
        self.eps = eps
        self.kind = kind
        self.weight = nn.Parameter(torch.ones(dim))
        self.register_buffer("average", torch.full((1, dim), 1.0 / dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "l2":
            dim = x.shape[-1]
            norm = torch.clamp_min(torch.linalg.vector_norm(x, dim=-1, keepdim=True), math.sqrt(dim * self.eps))
            return x * (math.sqrt(dim) * torch.reciprocal(norm)) * self.weight
        mean_square = torch.nn.functional.linear(x * x, self.average)
        return x * torch.rsqrt(mean_square + self.eps) * self.weight


class Attention(nn.Module):
    """Attention with a KV cache.

    ``kernel="custom"`` uses ExecuTorch's LLM ops (update_cache, custom_sdpa): fastest on XNNPACK, but
    only runtimes that link the custom-ops library run them. ``kernel="sdpa"`` writes the cache with a
    slice copy and attends over the whole (masked) cache with standard ops, which backends that own the
    whole graph (Core ML, QNN, Vulkan) can take over, including the cache as state.
    """

    def __init__(self, arch: Architecture, max_context: int, kernel: str = "custom"):
        super().__init__()
        self.kernel = kernel
        self.n_heads, self.n_kv_heads, self.head_dim = arch.n_heads, arch.n_kv_heads, arch.head_dim
        self.wq = nn.Linear(arch.dim, arch.n_heads * arch.head_dim, bias=False)
        self.wk = nn.Linear(arch.dim, arch.n_kv_heads * arch.head_dim, bias=False)
        self.wv = nn.Linear(arch.dim, arch.n_kv_heads * arch.head_dim, bias=False)
        self.wo = nn.Linear(arch.n_heads * arch.head_dim, arch.dim, bias=False)
        cache_shape = (1, max_context, arch.n_kv_heads, arch.head_dim)
        self.register_buffer("k_cache", torch.zeros(cache_shape), persistent=False)
        self.register_buffer("v_cache", torch.zeros(cache_shape), persistent=False)

    def forward(self, x, start_pos: int, cos, sin, swap):
        batch, seqlen, _ = x.shape
        q = self.wq(x).view(batch, seqlen, self.n_heads, self.head_dim)
        k = self.wk(x).view(batch, seqlen, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(batch, seqlen, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin, swap), apply_rope(k, cos, sin, swap)
        if self.kernel == "sdpa":
            return self.wo(self._standard_attention(q, k, v, start_pos).reshape(batch, seqlen, -1))
        torch.ops.llama.update_cache(k, self.k_cache, start_pos)
        torch.ops.llama.update_cache(v, self.v_cache, start_pos)
        # The custom op handles grouped-query attention and the causal mask from start_pos.
        out = torch.ops.llama.custom_sdpa(q, self.k_cache, self.v_cache, start_pos, None, 0, True)
        return self.wo(out.reshape(batch, seqlen, -1))

    def _standard_attention(self, q, k, v, start_pos: int):
        seqlen, max_context = q.shape[1], self.k_cache.shape[1]
        self.k_cache[:, start_pos:start_pos + seqlen] = k
        self.v_cache[:, start_pos:start_pos + seqlen] = v
        query_pos = torch.arange(seqlen).unsqueeze(1) + start_pos
        mask = torch.arange(max_context).unsqueeze(0) <= query_pos  # causal over the filled cache
        repeats = self.n_heads // self.n_kv_heads
        keys = self.k_cache.transpose(1, 2).repeat_interleave(repeats, dim=1)
        values = self.v_cache.transpose(1, 2).repeat_interleave(repeats, dim=1)
        out = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask)
        return out.transpose(1, 2)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, arch: Architecture, layer: int, max_context: int, kernel: str = "custom",
                 rms_norm: str = "mean_square"):
        super().__init__()
        self.attention = Attention(arch, max_context, kernel)
        self.feed_forward = FeedForward(arch.dim, arch.ffn_hidden_of(layer))
        self.attention_norm = RMSNorm(arch.dim, arch.norm_eps, rms_norm)
        self.ffn_norm = RMSNorm(arch.dim, arch.norm_eps, rms_norm)

    def forward(self, x, start_pos: int, cos, sin, swap):
        h = x + self.attention(self.attention_norm(x), start_pos, cos, sin, swap)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, arch: Architecture, max_context: int, attention_kernel: str = "custom",
                 rms_norm: str = "mean_square", output_mix: bool = False):
        super().__init__()
        self.arch = arch
        self.max_context = max_context
        self.tok_embeddings = nn.Embedding(arch.vocab_size, arch.dim)
        self.layers = nn.ModuleList(Block(arch, i, max_context, attention_kernel, rms_norm)
                                    for i in range(arch.n_layers))
        self.norm = RMSNorm(arch.dim, arch.norm_eps, rms_norm)
        self.output = nn.Linear(arch.dim, arch.output_rows, bias=False)
        if arch.tied_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # A rotated model with a tied embedding/output matrix: the final norm's scale in the rotated basis
        # (export/rotation.py), a dim x dim linear between the final norm and the output layer.
        self.output_mix = nn.Linear(arch.dim, arch.dim, bias=False) if output_mix else None
        cos, sin, swap = rope_tables(arch, max_context)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("rope_swap", swap, persistent=False)
        ids = arch.output_token_ids
        self.register_buffer(
            "output_token_ids", torch.tensor(ids if ids else [], dtype=torch.long), persistent=False
        )
        # The eager reference scores every position; the shipped program returns the last only.
        self.all_logits = False

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        seqlen = tokens.shape[1]
        start_pos = input_pos[0].item()
        torch._check(start_pos >= 0)
        torch._check(start_pos + seqlen <= self.max_context)
        cos, sin = self.rope_at(start_pos, seqlen)
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, start_pos, cos, sin, self.rope_swap)
        if not self.all_logits:
            h = h[:, -1, :]
        return self.head(h)

    def rope_at(self, start_pos, seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rope_cos.narrow(0, start_pos, seqlen), self.rope_sin.narrow(0, start_pos, seqlen)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and output layer: float32 logits over the whole vocabulary."""
        h = self.norm(h)
        if self.output_mix is not None:
            h = self.output_mix(h)
        logits = self.output(h).float()
        if self.arch.output_token_ids:
            logits = self._scatter_to_vocab(logits)
        return logits

    def _scatter_to_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """A pruned output layer's rows go back to their token ids; the rest get a floor logit."""
        full_shape = (*logits.shape[:-1], self.arch.vocab_size)
        floor = torch.full(full_shape, -1.0e4, dtype=logits.dtype)
        return floor.index_copy(logits.dim() - 1, self.output_token_ids, logits)

    def reset_cache(self) -> None:
        for layer in self.layers:
            layer.attention.k_cache.zero_()
            layer.attention.v_cache.zero_()


def build_model(arch: Architecture, max_context: int, state_dict: dict[str, torch.Tensor],
                dtype: torch.dtype = torch.float32, attention_kernel: str = "custom",
                rms_norm: str = "mean_square") -> Transformer:
    """Build on the meta device and take the loader's tensors as they are (no second copy)."""
    model = skeleton(arch, max_context, attention_kernel, rms_norm)
    if arch.tied_embeddings:
        state_dict = {**state_dict, "output.weight": state_dict["tok_embeddings.weight"]}
    model.load_state_dict(state_dict, strict=True, assign=True)
    if arch.tied_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return model.to(dtype).eval().requires_grad_(False)


def skeleton(arch: Architecture, max_context: int, attention_kernel: str = "custom",
             rms_norm: str = "mean_square", output_mix: bool = False) -> Transformer:
    """The model's structure with its weights on the meta device (no memory), buffers real. ``output_mix``:
    the extra linear a rotated tied model needs after its final norm (export/rotation.py)."""
    if attention_kernel not in ("custom", "sdpa"):
        raise ValueError(f"attention_kernel must be 'custom' or 'sdpa', not {attention_kernel!r}")
    if rms_norm not in RMS_NORMS:
        raise ValueError(f"rms_norm must be one of {RMS_NORMS}, not {rms_norm!r}")
    with torch.device("meta"):
        model = Transformer(arch, max_context, attention_kernel, rms_norm, output_mix)
    _materialise_buffers(model, arch, max_context)
    return model.eval().requires_grad_(False)


def _materialise_buffers(model: Transformer, arch: Architecture, max_context: int) -> None:
    model.rope_cos, model.rope_sin, model.rope_swap = rope_tables(arch, max_context)
    model.output_token_ids = torch.tensor(arch.output_token_ids or [], dtype=torch.long)
    for norm in model.modules():
        if isinstance(norm, RMSNorm):
            norm.average = torch.full((1, arch.dim), 1.0 / arch.dim)
    for layer in model.layers:
        shape = (1, max_context, arch.n_kv_heads, arch.head_dim)
        layer.attention.k_cache = torch.zeros(shape)
        layer.attention.v_cache = torch.zeros(shape)


def expected_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes a checkpoint of this architecture must have."""
    linears = arch.linear_shapes()
    shapes: dict[str, tuple[int, ...]] = {}
    for kind, name in META.names(arch.n_layers):
        if kind is MODEL_TENSOR.OUTPUT and arch.tied_embeddings:
            continue
        if kind is MODEL_TENSOR.TOKEN_EMBD:
            shapes[name] = (arch.vocab_size, arch.dim)
        else:  # a linear layer's weight, or an RMSNorm's
            shapes[name] = linears.get(name.removesuffix(WEIGHT), (arch.dim,))
    return shapes
