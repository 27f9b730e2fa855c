"""Writers of real-format checkpoints (Meta, Hugging Face) with random weights, for tests."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

from llama_mobile.core.architecture import Architecture
from llama_mobile.export.model import expected_shapes

TINY = Architecture(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, vocab_size=300,
                    rope_theta=10000.0, tied_embeddings=False, max_position=256)

TINY_TEXT = ["Alice was beginning to get very tired of sitting by her sister on the bank, and of having "
             "nothing to do: once or twice she had peeped into the book her sister was reading."] * 8


def random_state_dict(arch: Architecture, seed: int = 0, scale: float = 0.08) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in expected_shapes(arch).items():
        if name.endswith("norm.weight"):
            state[name] = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        else:
            state[name] = scale * torch.randn(shape, generator=generator)
    return state


def write_tiny_tokenizer_json(path: Path, vocab_size: int = 300) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TINY_TEXT, trainer)
    tokenizer.save(str(path))
    return path


def llama3_tokenizer_model() -> Path:
    """Meta's real Llama 3 tokenizer.model, shipped in the llama-models wheel."""
    spec = importlib.util.find_spec("llama_models")
    return Path(next(iter(spec.submodule_search_locations))) / "llama3" / "tokenizer.model"


def write_tiny_tiktoken(path: Path) -> Path:
    """A byte-level tiktoken file: 256 single-byte tokens; Llama 3's specials follow them (ids 256+)."""
    import base64

    lines = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_meta(folder: Path, arch: Architecture, state: dict[str, torch.Tensor],
               tokenizer: Path | None = None, dtype: torch.dtype = torch.bfloat16) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    from llama_mobile.core.architecture import llama_ffn_hidden

    hidden_multiplier = round(arch.ffn_hidden / int(8 * arch.dim / 3), 4)
    if llama_ffn_hidden(arch.dim, 32, hidden_multiplier) != arch.ffn_hidden:
        raise ValueError(f"no params.json multiplier gives ffn_hidden={arch.ffn_hidden}")
    params = {"dim": arch.dim, "n_layers": arch.n_layers, "n_heads": arch.n_heads,
              "n_kv_heads": arch.n_kv_heads, "vocab_size": arch.vocab_size, "multiple_of": 32,
              "ffn_dim_multiplier": hidden_multiplier, "norm_eps": arch.norm_eps,
              "rope_theta": arch.rope_theta, "use_scaled_rope": arch.rope_scaling is not None}
    (folder / "params.json").write_text(json.dumps(params))
    torch.save({k: v.to(dtype) for k, v in state.items()}, folder / "consolidated.00.pth")
    if tokenizer is None:
        write_tiny_tiktoken(folder / "tokenizer.model")
    else:
        (folder / "tokenizer.model").write_bytes(tokenizer.read_bytes())
    return folder


def write_hf(folder: Path, arch: Architecture, state: dict[str, torch.Tensor],
             dtype: torch.dtype = torch.bfloat16, tokenizer_json: Path | None = None) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": arch.dim,
              "num_hidden_layers": arch.n_layers, "num_attention_heads": arch.n_heads,
              "num_key_value_heads": arch.n_kv_heads, "intermediate_size": arch.ffn_hidden,
              "vocab_size": arch.vocab_size, "rope_theta": arch.rope_theta, "rms_norm_eps": arch.norm_eps,
              "tie_word_embeddings": arch.tied_embeddings, "max_position_embeddings": arch.max_position,
              "bos_token_id": 0, "eos_token_id": [1, 2], "torch_dtype": "bfloat16"}
    if arch.rope_scaling:
        s = arch.rope_scaling
        config["rope_scaling"] = {"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                                  "high_freq_factor": s.high_freq_factor,
                                  "original_max_position_embeddings": s.original_max_position}
    (folder / "config.json").write_text(json.dumps(config))
    from llama_mobile.export.hf_writer import DTYPES, hf_tensors

    dtype_name = next(name for name, (torch_dtype, _) in DTYPES.items() if torch_dtype == dtype)
    tensors = hf_tensors(arch, state, dtype_name)  # the same mapping `llama-mobile prune` writes with
    save_file(tensors, str(folder / "model.safetensors"))
    write_tiny_tokenizer_json(folder / "tokenizer.json") if tokenizer_json is None else \
        (folder / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    return folder


# Wide enough for every shipped group size (256 divides dim, heads x head_dim and the MLP width).
TINY_WIDE = Architecture(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=512, vocab_size=300,
                         rope_theta=10000.0, tied_embeddings=False, max_position=256)


PEFT_MODULES = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
                "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
                "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
                "feed_forward.w2": "mlp.down_proj"}


def peft_adapter_tensors(arch: Architecture, rank: int, targets: tuple[str, ...], seed: int,
                         scale: float = 0.1) -> dict[str, torch.Tensor]:
    """PEFT's keys and Hugging Face's layout: A [rank, in], B [out, rank] per adapted linear."""
    generator = torch.Generator().manual_seed(seed)
    shapes = expected_shapes(arch)
    tensors = {}
    for layer in range(arch.n_layers):
        for target in targets:
            out_features, in_features = shapes[f"layers.{layer}.{target}.weight"]
            key = f"base_model.model.model.layers.{layer}.{PEFT_MODULES[target]}"
            tensors[f"{key}.lora_A.weight"] = scale * torch.randn(rank, in_features, generator=generator)
            tensors[f"{key}.lora_B.weight"] = scale * torch.randn(out_features, rank, generator=generator)
    return tensors


def write_peft_adapter(folder: Path, arch: Architecture, *, rank: int = 4, alpha: float = 8.0, seed: int = 0,
                       targets: tuple[str, ...] = ("attention.wq", "attention.wk", "attention.wv",
                                                   "feed_forward.w2"),
                       tensors: dict[str, torch.Tensor] | None = None, config: dict | None = None) -> Path:
    """A PEFT LoRA adapter folder: adapter_config.json + adapter_model.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = peft_adapter_tensors(arch, rank, targets, seed) if tensors is None else tensors
    modules = sorted({PEFT_MODULES[t].split(".")[-1] for t in targets})
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": modules, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "base_model_name_or_path": "tiny", **(config or {})}))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"))
    return folder
