"""Text cleaning for documents: Unicode and whitespace normalisation, PII scrubbing, toxicity
scoring and the length/toxicity filters of the corpus spec. Pure and deterministic.

Every document's text is scored and the score kept in meta["toxicity"]; max_chars and
max_toxicity apply to every modality (a caption can be abusive or absurdly long), min_chars only
to text and interleaved documents (a two-word caption is a fine caption).

PII becomes plain-text placeholders ([EMAIL], [PHONE], [CARD], [SSN], [IP], [IBAN]), never
special tokens: scrubbed text must tokenize like any other text. The patterns are tuned not to
fire on code (version numbers, dates, hashes, numeric literals): card numbers must pass the Luhn
check, IBANs their mod-97 check, and phone numbers need phone-like grouping.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from workers.data.preference import PAIR_FIELDS, PAIR_TASK
from workers.data.records import Document, Quarantined
from workers.data.spec import FilterSpec

# C0/C1 control characters but tab and newline (carriage returns are gone by then)
CONTROL_CHARS = dict.fromkeys(c for c in [*range(0x20), *range(0x7F, 0xA0)] if c not in (0x9, 0xA))
EXCESS_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n){3,}")  # more than two blank lines

# Text length limits apply to documents whose text is the content; a media document's caption,
# transcript or description may be short, so only max_chars applies to it.
TEXT_CONTENT_MODALITIES = ("text", "interleaved")


def clean_text(text: str) -> str:
    """NFC, \\n line endings, no control characters but \\n and \\t, two blank lines at most."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return EXCESS_BLANK_LINES.sub("\n\n\n", text.translate(CONTROL_CHARS))


# ---- PII ----------------------------------------------------------------------------------


def _luhn_valid(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _iban_valid(iban: str) -> bool:
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _ip_plausible(quad: str) -> bool:
    """Dotted quads whose first two numbers are both below 10 ("8.2.4.44") are section and
    version numbers far more often than addresses; such public addresses are not personal."""
    return max(int(n) for n in quad.split(".")[:2]) >= 10


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


@dataclass(frozen=True)
class PiiPattern:
    kind: str  # its placeholder is the kind in capitals: [EMAIL]
    regex: re.Pattern
    valid: Callable[[str], bool] = lambda match: True  # a check of a match beyond its form


# Applied in this order, so that an IBAN or a card number is not half-taken by the phone pattern.
PII_PATTERNS = [
    PiiPattern("email", re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@"
                                   r"(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}\b")),
    PiiPattern("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"),
               lambda m: _iban_valid(m.replace(" ", ""))),
    PiiPattern("card", re.compile(r"(?<![\w.])[2-6]\d{3}(?:[ -]?\d){9,15}(?!\w|[.-]\d)"),
               lambda m: 13 <= len(_digits(m)) <= 19 and _luhn_valid(_digits(m))),
    PiiPattern("ssn", re.compile(r"(?<![\w.-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}"
                                 r"(?!\w|[.-]\d)")),
    PiiPattern("ip", re.compile(r"(?<![\w.-])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                                r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\w|[.-]\d)"),
               _ip_plausible),
    PiiPattern("phone", re.compile(
        r"(?<![\w.+-])(?:"
        r"\+[1-9]\d{0,2}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{2,8}){1,5}"  # +44 20 7946 0958
        r"|(?:1[ .-])?\([2-9]\d\d\) ?[2-9]\d\d[ .-]\d{4}"  # (202) 555-0143
        r"|(?:1[ .-])?[2-9]\d\d([ .-])[2-9]\d\d\1\d{4}"  # 202-555-0143, 202.555.0143
        r")(?!\w|[.-]\d)"), lambda m: 8 <= len(_digits(m)) <= 15),
]


def scrub_pii(text: str) -> tuple[str, dict[str, int]]:
    """The text with PII replaced by placeholders, and how many of each kind (only kinds found)."""
    counts = {}
    for pattern in PII_PATTERNS:
        pieces, found, end = [], 0, 0
        for match in pattern.regex.finditer(text):
            if pattern.valid(match.group(0)):
                pieces += [text[end:match.start()], f"[{pattern.kind.upper()}]"]
                found, end = found + 1, match.end()
        if found:
            text, counts[pattern.kind] = "".join(pieces) + text[end:], found
    return text, counts


# ---- toxicity and filters -----------------------------------------------------------------


def toxicity_score(texts: Sequence[str]) -> list[float]:
    """Probability that each text is offensive: alt-profanity-check's linear model (offline,
    shipped in its wheel), all texts in one call."""
    if not texts:
        return []
    from profanity_check import predict_prob  # loads the model once, on first use

    return [float(p) for p in predict_prob(list(texts))]


def _length_problem(doc: Document, filters: FilterSpec) -> str | None:
    chars = len(doc.text)
    if chars > filters.max_chars:
        return f"too long: {chars:,} chars > max_chars {filters.max_chars:,}"
    if doc.modality in TEXT_CONTENT_MODALITIES and chars < filters.min_chars:
        return f"too short: {chars:,} chars < min_chars {filters.min_chars:,}"
    return None


def _cleaned(doc: Document, filters: FilterSpec) -> Document:
    """The texts, and a preference pair's responses (kept in meta), cleaned and scrubbed."""
    texts, meta = [clean_text(t) for t in doc.texts], dict(doc.meta)
    responses = [k for k in PAIR_FIELDS if k in meta] if meta.get("task") == PAIR_TASK else []
    for key in responses:
        meta[key] = clean_text(meta[key])
    if filters.scrub_pii:
        for i, text in enumerate(texts):
            texts[i], counts = scrub_pii(text)
            _count_pii(meta, counts)
        for key in responses:
            meta[key], counts = scrub_pii(meta[key])
            _count_pii(meta, counts)
    return replace(doc, texts=texts, meta=meta)


def _count_pii(meta: dict[str, str], counts: dict[str, int]) -> None:
    for kind, n in counts.items():
        meta[f"pii_{kind}"] = str(int(meta.get(f"pii_{kind}", 0)) + n)


def _rejected(doc: Document, reason: str) -> Quarantined:
    return Quarantined(source=doc.source, uri=doc.uri, reason=reason, stage="clean",
                       size_bytes=len(doc.text.encode()), sha256=doc.content_hash())


def clean_batch(docs: Sequence[Document], filters: FilterSpec) -> list[Document | Quarantined]:
    """Each document cleaned, scrubbed and scored (toxicity of the batch in one classifier call),
    or quarantined at stage "clean" when too short, too long or too toxic; order kept."""
    cleaned = [_cleaned(doc, filters) for doc in docs]
    problems = [_length_problem(doc, filters) for doc in cleaned]
    to_score = [doc.text for doc, problem in zip(cleaned, problems, strict=True) if not problem]
    scores = iter(toxicity_score(to_score))
    results: list[Document | Quarantined] = []
    for doc, problem in zip(cleaned, problems, strict=True):
        if not problem:
            score = next(scores)
            doc.meta["toxicity"] = f"{score:.4f}"
            if score > filters.max_toxicity:
                problem = f"too toxic: {score:.4f} > max_toxicity {filters.max_toxicity:g}"
        results.append(_rejected(doc, problem) if problem else doc)
    return results


def clean_document(doc: Document, filters: FilterSpec) -> Document | Quarantined:
    return clean_batch([doc], filters)[0]
