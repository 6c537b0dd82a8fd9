"""Just enough GraphQL for the fake RunPod server: the root field of an operation and field arguments.

Clients send arguments two ways (providers.md §2.2): the SDK inlines them (`pod(input: {podId: "abc"})`,
`cloudType: ALL`, `env: [{ key: "K", value: "V" }]`), runpodctl passes `$variables`. Both parse to plain
Python values here; enum names become strings. Selection sets are not interpreted (the fake answers with a
superset of fields, which generic clients tolerate).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(
    r"""
    (?P<ws>[\s,]+|\#[^\n]*)
  | (?P<block>\"\"\"(?:.|\n)*?\"\"\")
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<spread>\.\.\.)
  | (?P<name>[_A-Za-z][_0-9A-Za-z]*)
  | (?P<punct>[!$():=@\[\]{}|&])
    """,
    re.VERBOSE,
)


class GraphQLSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


def tokenize(source: str) -> list[Token]:
    tokens = []
    pos = 0
    while pos < len(source):
        match = _TOKEN.match(source, pos)
        if match is None:
            raise GraphQLSyntaxError(f"unexpected character {source[pos]!r} at {pos}")
        pos = match.end()
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, match.group()))
    return tokens


class _Parser:
    def __init__(self, tokens: list[Token], variables: dict[str, Any]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.variables = variables

    def peek(self, offset: int = 0) -> Token | None:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def take(self, text: str | None = None) -> Token:
        token = self.peek()
        if token is None or (text is not None and token.text != text):
            raise GraphQLSyntaxError(f"expected {text or 'a token'}, got {token.text if token else 'the end'}")
        self.pos += 1
        return token

    def value(self) -> Any:
        token = self.take()
        if token.text == "$":
            name = self.take().text
            return self.variables.get(name)
        if token.kind == "string":
            return json.loads(token.text)
        if token.kind == "block":
            return token.text[3:-3]
        if token.kind == "number":
            return float(token.text) if any(c in token.text for c in ".eE") else int(token.text)
        if token.text == "[":
            items = []
            while self.peek() and self.peek().text != "]":
                items.append(self.value())
            self.take("]")
            return items
        if token.text == "{":
            obj = {}
            while self.peek() and self.peek().text != "}":
                key = self.take().text
                self.take(":")
                obj[key] = self.value()
            self.take("}")
            return obj
        if token.kind == "name":
            return {"true": True, "false": False, "null": None}.get(token.text, token.text)
        raise GraphQLSyntaxError(f"unexpected {token.text!r} in a value")

    def arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.peek() and self.peek().text == "(":
            self.take("(")
            while self.peek() and self.peek().text != ")":
                name = self.take().text
                self.take(":")
                args[name] = self.value()
            self.take(")")
        return args

    def skip_balanced(self, opening: str, closing: str) -> None:
        depth = 0
        while True:
            token = self.take()
            depth += token.text == opening
            depth -= token.text == closing
            if depth == 0:
                return


@dataclass(frozen=True)
class Operation:
    kind: str  # "query" or "mutation"
    field: str
    args: dict[str, Any]
    tokens: tuple[Token, ...]
    variables: dict[str, Any]

    def field_args(self, name: str) -> dict[str, Any] | None:
        """Arguments of the first nested field called `name` (e.g. `lowestPrice(input: ...)`), if present."""
        for index, token in enumerate(self.tokens):
            if token.kind == "name" and token.text == name:
                nxt = self.tokens[index + 1] if index + 1 < len(self.tokens) else None
                if nxt is not None and nxt.text == "(":
                    parser = _Parser(list(self.tokens), self.variables)
                    parser.pos = index + 1
                    return parser.arguments()
                return {}
        return None


def parse_operation(query: str, variables: dict[str, Any] | None = None) -> Operation:
    """The first operation's root field and its arguments (variables substituted)."""
    variables = dict(variables or {})
    tokens = tokenize(query)
    parser = _Parser(tokens, variables)
    kind = "query"
    first = parser.peek()
    if first is not None and first.text in ("query", "mutation", "subscription"):
        kind = parser.take().text
        if parser.peek() and parser.peek().kind == "name":
            parser.take()
        if parser.peek() and parser.peek().text == "(":
            parser.skip_balanced("(", ")")
    parser.take("{")
    name = parser.take().text
    if parser.peek() and parser.peek().text == ":":  # an alias
        parser.take(":")
        name = parser.take().text
    args = parser.arguments()
    return Operation(kind, name, args, tuple(tokens), variables)
