"""Where each key and array item of a TOML text is (pure): tomllib gives no line numbers
for keys and only the first syntax error, so :mod:`mstack_bpf.core.policy` finds the lines of its
own errors here. The scan never raises and stays linear, whatever the text; it also refuses
what would make tomllib recurse too deep or take quadratic time (MAX_DEPTH, MAX_KEY_PARTS).
"""

from __future__ import annotations

import re
import tomllib

#: Checked before tomllib sees the text: tomllib recurses once per nested array or inline
#: table (RecursionError), and its time grows with the square of a dotted key's parts (6 s
#: and 1.5 GB for one key of 20000). A policy needs two of each.
MAX_DEPTH = 16
MAX_KEY_PARTS = 16
_KEPT = 2  # the parser asks for the lines of keys one or two deep, never deeper

# One TOML token (toml.io/en/v1.0.0). What valid TOML never has (an unterminated string, a
# stray character) is "bad" and takes the rest of its line: the scan stays linear.
_TOKEN = re.compile(r"""[ \t]*(?:
    (?P<nl>\n) | (?P<comment>\#[^\n]*) | (?P<ml>"{3}|'{3})
  | (?P<str>"(?:[^"\\\n]|\\.)*"|'[^'\n]*') | (?P<punct>[\[\]{}=.,])
  | (?P<bare>[^\s"'\#\[\]{}=.,]+) | (?P<bad>[^\n]*))""", re.X)


def _key_text(token: str) -> str:
    """The key that a bare or quoted key token names."""
    if token[0] == "'" or (token[0] == '"' and "\\" not in token):
        return token[1:-1]
    if token[0] != '"':
        return token
    try:
        return str(tomllib.loads(f"k = {token}")["k"])
    except tomllib.TOMLDecodeError:  # not valid TOML: tomllib will say so
        return token


def _escaped(text: str, index: int) -> bool:
    """Whether the character at ``index`` follows an odd number of backslashes."""
    start = index
    while start > 0 and text[start - 1] == "\\":
        start -= 1
    return (index - start) % 2 == 1


class Lines:
    """Line numbers of tables, keys and array items, found by scanning the TOML text.

    The scan knows TOML's four kinds of strings, comments and brackets, so nothing inside a
    string or comment passes for a key. It never raises and is linear in the text, valid
    TOML or not: it runs before tomllib, to find what exceeds MAX_DEPTH or MAX_KEY_PARTS
    (``too_much``). Lines are counted in ``\\n`` as tomllib counts them (str.splitlines()
    also splits at U+2028 and others that strings and comments may hold).
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.where: dict[tuple[str, ...], int] = {}
        self.items: dict[tuple[str, ...], list[int]] = {}
        self.deepest = (0, 1)  # depth and line of the deepest array or inline table
        self.too_much: tuple[int, str] | None = None
        self.pos, self.line, self.dots = 0, 1, 0
        table: tuple[str, ...] = ()
        while self.pos < len(text):
            table = self._statement(table)

    def of(self, *path: str) -> int:
        """The line of ``path``, else of its nearest enclosing table or key, else 1."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.where:
                return self.where[path[:end]]
        return 1

    def of_item(self, index: int, *path: str) -> int:
        """The line where item ``index`` of the array ``path`` starts, else that of ``path``."""
        lines = self.items.get(path, [])
        return lines[index] if index < len(lines) else self.of(*path)

    def _next(self) -> tuple[str, str]:
        """The next token's kind and text, stepped over."""
        m = _TOKEN.match(self.text, self.pos)
        if m is None or m.lastgroup is None:  # never: "bad" matches even nothing
            self.pos = len(self.text)
            return "bad", ""
        kind, token = m.lastgroup, m.group(m.lastgroup)
        self.pos = m.end()
        self.line += int(kind == "nl")
        if kind == "punct" and token == ".":
            self.dots += 1
            if self.dots == MAX_KEY_PARTS:
                self._too_much(f"TOML: a dotted key of more than {MAX_KEY_PARTS} parts")
        elif kind not in ("bare", "str"):
            self.dots = 0
        return kind, token

    def _too_much(self, message: str) -> None:
        if self.too_much is None:
            self.too_much = self.line, message

    def _statement(self, table: tuple[str, ...]) -> tuple[str, ...]:
        """Scan one statement: a header, a key = value, or nothing; the table after it."""
        line, mark = self.line, (self.pos, self.line, self.dots)
        kind, token = self._next()
        if kind == "nl":
            return table
        header = (kind, token) == ("punct", "[")
        path = (self._header() if header else
                self._dotted(token, "=") if kind in ("bare", "str") else None)
        if path is None:  # a comment, or not TOML: step over it as over a value
            self.pos, self.line, self.dots = mark
            self._value(None)
            return table
        parent = () if header else table  # a header's key is absolute
        full = (parent + path[:_KEPT])[:_KEPT]
        for end in range(1, len(full) + 1):  # a.b = 1 also defines a
            self.where.setdefault(full[:end], line)
        self._value(None if header or len(parent) + len(path) > _KEPT else full)
        return full if header else table

    def _header(self) -> tuple[str, ...] | None:
        """The key of a ``[table]`` or ``[[array of tables]]`` whose first ``[`` was read."""
        double = self.text.startswith("[", self.pos)
        self.pos += int(double)
        kind, token = self._next()
        path = self._dotted(token, "]") if kind in ("bare", "str") else None
        if path is None or (double and not self.text.startswith("]", self.pos)):
            return None
        self.pos += int(double)
        return path

    def _dotted(self, first: str, end: str) -> tuple[str, ...] | None:
        """The dotted key that starts with the token ``first`` and is followed by ``end``."""
        parts = [_key_text(first)]
        while True:
            kind, token = self._next()
            if (kind, token) == ("punct", end):
                return tuple(parts)
            if (kind, token) != ("punct", "."):
                return None
            kind, token = self._next()
            if kind not in ("bare", "str"):
                return None
            parts.append(_key_text(token))

    def _value(self, path: tuple[str, ...] | None) -> None:
        """Step over a value to the end of its last line; note the line where each item of
        the array ``path`` starts."""
        stack: list[str] = []
        fresh = False  # the next token starts an item of the array
        while self.pos < len(self.text):
            line = self.line
            kind, token = self._next()
            if kind == "nl" and not stack:
                return
            if kind in ("nl", "comment"):
                continue
            punct = token if kind == "punct" else ""
            if fresh and path is not None and punct not in ("]", ","):
                self.items.setdefault(path, []).append(line)
            if kind == "ml":
                self._multi_line_string(token)
            elif punct in ("[", "{"):
                stack.append(punct)
                self._nested(len(stack), line)
            elif punct in ("]", "}") and stack:
                stack.pop()
            fresh = stack == ["["] and punct in ("[", ",")

    def _nested(self, depth: int, line: int) -> None:
        if depth > self.deepest[0]:
            self.deepest = depth, line
        if depth > MAX_DEPTH:
            self._too_much(f"TOML: arrays or inline tables nested deeper than {MAX_DEPTH}")

    def _multi_line_string(self, quote: str) -> None:
        """Step over the rest of the multi-line string that ``quote`` opened."""
        text, start = self.text, self.pos
        end = text.find(quote, start)
        while end >= 0 and quote == '"""' and _escaped(text, end):
            end = text.find(quote, end + 1)
        end = len(text) if end < 0 else end + 3
        for _ in range(2):  # '''a'''' is "a'": up to two quotes end the string itself
            end += int(text.startswith(quote[0], end))
        self.line += text.count("\n", start, end)
        self.pos = end
