"""The tokenizer a bundle ships, read by the same C++ code as ExecuTorch's runner (pytorch_tokenizers).

User text never becomes control tokens. pytorch_tokenizers' encode(text, bos, eos) always turns a special
token written in the text (<|im_end|>, <|eot_id|>, ...) into its id and has no option not to, and
ExecuTorch's TextLLMRunner (Python, Android, iOS) takes only a string and tokenizes the whole rendered prompt
with that same encode (its only token-id input, make_token_input, belongs to MultimodalRunner and needs a
multimodal program). So a prompt cannot be rendered by tokens where the apps run it; it is made safe as
text instead, by one rule that the Android and iOS cores repeat (ControlTokens.kt, ControlTokens.swift,
checked by tests/vectors/injection.json):

  In text that comes from a user (a chat message, a Guard conversation turn), a WORD JOINER (U+2060) is
  inserted after the "<" of every "<|" and after the first character of every occurrence of one of the
  MARKERS (and of any extra special-token strings the caller passes).

Every special token of the Llama 3 tokenizers (all 256, reserved ones included) and the ChatML control
tokens begin with "<|"; MARKERS are the other special tokens of the embedded SmolLM2 tokenizer. The joiner
is invisible, so the text reads the same; no special token survives it (each occurrence is cut after its
first character), it is idempotent, and the template's own control tokens, which are not user text, keep
their ids. Python, the apps and validate thus hand the runner the same string and get the same ids.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path

from llama_mobile.core.errors import ConfigError, TokenizerError
from llama_mobile.core.presets import CHATML_SMOL, LLAMA3_CHAT, ChatTemplate

HF_JSON, TIKTOKEN = "hf-json", "tiktoken"


WORD_JOINER = "\u2060"
# The special tokens of the embedded SmolLM2 tokenizer that do not begin with "<|" (StarCoder's markers).
MARKERS = ("<repo_name>", "<reponame>", "<file_sep>", "<filename>", "<gh_stars>", "<issue_start>",
           "<issue_comment>", "<issue_closed>", "<jupyter_start>", "<jupyter_text>", "<jupyter_code>",
           "<jupyter_output>", "<jupyter_script>", "<empty_output>")


def neutralize_specials(text: str, extra: Iterable[str] = ()) -> str:
    """User text that cannot spell a special token: U+2060 after the "<" of every "<|" and after the first
    character of every MARKERS or `extra` occurrence (strings of one character are ignored)."""
    cuts = tuple(s for s in (*MARKERS, *extra) if len(s) > 1 and not s.startswith("<|"))
    out = []
    for i, ch in enumerate(text):
        out.append(ch)
        if (ch == "<" and text.startswith("|", i + 1)) or any(text.startswith(s, i) for s in cuts):
            out.append(WORD_JOINER)
    return "".join(out)


def chat_prompt(template, message: str, extra: Iterable[str] = ()) -> str:
    """A prompt template (a ChatTemplate, or a manifest's prompt_template mapping) filled with one user
    message, neutralized (never a control token). One pass: "{content}" in the message is kept."""
    part = template.__getitem__ if isinstance(template, Mapping) else lambda key: getattr(template, key)
    user = part("user").replace("{content}", neutralize_specials(message, extra))
    return part("prefix") + user + part("assistant_start")


ROLES = ("system", "user", "assistant", "tool")


def conversation_template(template):
    """The multi-turn form of a template (a ChatTemplate or a manifest's prompt_template mapping). A bundle
    written before the multi-turn fields gets the preset format of the same name ("chatml": SmolLM2's,
    "llama3": Meta's) when its single-turn parts agree with it; anything else is refused."""
    if isinstance(template, Mapping):
        names = ChatTemplate.__dataclass_fields__
        template = ChatTemplate(**{k: v for k, v in template.items() if k in names})
    if template.multi_turn:
        return template
    for known in (CHATML_SMOL, LLAMA3_CHAT):
        if (template.name, template.prefix, template.user, template.assistant_start) == \
                (known.name, known.prefix, known.user, known.assistant_start):
            return known
    raise ConfigError(f"the prompt template {template.name!r} has no multi-turn parts (system, assistant, tool)",
                      fix="re-export the bundle with this llama-mobile version, or use generate --prompt")


def render_chat(template, messages, *, add_generation_prompt: bool = True, extra: Iterable[str] = ()) -> str:
    """A conversation ([{"role", "content"}], roles in ROLES) rendered with a multi-turn template: bos, the
    default system turn when the first message is not a system one, each message's part with its content
    neutralized (never a control token, whoever wrote it), then the generation prompt. The Kotlin and Swift
    cores render it identically (ChatTemplate.render, tests/vectors/chat_turns.json)."""
    template = conversation_template(template)
    out = [template.bos]
    if template.default_system is not None and (not messages or _field(messages[0], "role") != "system"):
        out.append(template.system.replace("{content}", neutralize_specials(template.default_system, extra)))
    for number, message in enumerate(messages):
        role, content = _field(message, "role"), _field(message, "content")
        if role not in ROLES:
            raise ConfigError(f"message {number + 1} has role {role!r}", fix=f"use one of: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ConfigError(f"message {number + 1} ({role}) has no text content", fix='give it "content": "..."')
        out.append(getattr(template, role).replace("{content}", neutralize_specials(content, extra)))
    if add_generation_prompt:
        out.append(template.assistant_start)
    return "".join(out)


def _field(message, key: str):
    return message.get(key) if isinstance(message, Mapping) else getattr(message, key, None)


def tokenizer_kind(path: Path) -> str:
    return HF_JSON if Path(path).suffix == ".json" else TIKTOKEN


class Tokenizer:
    def __init__(self, path: Path):
        from pytorch_tokenizers import CppHFTokenizer, CppTiktoken

        self.path = Path(path)
        self.kind = tokenizer_kind(self.path)
        self._bytes: dict[int, bytes] | None = None
        self._impl = CppHFTokenizer() if self.kind == HF_JSON else CppTiktoken()
        if not self.path.is_file():
            raise TokenizerError("tokenizer file not found", path=path, fix="copy the tokenizer with the model")
        try:
            self._impl.load(str(self.path))
        except Exception as exc:  # the binding raises its own Error type
            raise TokenizerError(f"cannot load tokenizer ({exc})", path=path,
                                 fix="use the tokenizer file downloaded with the model") from None
        if not self._impl.is_loaded():
            raise TokenizerError("cannot load tokenizer", path=path, fix="use the file downloaded with the model")

    @property
    def bos_id(self) -> int:
        return int(self._impl.bos_tok())

    @property
    def eos_id(self) -> int:
        return int(self._impl.eos_tok())

    @property
    def vocab_size(self) -> int:
        return int(self._impl.vocab_size())

    def encode(self, text: str) -> list[int]:
        """Special tokens written in the text (e.g. <|im_start|>) become their ids; no BOS is added.

        As in ExecuTorch's runner, which has no other mode: text from a user goes through
        neutralize_specials() (chat_prompt, format_guard_prompt) before it is rendered into a prompt."""
        return list(self._impl.encode(text, 0, 0))

    @functools.cached_property
    def special_tokens(self) -> dict[str, int]:
        """Every string that encode() turns into one special id: tokenizer.json's added tokens, or the
        tiktoken specials that follow the file's ranks (Llama 3: 128000-128255)."""
        if self.kind == HF_JSON:
            import json

            data = json.loads(self.path.read_text(encoding="utf-8"))
            return {a["content"]: int(a["id"]) for a in data.get("added_tokens", [])}
        ranks = sum(1 for line in self.path.read_text().splitlines() if line.strip())
        return {self._impl.decode(i): i for i in range(ranks, self.vocab_size)}

    def control_ids(self, ids: Iterable[int]) -> list[int]:
        """The special ids among `ids`, in order (to check that only a template's own ones are there)."""
        specials = set(self.special_tokens.values())
        return [i for i in ids if i in specials]

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token (a piece may end inside a multi-byte character)."""
        if self._bytes is None:
            self._bytes = _hf_token_bytes(self.path) if self.kind == HF_JSON else tiktoken_token_bytes(self.path)
        return self._bytes.get(token_id, b"")

    def decode(self, ids: list[int]) -> str:
        """Bytes joined before decoding, so characters split across tokens survive."""
        return b"".join(self.token_bytes(t) for t in ids).decode("utf-8", errors="replace")


def bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable stand-in character of each byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


@functools.cache
def _byte_level_chars() -> tuple[str, ...]:
    by_byte = {byte: char for char, byte in bytes_to_unicode().items()}
    return tuple(by_byte[b] for b in range(256))


def byte_level(data: bytes) -> str:
    """Bytes as a GPT-2 byte-level token string (how tokenizer.json and GGUF vocabularies spell them)."""
    chars = _byte_level_chars()
    return "".join(chars[b] for b in data)


def _hf_token_bytes(path: Path) -> dict[int, bytes]:
    import json

    data = json.loads(path.read_text(encoding="utf-8"))
    alphabet = bytes_to_unicode()
    table = {}
    for token, token_id in data.get("model", {}).get("vocab", {}).items():
        if all(ch in alphabet for ch in token):
            table[token_id] = bytes(alphabet[ch] for ch in token)
        else:
            table[token_id] = token.encode("utf-8")
    for added in data.get("added_tokens", []):
        table[added["id"]] = added["content"].encode("utf-8")
    return table


def tiktoken_token_bytes(path: Path) -> dict[int, bytes]:
    import base64

    table = {}
    for line in path.read_text().splitlines():
        if line.strip():
            token, rank = line.split()
            table[int(rank)] = base64.b64decode(token)
    return table


def check_vocab(tokenizer: Tokenizer, model_vocab: int) -> None:
    """A tokenizer for another model would produce ids the embedding does not have."""
    if tokenizer.vocab_size > model_vocab:
        raise TokenizerError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only "
                             f"{model_vocab}", path=tokenizer.path,
                             fix="use the tokenizer that was downloaded with this checkpoint")
