"""A cheap, one-sided test for MATH answers: "these two expressions certainly differ".

`math_verify` (a LaTeX parser plus sympy) is the slow part of judging MATH answers: about 10 ms a pair
that does not match on normal forms. Most such pairs are simply different, so before calling it we
try to prove them different with a tiny evaluator of plain LaTeX arithmetic: numbers, single-letter
variables, `+ - * /`, `^` with a one-character or braced exponent, implicit products, `\\frac`,
`\\sqrt`, `\\sqrt[n]`, `\\pi`, `\\cdot`, `\\times`, `\\div`, parentheses. Variables get the same
values on both sides (case-insensitively, so `Ab` and `aB` are never told apart, as `math_verify`
treats them as equal words) at a few fixed positive points.

`certainly_different(a, b)` is True only when both sides are in that subset and their values differ
at one point by more than every tolerance `math_verify` applies (6 decimal places for floats,
relative 1e-6 here) plus a bound on the floating-point error. Two expressions whose values differ
at a point are not identical, so neither sympy's simplification nor its rounding can call them
equal: the answer never turns a `math_verify` "equal" into "not equal". Anything outside the
subset (commas, intervals, sets, `=`, units, `\\text`, degrees, percent, subscripts, `e`/`i`
(constants or variables?), functions, factorials, ...) gives None: "cannot tell", and the caller
asks `math_verify`. Tested against `math_verify` on thousands of pairs (tests/test_math_fast.py).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

# Raw-text markers whose meaning the Hendrycks normal form changes: never judged here
# (`$5$ and $6$`: math_verify extracts one of them; `x = 3`, `10\text{ cm}`, `30^\circ`, `5\%`: our
# normal form drops a part.) Other unsupported syntax survives into the normal form and is refused there.
_RAW_BAIL = ("\\circ", "%", "\\text", "\\mbox", "=", "$")
_DIGIT_SPACE_DIGIT = re.compile(r"\d\s+\d")  # "2 3x": our normal form reads 23x
_MIXED_NUMBER = re.compile(r"\d\s*\\[dt]?frac")  # 3\frac{3}{8}: math_verify reads 3 + 3/8
_TOKEN = re.compile(r"\d+(?:\.\d+)?|\\[A-Za-z]+|[A-Za-z]|[-+*/^(){}\[\]]|.", re.DOTALL)
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGITS = frozenset("0123456789")
_CONSTANT_LIKE = frozenset("eEiI")  # Euler's number / the imaginary unit to math_verify: not plain variables
_COMMANDS = frozenset(("\\frac", "\\sqrt", "\\pi", "\\cdot", "\\times", "\\div"))
# Fixed evaluation points: every letter gets a distinct irrational-looking positive value per point.
_POINTS = tuple({c: 0.61 + 0.1379 * k + 0.0731 * i for i, c in enumerate("abcdfghjklmnopqrstuvwxyz")}
                for k in range(1, 4))

Node = tuple[Any, ...]


class _Unsupported(Exception):
    pass


class _Parser:
    """Recursive descent over the tokens of a normal form (no spaces): builds a small tuple tree."""

    def __init__(self, tokens: list[str]) -> None:
        self.toks = tokens
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise _Unsupported
        self.i += 1
        return tok

    def expr(self) -> Node:
        node = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            node = (op, node, self.term())
        return node

    def term(self) -> Node:
        node = self.factor()
        while True:
            tok = self.peek()
            if tok in ("*", "/", "\\cdot", "\\times", "\\div"):
                self.take()
                node = ("/" if tok in ("/", "\\div") else "*", node, self.factor())
            elif tok is not None and self._starts_atom(tok):
                node = ("*", node, self.power())  # implicit product: 2x, x(x+1), 3\sqrt{2}
            else:
                return node

    @staticmethod
    def _starts_atom(tok: str) -> bool:
        return tok[0] in _DIGITS or tok in _LETTERS or tok in ("(", "{", "\\frac", "\\sqrt", "\\pi")

    def factor(self) -> Node:
        tok = self.peek()
        if tok == "-":
            self.take()
            return ("neg", self.factor())
        if tok == "+":
            self.take()
            return self.factor()
        return self.power()

    def power(self) -> Node:
        base = self.atom()
        if self.peek() != "^":
            return base
        self.take()
        tok = self.take()
        if tok == "{":
            exp = self.expr()
            self.take("}")
        elif (tok in _DIGITS or tok in _LETTERS) and tok not in _CONSTANT_LIKE:
            exp = ("n", float(tok)) if tok in _DIGITS else ("v", tok.lower())
        else:  # x^25 (LaTeX: x^2 5, latex2sympy: x^{25}), x^-1, x^(...): not ours to decide
            raise _Unsupported
        if self.peek() == "^":
            raise _Unsupported
        return ("^", base, exp)

    def group(self) -> Node:
        self.take("{")
        node = self.expr()
        self.take("}")
        return node

    def atom(self) -> Node:
        tok = self.take()
        if tok[0] in _DIGITS:
            return ("n", float(tok))
        if tok in _LETTERS:
            if tok in _CONSTANT_LIKE:
                raise _Unsupported
            return ("v", tok.lower())
        if tok in ("(", "{"):
            node = self.expr()
            self.take(")" if tok == "(" else "}")
            return node
        if tok == "\\pi":
            return ("n", math.pi)
        if tok == "\\frac":
            return ("/", self.group(), self.group())
        if tok == "\\sqrt":
            if self.peek() == "[":
                self.take()
                index = self.expr()
                self.take("]")
                return ("root", index, self.group())
            return ("root", ("n", 2.0), self.group())
        raise _Unsupported


@functools.lru_cache(maxsize=16384)
def parse_simple(normal: str) -> Node | None:
    """The tree of a normal form in the supported subset, else None (cached: golds are parsed once)."""
    tokens = _TOKEN.findall(normal)
    for tok in tokens:
        if tok.startswith("\\") and tok not in _COMMANDS:
            return None
        if len(tok) == 1 and not (tok in _LETTERS or tok in _DIGITS or tok in "+-*/^(){}[]"):
            return None
    p = _Parser(tokens)
    try:
        node = p.expr()
    except (_Unsupported, RecursionError):
        return None
    return node if p.i == len(tokens) else None


def _eval(node: Node, env: dict[str, float], big: list[float]) -> float:
    kind = node[0]
    if kind == "inf":  # an interval end (only ever a whole element)
        return node[1] * math.inf
    if kind == "n":
        value = node[1]
    elif kind == "v":
        value = env[node[1]]
    elif kind == "neg":
        value = -_eval(node[1], env, big)
    else:
        a = _eval(node[1], env, big)
        b = _eval(node[2], env, big)
        if kind == "+":
            value = a + b
        elif kind == "-":
            value = a - b
        elif kind == "*":
            value = a * b
        elif kind == "/":
            value = a / b
        elif kind == "^":
            if a < 0 and not float(b).is_integer():
                raise ValueError("complex power")
            value = a ** b
        else:  # root: node = ("root", index, radicand)
            if b < 0 or a == 0:
                raise ValueError("complex or undefined root")
            value = b ** (1.0 / a)
    if isinstance(value, complex) or not math.isfinite(value):
        raise ValueError("not a finite real")
    big[0] = max(big[0], abs(value))
    return value


_THOUSANDS = re.compile(r"\d,\d{3}(?!\d)")  # 1,000 is a number to math_verify, not the pair {1, 0}
_THOUSANDS_NUMBER = re.compile(r"-?\d{1,3}(?:(?:\{,\}|,)\d{3})+")
_DEGREES = re.compile(r"\^\{?\\circ\}?")  # 30^\circ: math_verify and our normal form both drop the mark
# A word answer (`\text{(E)}`, `\text{Dana}`): a symbol to math_verify, never equal to a number
_WORD = re.compile(r"\s*\\text\{\s*\(?([A-Za-z]+)\)?\s*\}\s*")
_NOT_WORDS = frozenset(("e", "i", "pi", "inf", "infty", "infinity", "nan", "undefined", "none"))
_MATRIX = re.compile(r"\\begin\{([pb])matrix\}(.*)\\end\{\1matrix\}")


def _split_top(s: str, sep: str) -> list[str]:
    """Split at `sep` outside (), [], {} (None-free: unbalanced text gives one part)."""
    parts, depth, last = [], 0, 0
    i = 0
    while i < len(s):
        ch = s[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[last:i])
            last = i + len(sep)
            i = last
            continue
        i += 1
    parts.append(s[last:])
    return parts


def _outer_pair_closes_at_end(s: str) -> bool:
    depth = 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0 and i != len(s) - 1:
                return False
    return depth == 0


@functools.lru_cache(maxsize=16384)
def parse_shape(normal: str) -> tuple[str, tuple[int, int], tuple[Node, ...]] | None:
    """A normal form as ("set", (n, 1), elements) -- a scalar is a set of one, `a,b`, `(a,b)`,
    `[a,b]`, `\\{a,b\\}` (also intervals: only their endpoint values matter here) -- or as
    ("matrix", (rows, cols), entries) for pmatrix/bmatrix; None outside the supported subset."""
    m = _MATRIX.fullmatch(normal)
    if m:
        rows = [_split_top(r, "&") for r in _split_top(m.group(2), "\\\\")]
        if not rows or len({len(r) for r in rows}) != 1:
            return None
        entries = tuple(parse_simple(e) for r in rows for e in r)
        if any(e is None for e in entries):
            return None
        return ("matrix", (len(rows), len(rows[0])), entries)  # type: ignore[return-value]
    if _THOUSANDS_NUMBER.fullmatch(normal):
        return ("set", (1, 1), (("n", float(re.sub(r"\D", "", normal)) * (-1 if normal[0] == "-" else 1)),))
    scalar = parse_simple(normal)
    if scalar is not None:
        return ("set", (1, 1), (scalar,))
    if "," not in normal or _THOUSANDS.search(normal):
        return None
    if "\\cup" in normal:
        return _parse_union(normal)
    elements = _elements(normal)
    return ("set", (len(elements), 1), elements) if elements else None  # type: ignore[return-value]


_INFINITY = {"\\infty": 1.0, "+\\infty": 1.0, "-\\infty": -1.0}


def _elements(normal: str) -> tuple[Node, ...] | None:
    """The elements of `a,b`, `(a,b)`, `[a,b)`, `\\{a,b\\}` (each in the subset, or +-infinity)."""
    body = normal
    if body.startswith("\\{") and body.endswith("\\}"):
        body = body[2:-2]
    elif body[:1] in "([" and body[-1:] in ")]" and _outer_pair_closes_at_end(body):
        body = body[1:-1]
    parts = _split_top(body, ",")
    if len(parts) < 2:
        return None
    elements = tuple(("inf", _INFINITY[p]) if p in _INFINITY else parse_simple(p) for p in parts)
    return None if any(e is None for e in elements) else elements  # type: ignore[return-value]


def _parse_union(normal: str) -> tuple[str, tuple[int, int], tuple[Node, ...]] | None:
    """`(a,b)\\cup[c,\\infty)`: intervals with numeric endpoints, each with more than one point."""
    parts = _split_top(normal, "\\cup")
    nodes: list[Node] = []
    for part in parts:
        if part[:1] not in "([" or part[-1:] not in ")]":
            return None
        ends = _elements(part)
        if ends is None or len(ends) != 2 or _has_variables(ends):
            return None
        try:
            lo, hi = (_eval(e, _POINTS[0], [1.0]) for e in ends)
        except (ArithmeticError, ValueError, RecursionError):
            return None
        if not lo < hi:
            return None
        nodes += ends
    return ("union", (len(parts), 2), tuple(nodes))


def _differ(va: float, vb: float, big: float) -> bool:
    # math_verify rounds floats to 6 decimals; 1e-9 of the largest intermediate value bounds our
    # own rounding error (cancellation), far above what double arithmetic loses here
    if math.isinf(va) or math.isinf(vb):
        return va != vb
    return abs(va - vb) > 1e-6 * max(1.0, abs(va), abs(vb)) + 1e-9 * big


def _bail(raw: str) -> bool:
    raw = _DEGREES.sub("", raw)
    return any(m in raw for m in _RAW_BAIL) or bool(_DIGIT_SPACE_DIGIT.search(raw) or _MIXED_NUMBER.search(raw))


def _word(raw: str) -> str | None:
    m = _WORD.fullmatch(raw)
    return m.group(1) if m and m.group(1).lower() not in _NOT_WORDS else None


def _has_variables(nodes: tuple[Node, ...]) -> bool:
    def walk(node: Node) -> bool:
        return node[0] == "v" or any(walk(c) for c in node[1:] if isinstance(c, tuple))
    return any(walk(n) for n in nodes)


def certainly_different(pred_normal: str, gold_normal: str, pred_raw: str = "", gold_raw: str = "") -> bool | None:
    """True when the two answers provably differ; None when this evaluator cannot tell.

    Scalars and sets/tuples/intervals: their sets of values differ at one evaluation point (how
    math_verify compares them: sets, tuples and intervals equal only with equal elements or
    endpoints, a scalar equals a set only of itself). Matrices: shapes differ, or an entry differs,
    or a matrix is compared with a scalar. Never returns False: equality is left to the caller."""
    word_p, word_g = _word(pred_raw), _word(gold_raw)
    if word_p or word_g:
        if word_p and word_g:
            return None
        other = parse_shape(gold_normal) if word_p else parse_shape(pred_normal)
        if other is not None and not _has_variables(other[2]) and not _bail(gold_raw if word_p else pred_raw):
            return True  # a word against numbers
        return None
    if _bail(pred_raw) or _bail(gold_raw):
        return None
    a, b = parse_shape(pred_normal), parse_shape(gold_normal)
    if a is None or b is None:
        return None
    if a[0] == "union" or b[0] == "union":
        # a union of intervals (each more than a point) is never a single number, nor a matrix
        other = b if a[0] == "union" else a
        if other[0] == "matrix" or (other[0] == "set" and other[1] == (1, 1) and not _has_variables(other[2])):
            return True
        return None
    if a[0] != b[0] or (a[0] == "matrix" and a[1] != b[1]):
        return True  # a matrix is never equal to a scalar, tuple, set or interval, nor to another shape
    for env in _POINTS:
        big = [1.0]
        try:
            va = [_eval(n, env, big) for n in a[2]]
            vb = [_eval(n, env, big) for n in b[2]]
        except (ArithmeticError, ValueError, RecursionError):
            continue
        if a[0] == "matrix":
            if any(_differ(x, y, big[0]) for x, y in zip(va, vb)):
                return True
        elif any(all(_differ(x, y, big[0]) for y in vb) for x in va) or \
                any(all(_differ(x, y, big[0]) for x in va) for y in vb):
            return True
    return None
