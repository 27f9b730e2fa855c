"""Output-vocabulary pruning: the output layer keeps only the rows of tokens the model must emit.

The model scatters the kept rows back to their token ids (export/model.py), so runners and parity
see the real vocabulary; every other token gets a floor logit and is never chosen.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.errors import UsageError

GUARD = "guard"


def guard_replies(codes: list[str]) -> list[str]:
    """Every reply shape Llama Guard 3 emits: "safe", "unsafe", "unsafe\\nS1", "unsafe\\nS1,S2", ..."""
    replies = ["safe", "unsafe"]
    for a in codes:
        replies.append(f"unsafe\n{a}")
        replies += [f"unsafe\n{a},{b}" for b in codes if b != a]
    return replies


def guard_token_ids(tokenizer, eos_ids: tuple[int, ...], codes: list[str]) -> list[int]:
    """The tokens of every Guard verdict as the tokenizer splits them, plus the end-of-turn tokens."""
    ids = set(eos_ids)
    for reply in guard_replies(codes):
        ids.update(tokenizer.encode(reply))
    return sorted(ids)


def parse_keep_tokens(spec: str, tokenizer, vocab_size: int, eos_ids: tuple[int, ...],
                      guard_codes: list[str]) -> list[int]:
    """`guard`, a file with one token per line, or a comma list; an item is an id or a one-token string.

    The end-of-sequence ids are always kept, so generation can stop."""
    if spec == GUARD:
        ids = guard_token_ids(tokenizer, eos_ids, guard_codes)
    else:
        path = Path(spec)
        items = path.read_text(encoding="utf-8").splitlines() if path.is_file() else spec.split(",")
        ids = set(eos_ids)
        for item in (i for i in items if i != ""):
            if item.strip().isdigit():
                ids.add(int(item.strip()))
                continue
            encoded = tokenizer.encode(item)
            if len(encoded) != 1:
                raise UsageError(f"{item!r} is not a single token ({len(encoded)} tokens: {encoded})",
                                 fix="list token ids, or strings that are exactly one token")
            ids.add(encoded[0])
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise UsageError(f"token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})",
                         fix="list ids the tokenizer has")
    return sorted(ids)


def prune_output(state: dict[str, torch.Tensor], arch: Architecture,
                 keep_ids: list[int]) -> tuple[dict[str, torch.Tensor], Architecture]:
    """A tied output layer is untied: the embedding keeps every row, the output only the kept ones."""
    current = list(arch.output_token_ids) if arch.output_token_ids else None
    weight = state["tok_embeddings.weight"] if arch.tied_embeddings else state["output.weight"]
    if current is not None:
        missing = [i for i in keep_ids if i not in set(current)]
        if missing:
            raise UsageError(f"token {missing[0]} was already pruned from the output layer",
                             fix="keep a subset of the tokens the output layer still has")
        rows = torch.tensor([current.index(i) for i in keep_ids])
    else:
        rows = torch.tensor(keep_ids)
    out = dict(state)
    out["output.weight"] = weight.index_select(0, rows)
    return out, arch.replace(tied_embeddings=False, output_token_ids=tuple(keep_ids))
