"""Recipe override patterns: a small regular-expression language matched in linear time.

A recipe file is user input, and Python's `re` backtracks: `(.*.*)*X` against every layer name would hang
`plan` and `export`. Patterns are parsed here into a Thompson NFA and matched by simulating all states at
once, so a match costs at most (name length x pattern states) steps whatever the pattern.

Syntax (a full match against a module name such as `layers.3.attention.wq`): literal characters; `.`; the
escapes `\\d`, `\\w` and `\\` before any punctuation; classes `[...]` / `[^...]` with ranges; groups `(...)`
and `(?:...)`; `|`; the quantifiers `*`, `+`, `?`, `{n}`, `{n,}`, `{n,m}` (n, m <= 64; a trailing `?` is
accepted and changes nothing for a full match). Anything else (backreferences, lookarounds, flags, anchors)
is refused with the position.
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_PATTERN_LENGTH = 256
MAX_DEPTH = 16  # nested groups
MAX_REPEAT = 64
MAX_STATES = 4096

_DIGITS = frozenset("0123456789")
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_ANY = None  # matches every character


class PatternError(ValueError):
    """A pattern outside the supported syntax; the message names the position."""


@dataclass(frozen=True)
class _Chars:
    chars: frozenset | None  # None: any character
    negated: bool = False

    def matches(self, ch: str) -> bool:
        if self.chars is None:
            return True
        return (ch in self.chars) != self.negated


class _Parser:
    def __init__(self, pattern: str):
        self.text, self.pos = pattern, 0

    def fail(self, what: str):
        raise PatternError(f"{what} at position {self.pos}")

    def peek(self) -> str | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def take(self) -> str:
        ch = self.peek()
        if ch is None:
            self.fail("unexpected end")
        self.pos += 1
        return ch

    def alternation(self, depth: int):
        if depth > MAX_DEPTH:
            self.fail(f"groups nested deeper than {MAX_DEPTH}")
        branches = [self.sequence(depth)]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.sequence(depth))
        return ("alt", branches)

    def sequence(self, depth: int):
        items = []
        while self.peek() not in (None, "|", ")"):
            atom = self.atom(depth)
            low, high = self.quantifier()
            items.append((atom, low, high))
        return ("seq", items)

    def atom(self, depth: int):
        ch = self.take()
        if ch == "(":
            if self.text.startswith("?:", self.pos):
                self.pos += 2
            elif self.peek() == "?":
                self.fail("only (?:...) groups are supported")
            inner = self.alternation(depth + 1)
            if self.peek() != ")":
                self.fail("missing )")
            self.pos += 1
            return inner
        if ch == ".":
            return ("chars", _Chars(_ANY))
        if ch == "[":
            return ("chars", self.char_class())
        if ch == "\\":
            return ("chars", self.escape())
        if ch in "*+?{":
            self.fail(f"nothing to repeat before {ch!r}")
        if ch in "^$)]}":
            self.fail(f"{ch!r} is not supported (patterns match whole names)")
        return ("chars", _Chars(frozenset(ch)))

    def escape(self) -> _Chars:
        ch = self.take()
        if ch == "d":
            return _Chars(_DIGITS)
        if ch == "w":
            return _Chars(_WORD)
        if ch.isalnum() or ch == "_":
            self.fail(f"escape \\{ch} is not supported (use \\d, \\w or escape punctuation)")
        return _Chars(frozenset(ch))

    def char_class(self) -> _Chars:
        negated = self.peek() == "^"
        if negated:
            self.pos += 1
        chars: set[str] = set()
        first = True
        while True:
            ch = self.take()
            if ch == "]" and not first:
                break
            first = False
            if ch == "\\":
                chars |= self.escape().chars
                continue
            if ch == "[":
                self.fail("'[' inside a class must be escaped")
            if self.peek() == "-" and self.pos + 1 < len(self.text) and self.text[self.pos + 1] != "]":
                self.pos += 1
                end = self.take()
                if end == "\\":
                    self.fail("a range cannot end in an escape")
                if ord(end) < ord(ch):
                    self.fail(f"range {ch}-{end} is reversed")
                if ord(end) - ord(ch) > 1024:
                    self.fail(f"range {ch}-{end} is too wide")
                chars |= {chr(c) for c in range(ord(ch), ord(end) + 1)}
            else:
                chars.add(ch)
        return _Chars(frozenset(chars), negated)

    def number(self) -> int:
        start = self.pos
        while self.peek() is not None and self.peek().isdigit():
            self.pos += 1
        if start == self.pos:
            self.fail("expected a number")
        if self.pos - start > 3 or int(self.text[start:self.pos]) > MAX_REPEAT:
            self.fail(f"repeat counts are limited to {MAX_REPEAT}")
        return int(self.text[start:self.pos])

    def quantifier(self) -> tuple[int, int | None]:
        ch = self.peek()
        if ch == "*":
            low, high = 0, None
        elif ch == "+":
            low, high = 1, None
        elif ch == "?":
            low, high = 0, 1
        elif ch == "{":
            self.pos += 1
            low = self.number()
            high = low
            if self.peek() == ",":
                self.pos += 1
                high = None if self.peek() == "}" else self.number()
            if self.peek() != "}":
                self.fail("missing }")
            if high is not None and high < low:
                self.fail(f"repeat {{{low},{high}}} is reversed")
        else:
            return 1, 1
        self.pos += 1
        if self.peek() == "?":  # lazy: the same set of full matches
            self.pos += 1
        if self.peek() in ("*", "+", "?", "{"):
            self.fail("a quantifier cannot follow a quantifier")
        return low, high


class _Nfa:
    """States: ("chars", _Chars, next) | ("split", a, b) | ("match",). Built by Thompson's construction."""

    def __init__(self):
        self.states: list[list] = []

    def add(self, *state) -> int:
        if len(self.states) >= MAX_STATES:
            raise PatternError(f"pattern expands to more than {MAX_STATES} states")
        self.states.append(list(state))
        return len(self.states) - 1

    # Each build returns (start, [dangling (state, slot) pairs to patch to what follows]).
    def build(self, node) -> tuple[int, list[tuple[int, int]]]:
        kind = node[0]
        if kind == "chars":
            state = self.add("chars", node[1], None)
            return state, [(state, 2)]
        if kind == "alt":
            parts = [self.build(branch) for branch in node[1]]
            start, outs = parts[0]
            for other_start, other_outs in parts[1:]:
                start = self.add("split", start, other_start)
                outs = outs + other_outs
            return start, outs
        # sequence
        start, outs = None, []
        for atom, low, high in node[1]:
            piece = self.repeat(atom, low, high)
            if piece is None:
                continue
            if start is None:
                start, outs = piece
            else:
                self.patch(outs, piece[0])
                outs = piece[1]
        if start is None:  # the empty sequence
            state = self.add("split", None, None)
            return state, [(state, 1), (state, 2)]
        return start, outs

    def repeat(self, atom, low: int, high: int | None):
        start, outs = None, []

        def append(piece):
            nonlocal start, outs
            if start is None:
                start, outs = piece
            else:
                self.patch(outs, piece[0])
                outs = piece[1]

        for _ in range(low):
            append(self.build(atom))
        if high is None:  # a loop: split -> atom -> back to split
            split = self.add("split", None, None)
            inner_start, inner_outs = self.build(atom)
            self.states[split][1] = inner_start
            self.patch(inner_outs, split)
            append((split, [(split, 2)]))
        else:
            for _ in range(high - low):
                split = self.add("split", None, None)
                inner_start, inner_outs = self.build(atom)
                self.states[split][1] = inner_start
                append((split, [(split, 2), *inner_outs]))
        if start is None:  # {0} / {0,0}: matches the empty string
            return None
        return start, outs

    def patch(self, outs: list[tuple[int, int]], target: int) -> None:
        for state, slot in outs:
            self.states[state][slot] = target


