"""MMLongBench-Doc's answer-format-aware score, after a rule-based extraction of the short answer.

The benchmark has GPT-4o extract a short answer from the model's free-form response, then scores it with
`eval_score` (eval/eval_score.py in github.com/mayubo2333/MMLongBench-Doc). We cannot call GPT-4o, so
`extract` applies rules instead, and scores are comparable to the benchmark's only for short answers:

- a response that says "not answerable", "unanswerable", "cannot be answered / determined" (and close
  variants) is the answer "Not answerable";
- otherwise the text after the last "answer is" / "answer:" is kept, else the whole response;
- Int and Float take the first number after such a marker, else the last number in the response
  (thousands commas and parenthesised remarks are dropped; Int also reads the words zero to twenty);
- List reads a Python list literal, else one item per line (bullets and numbering dropped) or, on one
  line, items separated by commas, semicolons or "and";
- Str keeps the first line.

Scoring follows `eval_score`: the gold answer and prediction are cleaned (lower case, parenthesised remarks,
surrounding quotes, a leading $ and a trailing % dropped); Str/None: exact match for URLs, file names,
phone numbers, dates, times and e-mails, else ANLS (1 - normalised Levenshtein distance, 0 unless above
0.5); Float: equal within 1% relative tolerance or at the shorter of the two precisions (at least 2
decimals), the gold also matched as a percentage either way (so "12%", "12" and "0.12" all match a gold
0.12 or 12, as in the release); List: same length, sorted, then all equal for numbers and exact-match kinds,
else the lowest ANLS of the pairs. Where this differs from the release: Int needs a whole number (the
release truncates, so it counts 3.7 as 3); an unanswerable gold answer needs a "Not answerable" prediction
and an answerable one never scores with it (the release compares the two strings by ANLS); a trailing
period is dropped from both answers; list literals are read with `ast.literal_eval`, never `eval`.
"""

from __future__ import annotations

import ast
import math
import re

FORMATS = ("Str", "Int", "Float", "List", "None")
NOT_ANSWERABLE = "Not answerable"

