"""A reader for the Ruby subset a plain Vagrantfile is written in, evaluated as Vagrant would
evaluate it: what it assigns and calls on the configuration, for a given environment.

The subset: comments, double- and single-quoted strings (no ``#{}``), integers, ``true``
and ``false``, arrays, ``{ "K" => v }`` and ``{ k: v }`` hashes, constants, ``name:`` keyword
arguments, method calls with or without parentheses (arguments go on after a trailing comma),
``do |x| ... end`` blocks, ``x.a.b = value``, and the calls ``Vagrant.configure``,
``ENV.fetch``, ``Integer`` and ``require_relative`` (not followed). Anything else is an error
naming the line and the token: a Vagrantfile that leaves the subset must extend this reader
(or be checked by Ruby itself).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

TOKEN = re.compile(r"""
    (?P<space>[ \t]+|\\\n) | (?P<comment>\#[^\n]*) | (?P<nl>\n)
  | (?P<dstr>"(?:[^"\\]|\\.)*") | (?P<sstr>'(?:[^'\\]|\\.)*')
  | (?P<label>[a-z_]\w*:(?!:)) | (?P<int>\d+) | (?P<name>[A-Za-z_]\w*)
  | (?P<op>=>|[.,()\[\]{}|=])
""", re.X)
T = TypeVar("T")


class VagrantfileError(ValueError):
    """Text outside the subset, or a value of the wrong kind."""


@dataclass
class Call:
    """A method called on a configuration object: ``vm.provider "libvirt" do |lv| ... end``."""

    name: str
    args: list[object]
    kwargs: dict[str, object]
    block: Config | None = None


@dataclass
class Config:
    """What a configuration object (``config``, a provider's ``vb``) was told, in order."""

    values: dict[str, object] = field(default_factory=dict)  # "vm.box" → "debian/..."
    calls: list[Call] = field(default_factory=list)

    def called(self, name: str) -> list[Call]:
        return [call for call in self.calls if call.name == name]


@dataclass
class _Token:
    kind: str
    text: str
    line: int


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    pos, line = 0, 1
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if m is None:
            raise VagrantfileError(f"line {line}: unexpected {text[pos:pos + 10]!r}")
        kind = m.lastgroup or ""
        if kind not in ("space", "comment"):
            out.append(_Token(kind, m.group(), line))
        line += m.group().count("\n")
        pos = m.end()
    out.append(_Token("eof", "", line))
    return out


def _string(token: _Token) -> str:
    body = token.text[1:-1]
    if token.kind == "dstr" and "#{" in body:
        raise VagrantfileError(f"line {token.line}: interpolation in {token.text}")
    return re.sub(r"\\(.)", r"\1", body)


class _Reader:
    """Reads and evaluates in one pass (recursive descent)."""

    def __init__(self, text: str, env: Mapping[str, str]) -> None:
        self.toks = _tokens(text)
        self.pos = 0
        self.env = env
        self.scope: dict[str, object] = {}
        self.configs: list[Config] = []

    # -- tokens --
    @property
    def tok(self) -> _Token:
        return self.toks[self.pos]

    def take(self, kind: str, text: str | None = None) -> _Token:
        tok = self.tok
        if tok.kind != kind or (text is not None and tok.text != text):
            raise VagrantfileError(f"line {tok.line}: expected {text or kind}, got {tok.text!r}")
        self.pos += 1
        return tok

    def at(self, kind: str, text: str | None = None) -> bool:
        return self.tok.kind == kind and (text is None or self.tok.text == text)

    def skip_newlines(self) -> None:
        while self.at("nl"):
            self.pos += 1

    # -- statements --
    def statements(self, until: str) -> None:
        while True:
            self.skip_newlines()
            if self.at("eof") or self.at("name", "end"):
                break
            self.statement()
        if until == "end":
            self.take("name", "end")
        else:
            self.take("eof")

    def statement(self) -> None:
        first = self.take("name")
        path = [first.text]
        while self.at("op", "."):
            self.pos += 1
            path.append(self.take("name").text)
        if self.at("op", "="):
            self.pos += 1
            self.assign(first, path, self.expr())
        else:
            self.call(first, path)
        if not (self.at("nl") or self.at("eof") or self.at("name", "end")):
            raise VagrantfileError(f"line {self.tok.line}: unexpected {self.tok.text!r}")

    def assign(self, first: _Token, path: list[str], value: object) -> None:
        if len(path) == 1 and first.text[0].isupper():
            self.scope[first.text] = value  # a constant
            return
        self.target(first).values[".".join(path[1:])] = value

    def target(self, first: _Token) -> Config:
        obj = self.scope.get(first.text)
        if not isinstance(obj, Config):
            raise VagrantfileError(f"line {first.line}: {first.text!r} is no configuration")
        return obj

    def call(self, first: _Token, path: list[str]) -> object:
        args, kwargs = self.arguments()
        block = self.block() if self.at("name", "do") else None
        name = ".".join(path)
        builtin = self.builtins().get(name)
        if builtin is not None:
            return builtin(args, kwargs, block, first.line)
        config = self.target(first)
        record = Call(".".join(path[1:]), args, kwargs)
        if block is not None:
            record.block = block()
        config.calls.append(record)
        return None

    def block(self) -> Callable[[], Config]:
        """``do |name| ... end``: run later, with ``name`` bound to a fresh Config."""
        self.take("name", "do")
        self.take("op", "|")
        param = self.take("name").text
        self.take("op", "|")
        start = self.pos
        self.skip_body()

        def evaluate() -> Config:
            config, saved, here = Config(), dict(self.scope), self.pos
            self.scope[param] = config
            self.pos = start
            self.statements(until="end")
            self.scope, self.pos = saved, here
            return config
        return evaluate

    def skip_body(self) -> None:
        depth = 1
        while depth:
            if self.at("eof"):
                raise VagrantfileError(f"line {self.tok.line}: 'do' without 'end'")
            depth += self.at("name", "do") - self.at("name", "end")
            self.pos += 1

    def builtins(self) -> dict[str, Callable[[list[object], dict[str, object],
                                              Callable[[], Config] | None, int], object]]:
        def configure(args: list[object], kw: dict[str, object],
                      block: Callable[[], Config] | None, line: int) -> None:
            if args != ["2"] or kw or block is None:
                raise VagrantfileError(f"line {line}: Vagrant.configure(\"2\") do |config|")
            self.configs.append(block())

        def fetch(args: list[object], kw: dict[str, object], block: object, line: int) -> str:
            if len(args) != 2 or not all(isinstance(a, str) for a in args) or kw or block:
                raise VagrantfileError(f"line {line}: ENV.fetch(NAME, DEFAULT)")
            return self.env.get(str(args[0]), str(args[1]))

        def integer(args: list[object], kw: dict[str, object], block: object, line: int) -> int:
            if len(args) != 1 or kw or block or not re.fullmatch(r"[+-]?\d+", str(args[0])):
                raise VagrantfileError(f"line {line}: Integer({args[0] if args else ''!r})")
            return int(str(args[0]))

        def require_relative(args: list[object], kw: dict[str, object], block: object,
                             line: int) -> None:
            if len(args) != 1 or not isinstance(args[0], str) or kw or block:
                raise VagrantfileError(f"line {line}: require_relative \"FILE\"")

        return {"Vagrant.configure": configure, "ENV.fetch": fetch, "Integer": integer,
                "require_relative": require_relative}

    # -- expressions --
    def arguments(self) -> tuple[list[object], dict[str, object]]:
        args: list[object] = []
        kwargs: dict[str, object] = {}
        paren = self.at("op", "(")
        if paren:
            self.pos += 1
        elif not self.starts_expr():
            return args, kwargs
        while not (paren and self.at("op", ")")):
            if self.at("label"):
                key = self.take("label").text[:-1]
                kwargs[key] = self.expr()
            else:
                args.append(self.expr())
            if not self.at("op", ","):
                break
            self.pos += 1
            self.skip_newlines()  # a trailing comma continues the list on the next line
        if paren:
            self.take("op", ")")
        return args, kwargs

    def starts_expr(self) -> bool:
        tok = self.tok
        return tok.kind in ("dstr", "sstr", "int", "label") or (
            tok.kind == "name" and tok.text not in ("do", "end")) or (
            tok.kind == "op" and tok.text in "[{")

    def expr(self) -> object:
        self.skip_newlines()
        tok = self.tok
        if tok.kind in ("dstr", "sstr"):
            self.pos += 1
            return _string(tok)
        if tok.kind == "int":
            self.pos += 1
            return int(tok.text)
        if self.at("op", "["):
            return self.sequence("[", "]", lambda: self.expr())
        if self.at("op", "{"):
            pairs = self.sequence("{", "}", self.pair)
            return dict(pairs)
        if tok.kind == "name" and tok.text in ("true", "false"):
            self.pos += 1
            return tok.text == "true"
        if tok.kind == "name":
            self.pos += 1
            path = [tok.text]
            while self.at("op", "."):
                self.pos += 1
                path.append(self.take("name").text)
            if len(path) == 1 and tok.text in self.scope:
                return self.scope[tok.text]
            return self.call(tok, path)
        raise VagrantfileError(f"line {tok.line}: unexpected {tok.text!r}")

    def pair(self) -> tuple[object, object]:
        if self.at("label"):  # { path: v }: a symbol key, read as its name
            return self.take("label").text[:-1], self.expr()
        key = self.expr()
        self.take("op", "=>")
        return key, self.expr()

    def sequence(self, open_: str, close: str, item: Callable[[], T]) -> list[T]:
        self.take("op", open_)
        items: list[T] = []
        self.skip_newlines()
        while not self.at("op", close):
            items.append(item())
            self.skip_newlines()
            if not self.at("op", ","):
                break
            self.pos += 1
            self.skip_newlines()
        self.take("op", close)
        return items


def read(text: str, env: Mapping[str, str] | None = None) -> Config:
    """The configuration a Vagrantfile builds, with ``env`` as the host's environment."""
    reader = _Reader(text, env or {})
    reader.statements(until="eof")
    if len(reader.configs) != 1:
        raise VagrantfileError(f"{len(reader.configs)} Vagrant.configure blocks, not one")
    return reader.configs[0]
