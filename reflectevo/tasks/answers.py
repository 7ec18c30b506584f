"""Answer extraction and comparison for the ReflectEvo tasks (our own code; rules in docs/tasks.md).

- Multiple choice: the option letter, compared case-insensitively after stripping whitespace and
  the usual wrappers (`B.`, `(B)`, `[B]`, `B) text`); an exact option text also counts as its letter.
- MATH: the gold is the content of the last `\\boxed{}`/`\\fbox{}` of the solution. Two answers are
  equal when their Hendrycks-style normal forms agree (`normalize_math`, fast and exact), when both
  are plain numbers with the same exact value, or else when `math_verify` parses both and finds them
  equivalent; pairs that provably differ (`math_fast`) skip `math_verify`.
- Free text: SQuAD-style normalised exact match decides correctness; token F1 is the score.
- Code: the text between `[BEGIN]` and `[END]`, the first of them (a trial ends there), else the first ```python fence.
"""

from __future__ import annotations

import collections
import functools
import re
import string
import threading
from collections.abc import Sequence
from fractions import Fraction

from reflectevo.tasks.math_fast import certainly_different

# ----------------------------------------------------------------------------------------------------
# Multiple choice
# ----------------------------------------------------------------------------------------------------
_LETTER = re.compile(r"^[\(\[\{]?\s*([A-Za-z])\s*[\)\]\}]?\s*(?:[.:)]\s*.*)?$", re.S)
_OPTION_LINE = re.compile(r"^\s*([A-Z])\s*[.:)?]\s*(.+?)\s*$")


def mc_letter(pred: str | None, n_choices: int = 26, choices: Sequence[str] | None = None) -> str | None:
    """The option letter a prediction names (upper case), or None.

    Accepts `B`, `b`, ` B `, `B.`, `(B)`, `[B]`, `B) text`, `B. text`, `option B`; with `choices`,
    also the exact text of an option (case- and space-insensitive)."""
    if pred is None:
        return None
    text = pred.strip().strip("*").strip()
    text = re.sub(r"^(?:option|choice|answer)\s*[:\s]\s*", "", text, flags=re.I)
    m = _LETTER.match(text)
    if m:
        letter = m.group(1).upper()
        rest = text[m.end(1):].strip()
        # "A cat" is not a letter answer; "A. cat", "(A) cat", bare "A" are
        if (not rest or rest[0] in ".:)]}") and ord(letter) - 65 < n_choices:
            return letter
    if choices:
        want = _squash(text.rstrip("."))
        for i, c in enumerate(choices):
            if _squash(c) == want:
                return chr(65 + i)
    return None


def _squash(s: str) -> str:
    return " ".join(s.lower().split())


def options_from_question(question: str) -> list[str]:
    """Option texts listed at the end of a question ("A. ...", "B. ...", in label order)."""
    found: dict[str, str] = {}
    for line in question.splitlines():
        m = _OPTION_LINE.match(line)
        if m and (m.group(1) not in found) and (ord(m.group(1)) - 65 == len(found) or m.group(1) in "ABCDEFGH"):
            found[m.group(1)] = m.group(2)
    letters = sorted(found)
    if not letters or letters != [chr(65 + i) for i in range(len(letters))]:
        return []
    return [found[k] for k in letters]