_UNANSWERABLE = re.compile(
    r"\b(?:not\s+answerable|unanswerable|(?:cannot|can\s*not|can't|could\s+not|couldn't)\s+be\s+"
    r"(?:answered|determined)|fail(?:ed)?\s+to\s+answer)\b",
    re.IGNORECASE,
)
_MARKER = re.compile(r"\banswer\s*(?:is\s*:?|:)\s*", re.IGNORECASE)
_NUMBER = re.compile(r"(?:(?<![\w.])-)?(?<![\d.])\d+(?:,\d{3})*(?:\.\d+)?")
_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]
_WORD = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_SEPARATOR = re.compile(r"\s*(?:[,;]|\band\b)\s*", re.IGNORECASE)
_PARENTHESES = re.compile(r"\s*\([^)]*\)")


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions) between two strings."""
    if len(a) > len(b):
        a, b = b, a
    row = list(range(len(a) + 1))
    for j, cb in enumerate(b, start=1):
        previous, row[0] = row[0], j
        for i, ca in enumerate(a, start=1):
            previous, row[i] = row[i], min(row[i] + 1, row[i - 1] + 1, previous + (ca != cb))
    return row[-1]


def anls(gold: str, prediction: str, threshold: float = 0.5) -> float:
    """1 - normalised edit distance, or 0 when that is not above `threshold` (ANLS, as the benchmark)."""
    length = max(len(gold), len(prediction))
    value = 1.0 - (levenshtein(gold, prediction) / length if length else 0.0)
    return value if value > threshold else 0.0


def clean(text: object) -> str:
    """The benchmark's normalisation: lower case; parenthesised remarks, quotes, a leading $, a trailing %
    (and here a trailing period) dropped."""
    s = _PARENTHESES.sub("", str(text).lower().strip()).strip()
    s = re.sub(r"^['\"]|['\"]$", "", s).strip()
    s = s.lstrip("$").strip()
    s = s.rstrip("%").strip()
    return s[:-1].strip() if s.endswith(".") else s


def exact_kind(s: str) -> bool:
    """Answers the benchmark compares exactly: URLs, code files, page refs, phone numbers, times, dates, e-mails."""
    return (
        "https://" in s
        or s.endswith((".py", "ipynb"))
        or s.startswith("page")
        or "a.m." in s
        or "p.m." in s
        or any(
            re.fullmatch(p, s)
            for p in (
                r"\d+(-\d+|\s\d+)?",
                r"\d{4}[-\s]\d{2}[-\s]\d{2}",
                r"\d{4}[-\s]\d{2}",
                r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}",
            )
        )
    )


def unanswerable(text: str) -> bool:
    """Whether a response (or gold answer) says the question cannot be answered from the document."""
    return bool(_UNANSWERABLE.search(text))


def _number(text: str, marked: bool, words: bool) -> float | None:
    """The first number after an answer marker (`marked`), else the last one; None when there is none."""
    found = [m.group().replace(",", "") for m in _NUMBER.finditer(_PARENTHESES.sub("", text))]
    if not found and words:
        found = [str(_WORDS.index(m.group().lower())) for m in _WORD.finditer(text)]
    return float(found[0] if marked else found[-1]) if found else None


def _as_list(text: str) -> list[str]:
    """A list answer: a Python list literal, else one item per line, else items split on , ; and."""
    if text.startswith("["):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, list | tuple):
            return [str(v) for v in value]
    lines = [_BULLET.sub("", line).strip() for line in text.splitlines() if line.strip()]
    items = lines if len(lines) > 1 else _SEPARATOR.split(lines[0] if lines else "")
    return [item.strip().rstrip(".") for item in items if item.strip()]


def extract(response: str, answer_format: str) -> str | float | list[str] | None:
    """The short answer a response gives, by the module's rules: NOT_ANSWERABLE, a number (Int, Float; None
    when there is none), a list of strings (List) or a string (Str, None)."""
    if unanswerable(response):
        return NOT_ANSWERABLE
    markers = list(_MARKER.finditer(response))
    text = response[markers[-1].end() :].strip() if markers else response.strip()
    if answer_format in ("Int", "Float"):
        return _number(text, bool(markers), answer_format == "Int")
    if answer_format == "List":
        return _as_list(text)
    return text.splitlines()[0].strip() if text else ""


def _float_equal(gold: float, prediction: float) -> bool:
    """The release's `is_float_equal` with percentages: the gold, /100 or x100, within 1% or at the shorter
    precision of the two (at least 2 decimals)."""

    def precision(x: float) -> int:
        return len(str(x).split(".")[-1]) if "." in str(x) else 3

    for target in (gold / 100, gold, gold * 100):
        digits = max(min(precision(prediction), precision(target)), 2)
        if math.isclose(target, prediction, rel_tol=0.01) or round(prediction, digits) == round(target, digits):
            return True
    return False


def _gold_list(answer: str) -> list[str]:
    if answer.startswith("["):
        try:
            value = ast.literal_eval(answer)
        except (ValueError, SyntaxError):
            return [answer]
        if isinstance(value, list):
            return [str(v) for v in value]
    return [answer]


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def score(prediction: str, answer: str, answer_format: str) -> float:
    """MMLongBench-Doc's score in [0, 1] of a free-form `prediction` against the gold `answer` of the given
    format (Str, Int, Float, List or None); see the module docstring for the rules."""
    if answer_format not in FORMATS:
        raise ValueError(f"unknown MMLongBench-Doc answer format {answer_format!r}; expected one of {FORMATS}")
    predicted = extract(prediction, answer_format)
    if clean(answer) == NOT_ANSWERABLE.lower() or predicted == NOT_ANSWERABLE:
        return float(clean(answer) == NOT_ANSWERABLE.lower() and predicted == NOT_ANSWERABLE)
    if answer_format in ("Int", "Float"):
        try:
            gold = float(clean(answer).replace(",", ""))
        except ValueError:  # a gold answer that is not a number is compared as a string
            return score(prediction, answer, "Str")
        if not isinstance(predicted, float):
            return 0.0
        if answer_format == "Int":
            return float(predicted.is_integer() and predicted == gold)
        return float(_float_equal(gold, predicted))
    if answer_format == "List":
        golds = sorted(clean(a) for a in _gold_list(answer))
        preds = sorted(clean(p) for p in predicted) if isinstance(predicted, list) else []
        if len(golds) != len(preds):
            return 0.0
        if not golds or _is_float(golds[0]) or exact_kind(golds[0]):
            return float("-".join(golds) == "-".join(preds))
        return min(anls(g, p) for g, p in zip(golds, preds, strict=True))
    gold_text, text = clean(answer), clean(predicted)
    return float(gold_text == text) if exact_kind(gold_text) else anls(gold_text, text)
