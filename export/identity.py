"""Special tokens and chat template for a checkpoint: the preset's, or inferred for a generic Llama."""
from __future__ import annotations

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.presets import (
    CHATML_SMOL,
    LLAMA3_CHAT,
    LLAMA3_SPECIALS,
    ChatTemplate,
    ModelPreset,
    SpecialTokens,
)

LLAMA3_VOCAB = 128256
PLAIN_TEMPLATE = ChatTemplate(name="plain", prefix="", user="{content}", assistant_start="")


def resolve_identity(preset: ModelPreset | None, arch: Architecture, bos_id: int | None,
                     eos_ids: tuple[int, ...] | None) -> tuple[SpecialTokens, ChatTemplate]:
    if preset is not None:
        return preset.specials, preset.chat_template
    if arch.vocab_size == LLAMA3_VOCAB and bos_id in (None, LLAMA3_SPECIALS.bos_id):
        return LLAMA3_SPECIALS, LLAMA3_CHAT
    specials = SpecialTokens(bos_id=bos_id if bos_id is not None else 1, eos_ids=eos_ids or (2,))
    template = CHATML_SMOL if specials.bos_id == 1 and specials.eos_ids == (2,) else PLAIN_TEMPLATE
    return specials, template
