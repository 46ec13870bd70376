"""Statements with ``$1, $2, ...`` parameters, rewritten so the values never enter the SQL text.

ClickHouse 18.16's HTTP interface has no query parameters (``{name:Type}`` came in 19.15), so
the values travel as **external data**: a temporary table ``_prism_params`` sent beside the
statement (multipart/form-data), one column ``p<n>`` per parameter and one row per parameter
set, in TabSeparated (values.py). The server reads it as data, never as SQL. The statement is
rewritten around it:

- ``INSERT INTO t [(cols)] VALUES (e, ...), ...`` → ``INSERT INTO t [(cols)] SELECT e', ...
  FROM _prism_params [UNION ALL SELECT ...]``, where ``e'`` is ``e`` with ``$n`` → ``p<n>``:
  one INSERT for every row of a batch;
- any other statement: each ``$n`` → ``(SELECT p<n> FROM _prism_params)``, a scalar subquery
  (one parameter set only).

``$n`` is recognised only outside string literals, quoted identifiers and comments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prism.sdk import InvalidArgument

__all__ = ["PARAMS_TABLE", "Rewritten", "rewrite"]

PARAMS_TABLE = "_prism_params"

# One token: a quoted literal or identifier, a comment, a placeholder, a word, or one character.
_TOKEN = re.compile(
    r"""
    (?P<string>'(?:[^'\\]|\\.|'')*'?)
  | (?P<quoted>"(?:[^"\\]|\\.|"")*"?|`(?:[^`\\]|\\.|``)*`?)
  | (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<param>\$(?P<number>[0-9]+))
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<space>\s+)
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    number: int = 0


def _tokens(sql: str) -> list[_Token]:
    found = []
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup or "other"
        if kind == "number":
            kind = "param"
        number = int(match.group("number")) if kind == "param" else 0
        found.append(_Token(kind, match.group(), number))
    return found


@dataclass(frozen=True)
class Rewritten:
    sql: str
    #: The highest $n (each parameter set must have exactly this many values).
    count: int
    #: For INSERT ... VALUES: rows each parameter set inserts (its tuples); else None.
    tuples: int | None


def _substituted(tokens: list[_Token], scalar: bool) -> str:
    out = []
    for token in tokens:
        if token.kind == "param":
            column = f"p{token.number}"
            out.append(f"(SELECT {column} FROM {PARAMS_TABLE})" if scalar else column)
        else:
            out.append(token.text)
    return "".join(out)


def _meaningful(tokens: list[_Token]) -> list[int]:
    return [i for i, t in enumerate(tokens) if t.kind not in ("space", "comment")]


def _values_tuples(tokens: list[_Token], start: int) -> list[list[_Token]] | None:
    """The tuples after VALUES (tokens[start:]) as their item lists' tokens, or None when the
    rest is not a plain list of parenthesised tuples."""
    tuples: list[list[_Token]] = []
    depth = 0
    current: list[_Token] = []
    expect_tuple = True
    for token in tokens[start:]:
        if token.kind in ("space", "comment") and depth == 0:
            continue
        if depth == 0:
            if token.text == "(" and expect_tuple:
                depth, current, expect_tuple = 1, [], False
                continue
            if token.text == "," and not expect_tuple:
                expect_tuple = True
                continue
            if token.text == ";" and not expect_tuple:
                continue
            return None
        if token.text == "(":
            depth += 1
        elif token.text == ")":
            depth -= 1
            if depth == 0:
                tuples.append(current)
                continue
        current.append(token)
    if depth != 0 or expect_tuple or not tuples:
        return None
    return tuples


def _split_items(tokens: list[_Token]) -> list[list[_Token]]:
    items: list[list[_Token]] = [[]]
    depth = 0
    for token in tokens:
        if token.text in "([" and token.kind == "other":
            depth += 1
        elif token.text in ")]" and token.kind == "other":
            depth -= 1
        if token.text == "," and token.kind == "other" and depth == 0:
            items.append([])
        else:
            items[-1].append(token)
    return items


def rewrite(sql: str) -> Rewritten:
    """``sql`` rewritten to read its parameters from ``_prism_params``; INVALID_ARGUMENT for a
    ``$0`` or a placeholder in a statement that cannot take one."""
    tokens = _tokens(sql)
    params = [t.number for t in tokens if t.kind == "param"]
    if any(n < 1 for n in params):
        raise InvalidArgument("parameters are numbered from $1")
    count = max(params, default=0)
    words = [tokens[i] for i in _meaningful(tokens)]
    head = words[0].text.upper() if words and words[0].kind == "word" else ""
    if head == "INSERT":
        meaningful = _meaningful(tokens)
        values_at = next(
            (
                i
                for n, i in enumerate(meaningful)
                if tokens[i].kind == "word"
                and tokens[i].text.upper() == "VALUES"
                # "FORMAT Values" is data in ClickHouse's Values format, not a VALUES clause
                and not (n and tokens[meaningful[n - 1]].text.upper() == "FORMAT")
            ),
            None,
        )
        tuples = None if values_at is None else _values_tuples(tokens, values_at + 1)
        if values_at is not None and tuples is not None:
            if not count:
                return Rewritten(sql, 0, len(tuples))
            prefix = "".join(t.text for t in tokens[:values_at])
            selects = [
                "SELECT "
                + ", ".join(_substituted(item, scalar=False).strip() for item in _split_items(tup))
                + f" FROM {PARAMS_TABLE}"
                for tup in tuples
            ]
            return Rewritten(prefix + " UNION ALL ".join(selects), count, len(tuples))
    if not count:
        return Rewritten(sql, 0, None)
    return Rewritten(_substituted(tokens, scalar=True), count, None)