# ----------------------------------------------------------------------------------------------------
# MATH
# ----------------------------------------------------------------------------------------------------
def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (balanced braces) or `\\boxed x`; None if absent."""
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)\b", text)]
    for m in reversed(starts):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1:j]
                j += 1
            continue  # unbalanced: try an earlier one
        if text[m.end():m.end() + 1] == " ":  # "\boxed 5"
            rest = text[m.end():].strip()
            return re.split(r"[\s$]", rest, maxsplit=1)[0] if rest else None
    return None


def _balanced_arg(s: str, i: int) -> tuple[str, int] | None:
    """The `{...}` group starting at s[i] (without braces) and the index after it."""
    if i >= len(s) or s[i] != "{":
        return None
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                return s[i + 1:j], j + 1
    return None


def _fix_fracs(s: str) -> str:
    r"""`\frac12` -> `\frac{1}{2}`, `\frac1{2}` -> `\frac{1}{2}`, `\frac{1}2` -> `\frac{1}{2}`."""
    out, i = [], 0
    while True:
        k = s.find("\\frac", i)
        if k < 0:
            out.append(s[i:])
            return "".join(out)
        out.append(s[i:k + 5])
        j = k + 5
        for _ in range(2):
            if j < len(s) and s[j] == "{":
                grp = _balanced_arg(s, j)
                if grp is None:
                    break
                out.append("{" + grp[0] + "}")
                j = grp[1]
            elif j < len(s) and s[j] not in "\\ ":
                out.append("{" + s[j] + "}")
                j += 1
            else:
                break
        i = j


def _fix_sqrt(s: str) -> str:
    r"""`\sqrt3` -> `\sqrt{3}`."""
    return re.sub(r"\\sqrt(?![{\[])\s*([^\s\\{}])", r"\\sqrt{\1}", s)


def _simple_slash(s: str) -> str:
    """`3/4` -> `\\frac{3}{4}` when both sides are plain integers."""
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    return f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}" if m else s


@functools.lru_cache(maxsize=16384)
def normalize_math(answer: str) -> str:
    """A Hendrycks-style normal form of a MATH answer string (our implementation).

    Removes spaces, `\\left`/`\\right`, `\\!`, thin spaces, `$`, degree marks, a trailing unit
    written as `\\text{ unit}`, percent signs and a trailing period; maps `tfrac`/`dfrac` to `frac`;
    restores braces in `\\frac12`/`\\sqrt3`; rewrites `a/b` with integer parts as a fraction and
    `0.5` as `\\frac{1}{2}`; drops a leading `x =` with a short left side; `.5` becomes `0.5`."""
    s = answer.strip()
    s = s.replace("\n", "").rstrip(".")
    s = re.sub(r"\\text\{\s+[A-Za-z ]+\}\s*$", "", s)  # trailing unit: "10\text{ cm}"
    s = re.sub(r"\\mbox\{\s+[A-Za-z ]+\}\s*$", "", s)
    for a, b in (("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\left", ""), ("\\right", ""),
                 ("tfrac", "frac"), ("dfrac", "frac"), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""),
                 ("$", ""), ("\\%", ""), ("%", ""), ("\\displaystyle", "")):
        s = s.replace(a, b)
    s = re.sub(r"\\text\{\s*([^{}]*?)\s*\}", r"\1", s)
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    left, eq, right = s.partition("=")
    if eq and len(left.strip()) <= 2 and "=" not in right:
        s = right
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    s = _simple_slash(s)
    return s


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@functools.lru_cache(maxsize=4096)
def _mv_parse(text: str, timeouts: bool):
    from math_verify import LatexExtractionConfig, parse

    # answers are LaTeX: the LaTeX extractor alone is about twice as fast as the default pair
    wrapped = text if "$" in text or "\\boxed" in text else f"${text}$"
    return parse(wrapped, extraction_config=[LatexExtractionConfig()],
                 parsing_timeout=3 if timeouts else None)  # type: ignore[arg-type]


def math_verify_equal(pred: str, gold: str) -> bool:
    """`math_verify` equivalence (False when either side does not parse).

    Its timeouts use SIGALRM, which only works in the main thread; elsewhere it runs without them."""
    from math_verify import verify

    timeouts = _in_main_thread()
    try:
        g, p = _mv_parse(gold, timeouts), _mv_parse(pred, timeouts)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=3 if timeouts else None))
    except Exception:  # a sympy failure on junk output is "not equal", never a pipeline crash
        return False


_PLAIN_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_PLAIN_FRAC = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")


@functools.lru_cache(maxsize=16384)
def _as_number(normal: str) -> Fraction | None:
    """A normal form that is a plain integer, decimal or integer fraction, as an exact number."""
    s = normal.replace("{,}", "").replace(",", "") if re.fullmatch(r"-?\d{1,3}(?:(?:\{,\}|,)\d{3})+", normal) else normal
    if _PLAIN_NUMBER.fullmatch(s):
        return Fraction(s)
    m = _PLAIN_FRAC.fullmatch(s)
    if m and int(m.group(3)) != 0:
        value = Fraction(int(m.group(2)), int(m.group(3)))
        return -value if m.group(1) else value
    return None


def math_equal(pred: str | None, gold: str) -> bool:
    """Is a predicted MATH answer equivalent to the gold one?

    Cheapest test first: equal strings or equal normal forms -> True; two plain numbers -> exact
    comparison (fractions.Fraction); values that provably differ (`math_fast.certainly_different`:
    plain LaTeX arithmetic, tuples, sets, intervals, matrices, word answers) -> False; only the rest
    goes to math_verify. Normal forms and parses are cached per string, so a gold is parsed once."""
    if pred is None or not pred.strip():
        return False
    if pred.strip() == gold.strip():
        return True
    p, g = normalize_math(pred), normalize_math(gold)
    if p == g:
        return True
    pn, gn = _as_number(p), _as_number(g)
    if pn is not None and gn is not None:
        return pn == gn
    if certainly_different(p, g, pred, gold):
        return False
    return math_verify_equal(pred, gold)


# ----------------------------------------------------------------------------------------------------
# Free text (SQuAD-style)
# ----------------------------------------------------------------------------------------------------
_PUNCT = set(string.punctuation)


def normalize_text(s: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def token_f1(pred: str, gold: str) -> float:
    p, g = normalize_text(pred).split(), normalize_text(gold).split()
    if not p or not g:
        return float(p == g)
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


# ----------------------------------------------------------------------------------------------------
# Code
# ----------------------------------------------------------------------------------------------------
_BEGIN_END = re.compile(r"\[BEGIN\](.*?)\[END\]", re.S)
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)


def extract_code(completion: str) -> str | None:
    """The code of a completion: the first `[BEGIN]...[END]` block (a trial ends there), else the first
    ```python fence."""
    found = _BEGIN_END.findall(completion)
    if found:
        return _unfence(found[0]).strip("\n")
    found = _FENCE.findall(completion)
    if found:
        return found[0].strip("\n")
    return None


def _unfence(code: str) -> str:
    m = re.fullmatch(r"\s*```(?:python|py)?[ \t]*\n(.*?)```\s*", code, re.S)
    return m.group(1) if m else code