@dataclass(frozen=True)
class SafePattern:
    """A compiled override pattern; `fullmatch(name)` is linear in len(name) x states."""

    source: str
    states: tuple[tuple, ...]
    start: int

    def _closure(self, seeds) -> set[int]:
        seen, stack = set(), list(seeds)
        while stack:
            index = stack.pop()
            if index is None or index in seen:
                continue
            seen.add(index)
            state = self.states[index]
            if state[0] == "split":
                stack.extend((state[1], state[2]))
        return seen

    def fullmatch(self, name: str) -> bool:
        current = self._closure([self.start])
        for ch in name:
            following = [self.states[i][2] for i in current
                         if self.states[i][0] == "chars" and self.states[i][1].matches(ch)]
            if not following:
                return False
            current = self._closure(following)
        return any(self.states[i][0] == "match" for i in current)


def compile_pattern(pattern: str) -> SafePattern:
    """Raises PatternError (a ValueError) for anything outside the syntax above or its limits."""
    if not isinstance(pattern, str):
        raise PatternError("must be a string")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(f"is {len(pattern)} characters long, more than {MAX_PATTERN_LENGTH}")
    parser = _Parser(pattern)
    tree = parser.alternation(0)
    if parser.pos != len(pattern):
        parser.fail("unbalanced )")
    nfa = _Nfa()
    start, outs = nfa.build(tree)
    nfa.patch(outs, nfa.add("match"))
    return SafePattern(pattern, tuple(tuple(s) for s in nfa.states), start)
