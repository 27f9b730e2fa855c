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
    """Register torch.ops.llama.* (update_cache, custom_sdpa, custom_quantized_sdpa) and
    torch.ops.quantized_decomposed.* (the int8 KV cache's per-token quantization) for eager runs and export."""
    import executorch.kernels.quantized  # noqa: F401  (the out variants to_executorch needs)
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
    from torch.ao.quantization.fx import _decomposed  # noqa: F401


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
        self.kv_cache = "fp32"
        cache_shape = (1, max_context, arch.n_kv_heads, arch.head_dim)
        self.register_buffer("k_cache", torch.zeros(cache_shape), persistent=False)
        self.register_buffer("v_cache", torch.zeros(cache_shape), persistent=False)

    def forward(self, x, start_pos: int, cos, sin, swap, ring=None):
        batch, seqlen, _ = x.shape
        q = self.wq(x).view(batch, seqlen, self.n_heads, self.head_dim)
        k = self.wk(x).view(batch, seqlen, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(batch, seqlen, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin, swap), apply_rope(k, cos, sin, swap)
        if ring is not None:  # an attention sink (CachePositionsWithSink.step): cache slots and the explicit mask
            return self.wo(self._sink_attention(q, k, v, start_pos, *ring).reshape(batch, seqlen, -1))
        if self.kernel == "sdpa":
            return self.wo(self._standard_attention(q, k, v, start_pos).reshape(batch, seqlen, -1))
        if self.kv_cache == "int8":
            return self.wo(self._int8_attention(q, k, v, start_pos).reshape(batch, seqlen, -1))
        torch.ops.llama.update_cache(k, self.k_cache, start_pos)
        torch.ops.llama.update_cache(v, self.v_cache, start_pos)
        # The custom op handles grouped-query attention and the causal mask from start_pos.
        out = torch.ops.llama.custom_sdpa(q, self.k_cache, self.v_cache, start_pos, None, 0, True)
        return self.wo(out.reshape(batch, seqlen, -1))

    def use_int8_cache(self) -> None:
        """ExecuTorch's quantized KV cache (examples/models/llama/source_transformation/custom_kv_cache.py
        QuantizedKVCache, sdpa.py QuantizedSDPA): int8 values with a float32 scale and an int8 zero point
        per token and head, attended by ``llama::custom_quantized_sdpa`` without a float copy of the cache."""
        shape = self.k_cache.shape
        self.kv_cache = "int8"
        self.k_cache = torch.zeros(shape, dtype=torch.int8)
        self.v_cache = torch.zeros(shape, dtype=torch.int8)
        for name in ("k_cache_scales", "v_cache_scales"):
            self.register_buffer(name, torch.ones(*shape[:-1], 1), persistent=False)
        for name in ("k_cache_zero_points", "v_cache_zero_points"):
            self.register_buffer(name, torch.zeros(*shape[:-1], 1, dtype=torch.int8), persistent=False)

    def _int8_attention(self, q, k, v, start_pos: int):
        k_int8, k_scale, k_zero = _quantize_per_token(k)
        v_int8, v_scale, v_zero = _quantize_per_token(v)
        for value, cache in ((k_int8, self.k_cache), (k_scale, self.k_cache_scales),
                             (k_zero, self.k_cache_zero_points), (v_int8, self.v_cache),
                             (v_scale, self.v_cache_scales), (v_zero, self.v_cache_zero_points)):
            torch.ops.llama.update_cache(value, cache, start_pos)
        q_int8, q_scale, q_zero = _quantize_per_token(q)
        return torch.ops.llama.custom_quantized_sdpa(
            q_int8, self.k_cache, self.v_cache, start_pos, None, 0, True, None, q_zero, q_scale,
            self.k_cache_zero_points, self.k_cache_scales, self.v_cache_zero_points, self.v_cache_scales)

    def _sink_attention(self, q, k, v, start_pos, slots, mask):
        """ExecuTorch's CustomKVCacheWithAttentionSink + SDPACustom(use_attention_mask=True): the new keys and
        values written to their ring slots by ``llama::update_cache_with_indices`` (no bound on start_pos), then
        ``llama::custom_sdpa`` over the whole cache with the explicit mask instead of its causal one."""
        torch.ops.llama.update_cache_with_indices(k, self.k_cache, start_pos, slots)
        torch.ops.llama.update_cache_with_indices(v, self.v_cache, start_pos, slots)
        return torch.ops.llama.custom_sdpa(q, self.k_cache, self.v_cache, 0, mask, 0, False)

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


def _quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int8 per [batch, position, head] row, as ExecuTorch's QuantizedKVCache does it."""
    scale, zero = torch.ops.quantized_decomposed.choose_qparams_per_token_asymmetric.default(x, torch.int8)
    values = torch.ops.quantized_decomposed.quantize_per_token(x, scale, zero, -128, 127, torch.int8)
    return values, scale.to(torch.float32), zero.to(torch.int8)


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

    def forward(self, x, start_pos: int, cos, sin, swap, ring=None):
        h = x + self.attention(self.attention_norm(x), start_pos, cos, sin, swap, ring)
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
        self.attention_sink: CachePositionsWithSink | None = None  # use_attention_sink()

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        seqlen = tokens.shape[1]
        start_pos = input_pos[0].item()
        torch._check(start_pos >= 0)
        if self.attention_sink is None:
            torch._check(start_pos + seqlen <= self.max_context)
            cos, sin = self.rope_at(start_pos, seqlen)
            ring = None
        else:
            cos, sin, ring = self._sink_step(start_pos, seqlen)
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, start_pos, cos, sin, self.rope_swap, ring)
        if not self.all_logits:
            h = h[:, -1, :]
        return self.head(h)

    def _sink_step(self, start_pos, seqlen: int) -> tuple[torch.Tensor, torch.Tensor, tuple]:
        """With an attention sink, any start position (no end of context): RoPE at the true positions and one
        (slots, mask) for every block.

        Positions have no bound, so cos/sin come from the position in the graph (float32 angle p x frequency,
        the same products as rope_tables' rows) rather than from a table. XNNPACK takes the cos/sin (SmolLM2
        4,256: no cos/sin among the ops outside delegates) and a decode step costs no measurable time more."""
        sink = self.attention_sink
        torch._check(seqlen <= sink.window)  # a longer chunk would overwrite keys its own first queries need
        slots, mask = sink.step(start_pos, seqlen)
        positions = torch.arange(seqlen, dtype=torch.long) + start_pos
        angles = positions.to(torch.float32).view(seqlen, 1, 1) * self.rope_inv_freq  # [S, 1, head_dim]
        return torch.cos(angles), torch.sin(angles), (slots.unsqueeze(0), mask)

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
        if self.attention_sink is not None:
            self.attention_sink.cache_positions.zero_()

    def use_int8_kv_cache(self) -> None:
        """Swap every block's float32 KV cache for ExecuTorch's int8 one (custom attention kernel only);
        done after the float reference is computed, so parity measures what the int8 cache costs."""
        for layer in self.layers:
            if layer.attention.kernel != "custom":
                raise ValueError("an int8 KV cache needs the custom attention kernel (XNNPACK targets)")
            layer.attention.use_int8_cache()


    def use_attention_sink(self, sink_size: int, window: int) -> None:
        """Swap every block's KV cache for a ring with attention sinks (CachePositionsWithSink): the cache becomes
        sink_size + 2 x window positions and the program takes any start position. Custom attention kernel,
        float32 cache only; done after the float reference is computed, as use_int8_kv_cache. RoPE is computed
        from the true position in the graph (_forward_with_sink), so the cos/sin tables go and the frequencies,
        repeated over each interleaved pair, take their place."""
        for layer in self.layers:
            if layer.attention.kernel != "custom" or layer.attention.kv_cache != "fp32":
                raise ValueError("an attention sink needs the custom attention kernel and a float32 KV cache")
        self.attention_sink = sink = CachePositionsWithSink(sink_size, window)
        arch = self.arch
        freqs = rope_frequencies(arch.head_dim, arch.rope_theta, arch.rope_scaling)
        self.register_buffer("rope_inv_freq", freqs.repeat_interleave(2), persistent=False)
        empty = torch.zeros(0, 1, arch.head_dim)  # not in the program: a table would bound the position
        self.rope_cos, self.rope_sin = empty, empty.clone()
        for layer in self.layers:
            attention = layer.attention
            shape = (1, sink.cache_size, *attention.k_cache.shape[2:])
            attention.k_cache = torch.zeros(shape, dtype=attention.k_cache.dtype)
            attention.v_cache = torch.zeros(shape, dtype=attention.v_cache.dtype)


