"""Special tokens and chat template for a checkpoint: the preset's, or inferred for a generic Llama.

A Hugging Face checkpoint's own template (tokenizer_config.json "chat_template") is Jinja; the apps never
run Jinja. template_from_jinja recognises the known formats (ChatML, Llama 3) and maps them to a
ChatTemplate the Kotlin and Swift cores render; any other is not used (the inferred template stays, and
the returned note says so).
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

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
                     eos_ids: tuple[int, ...] | None, jinja: str | None = None) -> tuple[SpecialTokens, ChatTemplate]:
    """jinja: the checkpoint's own chat template, when it has one; a known format wins over the inference."""
    if preset is not None:
        return preset.specials, preset.chat_template
    specials, template = _infer(arch, bos_id, eos_ids)
    mapped, _note = template_from_jinja(jinja)
    return specials, mapped or template


def _infer(arch: Architecture, bos_id: int | None,
           eos_ids: tuple[int, ...] | None) -> tuple[SpecialTokens, ChatTemplate]:
    if arch.vocab_size == LLAMA3_VOCAB and bos_id in (None, LLAMA3_SPECIALS.bos_id):
        return LLAMA3_SPECIALS, LLAMA3_CHAT
    specials = SpecialTokens(bos_id=bos_id if bos_id is not None else 1, eos_ids=eos_ids or (2,))
    template = CHATML_SMOL if specials.bos_id == 1 and specials.eos_ids == (2,) else PLAIN_TEMPLATE
    return specials, template


def checkpoint_jinja(folder: Path) -> str | None:
    """The "chat_template" of a Hugging Face folder's tokenizer_config.json (a string, or the "default" one of
    a list of named templates); None when there is none or it cannot be read."""
    try:
        data = json.loads((Path(folder) / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = data.get("chat_template") if isinstance(data, dict) else None
    if isinstance(found, list):
        found = next((t.get("template") for t in found if isinstance(t, dict) and t.get("name") == "default"), None)
    return found if isinstance(found, str) else None


_CHATML_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system\\n(.*?)<\|im_end\|>")


def template_from_jinja(jinja: str | None) -> tuple[ChatTemplate | None, str]:
    """(template, note): ChatML and Llama 3 templates are recognised by their control tokens and mapped;
    anything else gives (None, why)."""
    if not jinja:
        return None, "the checkpoint has no chat template"
    if "<|im_start|>" in jinja and "<|im_end|>" in jinja:
        found = _CHATML_DEFAULT_SYSTEM.search(jinja)
        if found is None:  # ChatML without a default system turn
            return dataclasses.replace(CHATML_SMOL, prefix="", default_system=None), "ChatML (no default system turn)"
        system = found.group(1).replace("\\n", "\n")
        if "{{" in system or "{%" in system:
            return None, "ChatML with a computed default system turn: not mapped"
        prefix = CHATML_SMOL.system.replace("{content}", system)
        return dataclasses.replace(CHATML_SMOL, prefix=prefix, default_system=system), "ChatML"
    if "<|start_header_id|>" in jinja and "<|eot_id|>" in jinja:
        note = "Llama 3" + (" (the template's date/knowledge-cutoff system header is not reproduced)"
                            if "Cutting Knowledge Date" in jinja else "")
        return LLAMA3_CHAT, note
    return None, "an unrecognised Jinja chat template (only ChatML and Llama 3 are mapped): the inferred one is used"
