"""The tokenizer a bundle ships, read by the same C++ code as ExecuTorch's runner (pytorch_tokenizers)."""
from __future__ import annotations

import functools
from pathlib import Path

from llama_mobile.core.errors import TokenizerError

HF_JSON, TIKTOKEN = "hf-json", "tiktoken"


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
        """Special tokens written in the text (e.g. <|im_start|>) become their ids; no BOS is added."""
        return list(self._impl.encode(text, 0, 0))

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
