"""Quality of llama.cpp's quantization on the same tokens, against the same FP32 reference."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from llama_mobile.core.bundle import Bundle
from llama_mobile.core.presets import GENERIC_MODEL, MODEL_PRESETS
from llama_mobile.core.tokenizer import Tokenizer
from llama_mobile.export.checkpoint import load_checkpoint
from llama_mobile.export.model import build_model, load_custom_ops
from llama_mobile.runtime_harness.gguf_peer import source_checkpoint
from llama_mobile.runtime_harness.metrics import compare_logits
from llama_mobile.runtime_harness.parity import eval_token_ids, reference_logits
from llama_mobile.runtime_harness.program import Program


def llama_cpp_logits(gguf: Path, token_ids: list[int], threads: int = 2) -> torch.Tensor:
    """Logits at every position, from llama.cpp itself."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=max(512, len(token_ids) + 8), n_threads=threads,
                n_batch=len(token_ids), logits_all=True, verbose=False)
    llm.eval(token_ids)
    return torch.from_numpy(np.array(llm.scores[: len(token_ids)], dtype=np.float32))


def quality_against_peer(bundle: Bundle, gguf: Path, positions: int = 256) -> dict:
    """Top-1, KL and perplexity ratio of the bundle and of the llama.cpp file, against the same FP32
    eager reference (the bundle's source checkpoint) on the same tokens of the shipped text."""
    manifest = bundle.manifest
    checkpoint = source_checkpoint(manifest)
    preset = manifest.model.preset
    loaded = load_checkpoint(preset if preset in MODEL_PRESETS else GENERIC_MODEL, checkpoint)
    load_custom_ops()
    tokenizer = Tokenizer(bundle.tokenizer)
    context = bundle.context_length
    token_ids = eval_token_ids(tokenizer, min(positions, context), bos_id=manifest.special_tokens.bos_id)
    reference = reference_logits(build_model(loaded.architecture, context, loaded.state_dict), token_ids)
    ours = compare_logits(reference, Program.of(bundle).logits_per_position(token_ids), token_ids)
    peer = compare_logits(reference, llama_cpp_logits(gguf, token_ids), token_ids)
    keys = ("top1_agreement", "kl_mean", "ppl_ratio", "cosine_mean")
    return {"positions": len(token_ids), "reference": "fp32 eager",
            "executorch": {k: ours.to_dict()[k] for k in keys},
            "llama.cpp": {k: peer.to_dict()[k] for k in keys}}