class CachePositionsWithSink(nn.Module):
    """ExecuTorch's attention sink (examples/models/llama/source_transformation/attention_sink.py, StreamingLLM,
    arXiv 2309.17453): the first ``sink_size`` positions keep fixed cache slots, every later one goes into a ring
    of 2 x ``window`` slots after them (``CachePositionsManagerWithSink``), and a query sees the sinks plus the
    last ``window`` positions (``_create_causal_mask_for_attention_sink``). Unlike ExecuTorch, RoPE is not
    taken at the remapped slot (``RopeWithAttentionSink``) but at the true position (Transformer._forward_with_sink):
    a key keeps its rotation when the ring wraps, so every query-key distance is the true one.

    One manager for the whole model (ExecuTorch keeps one per block; they hold the same values). Slots store
    position + 1, with 0 for an empty slot: ExecuTorch's runtime zero-fills a mutable buffer, so this needs
    none of the initialisation pass ExecuTorch's -1 sentinel does. Up to sink_size + window positions the
    mask is exactly causal attention over everything. Measured on SmolLM2-135M with 4,256 against full
    attention (README, Chat): where the window spans a wrap, ExecuTorch's remapped RoPE falls to top-1 0.47
    and ppl ratio 3.0 (keys written before the wrap sit at a wrong distance); true positions hold 0.83, 1.17."""

    def __init__(self, sink_size: int, window: int):
        super().__init__()
        if sink_size < 1 or window < 1:
            raise ValueError(f"an attention sink needs sink_size >= 1 and window >= 1, not {sink_size}, {window}")
        self.sink_size, self.window, self.ring = sink_size, window, 2 * window
        self.cache_size = sink_size + self.ring
        self.register_buffer("cache_positions", torch.zeros(self.cache_size, dtype=torch.long), persistent=False)

    def remap(self, positions: torch.Tensor) -> torch.Tensor:
        """A position's cache slot: sinks keep theirs, the rest wrap around the ring."""
        return torch.where(positions < self.sink_size, positions,
                           self.sink_size + (positions - self.sink_size) % self.ring)

    def step(self, start_pos, seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Record positions start_pos.. in their slots; their slots [seqlen] and the mask [seqlen, cache_size]
        (0 where a query may attend, -inf elsewhere) for ``llama::custom_sdpa``."""
        positions = torch.arange(seqlen, dtype=torch.long) + start_pos
        slots = self.remap(positions)
        # A call from an earlier position forgets what was written from there on (start_pos 0: a fresh cache).
        kept = torch.where(torch.arange(self.cache_size, dtype=torch.long) < start_pos, self.cache_positions,
                           torch.zeros_like(self.cache_positions))
        self.cache_positions.copy_(kept)
        self.cache_positions.index_copy_(0, slots, positions + 1)
        stored = self.cache_positions - 1  # -1: empty
        delta = positions.unsqueeze(1) - stored
        visible = (stored >= 0) & (delta >= 0) & ((stored < self.sink_size) | (delta < self.window))
        return slots, torch.where(visible, 0.0, float("-inf"))


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
