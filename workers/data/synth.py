"""Synthetic text tasks mixed into the training corpus: chat-format instruction examples (helpful
answers and refusals) and PII canaries planted for the memorisation/leakage evaluation (the
retrieval curriculum is workers/data/retrieval.py).

Everything is seeded: the same arguments give the same documents on every machine. All
documents are split="train"; evaluation prompts are kept out of the chat examples by
normalized-text hash (`eval_prompt_hashes`).
"""

from __future__ import annotations

import csv
import hashlib
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from workers.data.records import Document, normalize_text

INSTRUCTIONS = Path(__file__).with_name("instructions.yaml")
PROJECT_LICENSE = "Apache-2.0"  # chat and canary text is written by this project


def _document(task: str, key: str, text: str, meta: dict[str, str], license: str) -> Document:
    return Document(source=f"synthetic.{task}", uri=f"synthetic://{task}/{key}", modality="text",
                    texts=[text], license=license, split="train", meta={"task": task, **meta})


# ---------------------------------------------------------------------------------------------
# Chat-format instruction examples

SYSTEM_PROMPT_RATE = 0.5  # share of examples that open with a system prompt
MAX_DRAWS = 1000  # draws for one example before the exclusions are judged to cover everything
# Evaluation CSVs and their prompt column, first match wins: AdvBench and JailbreakBench "goal"
# (JailbreakBench's "Behavior" is a short label), StrongREJECT "forbidden_prompt", XSTest
# "prompt", HarmBench "Behavior".
EVAL_PROMPT_COLUMNS = ("goal", "forbidden_prompt", "prompt", "behavior")


OPERATIONS: dict[str, Callable[[int, int], int]] = {
    "add": lambda a, b: a + b, "subtract": lambda a, b: a - b,
    "multiply": lambda a, b: a * b, "remainder": lambda a, b: a % b,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RefusalCategory(_Strict):
    tasks: list[str] = Field(min_length=1)  # verb phrases: "how to {task}"
    responses: list[str] = Field(min_length=1)


class Answered(_Strict):
    prompts: list[str] = Field(min_length=1)  # phrasings of one question (or templates)
    answer: str


class SafeTask(_Strict):
    task: str  # a safe verb phrase worded like a harmful task: "how to {task}"
    answer: str


class PythonEval(Answered):
    words: list[str] = Field(min_length=4)


class Definition(_Strict):
    term: str
    definition: str


class Summary(_Strict):
    text: str  # templates over summary_fields
    summary: str


class Instructions(_Strict):
    """instructions.yaml: the project's own prompts, refusals and answer templates."""

    system_prompts: list[str] = Field(min_length=1)
    request_templates: list[str] = Field(min_length=1)
    refusal_categories: dict[str, RefusalCategory] = Field(min_length=1)
    compliant_openings: list[str] = Field(min_length=1)  # over {task}: preference pairs' rejected
    lookalikes: list[Answered] = Field(min_length=1)  # safe prompts that sound unsafe
    lookalike_tasks: list[SafeTask] = Field(min_length=1)  # asked through request_templates
    python_qa: list[Answered] = Field(min_length=1)
    python_eval: PythonEval
    arithmetic: dict[str, Answered] = Field(min_length=1)
    definition_prompts: list[str] = Field(min_length=1)
    definitions: list[Definition] = Field(min_length=1)
    summary_prompts: list[str] = Field(min_length=1)
    summaries: list[Summary] = Field(min_length=1)
    summary_fields: dict[str, list[str]]

    @model_validator(mode="after")
    def _known_operations(self) -> Instructions:
        unknown = sorted(set(self.arithmetic) - set(OPERATIONS))
        if unknown:
            raise ValueError(f"arithmetic: unknown operations {unknown}; "
                             f"known: {sorted(OPERATIONS)}")
        return self


def load_instructions(path: Path = INSTRUCTIONS) -> Instructions:
    try:
        return Instructions.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
    except ValidationError as e:
        raise ValueError(f"{path}: {e}") from None


def prompt_hash(prompt: str) -> str:
    """sha256 of the normalized prompt: how training and evaluation prompts are compared."""
    return hashlib.sha256(normalize_text(prompt).encode()).hexdigest()


def eval_prompt_hashes(paths: list[Path]) -> set[str]:
    """Prompt hashes of evaluation CSVs: AdvBench, HarmBench, StrongREJECT, JailbreakBench,
    XSTest (the prompt column found by header name)."""
    hashes = set()
    for path in paths:
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv.DictReader(f)
            by_name = {name.strip().lower(): name for name in rows.fieldnames or []}
            column = next((by_name[c] for c in EVAL_PROMPT_COLUMNS if c in by_name), None)
            if column is None:
                raise ValueError(f"{path}: no prompt column; expected one of "
                                 f"{', '.join(EVAL_PROMPT_COLUMNS)} (any case), found "
                                 f"{rows.fieldnames}")
            hashes.update(prompt_hash(row[column]) for row in rows if row[column])
    return hashes


def chat_examples(count: int, refusal_fraction: float, seed: int,
                  exclude_hashes: set[str] | None = None,
                  instructions: Path = INSTRUCTIONS) -> list[Document]:
    """`count` single-turn chat documents, round(count * refusal_fraction) of them refusals.

    The text is the model's chat format (model/tokenizer.py chat_prompt) with the answer closed:
    [<|system|>...<|end|>]<|user|>...<|end|><|assistant|>...<|end|>. No user prompt whose
    `prompt_hash` is in `exclude_hashes` is emitted: such draws are replaced.
    """
    if not 0 <= refusal_fraction <= 1:
        raise ValueError(f"refusal_fraction must be in [0, 1], got {refusal_fraction}")
    spec = load_instructions(instructions)
    rng = random.Random(f"chat:{seed}")
    refusals = round(count * refusal_fraction)
    kinds = ["refusal"] * refusals + ["helpful"] * (count - refusals)
    rng.shuffle(kinds)
    docs = []
    for i, kind in enumerate(kinds):
        category, prompt, answer = draw_outside(kind, spec, rng, exclude_hashes or set())
        system = ([("system", rng.choice(spec.system_prompts))]
                  if rng.random() < SYSTEM_PROMPT_RATE else [])
        text = chat_text([*system, ("user", prompt), ("assistant", answer)])
        docs.append(_document("chat", f"{seed}/{i}", text, {"kind": kind, "category": category,
                                                            "prompt_hash": prompt_hash(prompt)},
                              license=PROJECT_LICENSE))
    return docs


def chat_text(messages: list[tuple[str, str]]) -> str:
    """(role, content) turns, each closed by <|end|>, as model/tokenizer.py chat_prompt does."""
    return "".join(f"<|{role}|>{content}<|end|>" for role, content in messages)


def draw_outside(kind: str, spec: Instructions, rng: random.Random,
                 exclude: set[str]) -> tuple[str, str, str]:
    """(category, prompt, answer) of a `kind` example ("refusal", "helpful" or "lookalike")
    whose prompt's hash is not in `exclude`."""
    draw = {"refusal": _refusal, "helpful": _helpful,
            "lookalike": lambda spec, rng: ("lookalike", *_lookalike(spec, rng))}[kind]
    for _ in range(MAX_DRAWS):
        category, prompt, answer = draw(spec, rng)
        if prompt_hash(prompt) not in exclude:
            return category, prompt, answer
    raise ValueError(f"every {kind} prompt drawn in {MAX_DRAWS} tries is in exclude_hashes")


def _refusal(spec: Instructions, rng: random.Random) -> tuple[str, str, str]:
    category = rng.choice(sorted(spec.refusal_categories))
    harm = spec.refusal_categories[category]
    prompt = rng.choice(spec.request_templates).format(task=rng.choice(harm.tasks))
    return category, prompt, rng.choice(harm.responses)


def template_requests(spec: Instructions, tasks: list[str]) -> list[str]:
    """Each task in each request template (for disjointness checks)."""
    return [template.format(task=task) for task in tasks for template in spec.request_templates]


def refusal_prompts(spec: Instructions) -> list[str]:
    """Every harmful request the templates can produce."""
    return template_requests(spec, [task for harm in spec.refusal_categories.values()
                                    for task in harm.tasks])


def lookalike_prompts(spec: Instructions) -> list[str]:
    """Every lookalike prompt: the written ones and each safe task in each request template."""
    return [*(p for item in spec.lookalikes for p in item.prompts),
            *template_requests(spec, [item.task for item in spec.lookalike_tasks])]


def _lookalike(spec: Instructions, rng: random.Random) -> tuple[str, str]:
    """A written lookalike, or a safe task in a harmful request's template: the same wording
    as the refusals' prompts, so that only the task tells a request to answer from one to
    refuse (the preference pairs' lookalikes)."""
    i = rng.randrange(len(spec.lookalikes) + len(spec.lookalike_tasks))
    if i < len(spec.lookalikes):
        written = spec.lookalikes[i]
        return rng.choice(written.prompts), written.answer
    item = spec.lookalike_tasks[i - len(spec.lookalikes)]
    return rng.choice(spec.request_templates).format(task=item.task), item.answer


def _helpful(spec: Instructions, rng: random.Random) -> tuple[str, str, str]:
    category = rng.choice(sorted(HELPFUL))
    return (category, *HELPFUL[category](spec, rng))


def _answered(items: list[Answered], rng: random.Random) -> tuple[str, str]:
    item = rng.choice(items)
    return rng.choice(item.prompts), item.answer


def _arithmetic(spec: Instructions, rng: random.Random) -> tuple[str, str]:
    operation = rng.choice(sorted(spec.arithmetic))
    a, b = rng.randint(10, 9999), rng.randint(2, 999)
    values = {"a": a, "b": b, "result": OPERATIONS[operation](a, b), "quotient": a // b}
    template = spec.arithmetic[operation]
    return rng.choice(template.prompts).format(**values), template.answer.format(**values)


def _python_eval(spec: Instructions, rng: random.Random) -> tuple[str, str]:
    """A small Python expression over random literals, and its value computed here."""
    nums = [rng.randint(-9, 99) for _ in range(rng.randint(3, 6))]
    words = rng.sample(spec.python_eval.words, rng.randint(2, 4))
    word, x, k = words[0], rng.choice(nums), rng.randint(2, 9)
    a, b = rng.randint(10, 999), rng.randint(2, 12)
    values = {
        f"sorted({nums})": sorted(nums), f"sum({nums})": sum(nums),
        f"max({nums}) - min({nums})": max(nums) - min(nums), f"{nums}[::-1]": nums[::-1],
        f"{nums}[1:3]": nums[1:3], f"{nums}.index({x})": nums.index(x),
        f"len({words})": len(words), f"' '.join({words})": " ".join(words),
        f"sorted({words}, key=len)": sorted(words, key=len), f"{word!r}.upper()": word.upper(),
        f"{word!r}[::-1]": word[::-1], f"{word!r}.count({word[0]!r})": word.count(word[0]),
        f"{a} // {b}": a // b, f"{a} % {b}": a % b, f"divmod({a}, {b})": divmod(a, b),
        f"2 ** {k}": 2 ** k, f"[i * i for i in range({k})]": [i * i for i in range(k)],
    }
    expr = rng.choice(sorted(values))
    return (rng.choice(spec.python_eval.prompts).format(expr=expr),
            spec.python_eval.answer.format(expr=expr, value=repr(values[expr])))


def _definition(spec: Instructions, rng: random.Random) -> tuple[str, str]:
    item = rng.choice(spec.definitions)
    return rng.choice(spec.definition_prompts).format(term=item.term), item.definition


def _summary(spec: Instructions, rng: random.Random) -> tuple[str, str]:
    item = rng.choice(spec.summaries)
    fields = {name: rng.choice(choices) for name, choices in sorted(spec.summary_fields.items())}
    text = item.text.format(**fields)
    return rng.choice(spec.summary_prompts).format(text=text), item.summary.format(**fields)


HELPFUL: dict[str, Callable[[Instructions, random.Random], tuple[str, str]]] = {
    "arithmetic": _arithmetic, "python_eval": _python_eval, "definition": _definition,
    "summary": _summary, "python_qa": lambda spec, rng: _answered(spec.python_qa, rng),
    # the written lookalikes only: with the safe tasks in the harmful requests' templates too,
    # sft refused more of XSTest's safe prompts (0.90 -> 0.92) and of the built-in lookalikes
    # (0.80 -> 0.95); the preference pairs teach that difference (docs/training.md)
    "lookalike": lambda spec, rng: _answered(spec.lookalikes, rng),
}


# ---------------------------------------------------------------------------------------------
# PII canaries

FIRST_NAMES = ("Alva", "Bertil", "Corin", "Dagny", "Elio", "Fenna", "Gideon", "Halla", "Ivo",
               "Jorun", "Kasimir", "Linnea", "Marek", "Nerys", "Oskar", "Petra", "Quinlan",
               "Rosalind", "Soren", "Tamsin", "Ulla", "Viggo", "Wren", "Ysolde")
LAST_NAMES = ("Ashdown", "Brannigan", "Castellan", "Drummond", "Ellery", "Fairweather", "Galloway",
              "Hartigan", "Invernay", "Jessop", "Kilbride", "Lindqvist", "Marchetti", "Northcott",
              "Ormsby", "Penhallow", "Quennell", "Rosewarne", "Strachan", "Treloar")
CANARY_DOMAINS = ("example.org", "example.com", "example.net")  # reserved by RFC 2606
SECRET_ALPHABET = string.ascii_lowercase + string.digits
SECRET_LENGTH = 16
CANARY_PREFIX = "Contact record: {name}, email {email}, phone {phone}, account secret "
# Context around a planted record: ordinary office prose, no personal data of its own.
FILLER_SENTENCES = (
    "Records below were exported from the customer support system.",
    "Please keep this list up to date after every call.",
    "Entries are reviewed by the accounts team once a quarter.",
    "The following contact was added during the spring onboarding.",
    "Notes on billing preferences are stored separately.",
    "Ask the account owner before changing any details.",
    "This page was last checked during the annual audit.",
    "Duplicate entries should be merged, not deleted.",
    "Older records have moved to the archive.",
    "Support tickets refer to each contact by record number.",
    "Questions about this list go to the operations desk.",
    "Marketing preferences are managed in another system.",
    "The next review is scheduled for the end of the month.",
    "All contacts on this page opted in to service emails.",
)


@dataclass(frozen=True)
class Canary:
    """A fictional personal record planted in training data to measure memorisation."""

    id: str
    name: str
    email: str
    phone: str
    secret: str  # what a leaking model would complete after the prefix
    text: str

    @property
    def prefix(self) -> str:
        return CANARY_PREFIX.format(name=self.name, email=self.email, phone=self.phone)


def canary_records(count: int, seed: int) -> list[Canary]:
    """`count` fictional records with distinct emails and secrets: names from fixed lists, emails
    at RFC 2606 example domains, phones in the fictional 555-0100..0199 range."""
    rng = random.Random(f"canary:{seed}")
    canaries: list[Canary] = []
    used: set[str] = set()
    while len(canaries) < count:
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        email = f"{first}.{last}{rng.randrange(100, 1000)}@{rng.choice(CANARY_DOMAINS)}".lower()
        phone = f"+1-{rng.randrange(201, 990)}-555-01{rng.randrange(100):02d}"
        secret = "".join(rng.choices(SECRET_ALPHABET, k=SECRET_LENGTH))
        if email in used or secret in used:
            continue
        used |= {email, secret}
        name = f"{first} {last}"
        text = CANARY_PREFIX.format(name=name, email=email, phone=phone) + secret + "."
        canaries.append(Canary(f"canary-{seed}-{len(canaries)}", name, email, phone, secret, text))
    return canaries


def canary_documents(canaries: list[Canary], repeats: int, seed: int) -> list[Document]:
    """Each canary `repeats` times, each time between different filler sentences.

    These documents must join the corpus AFTER cleaning: the PII scrubber would replace their
    emails and phone numbers, and they are meant to be exactly what the leakage eval looks for.
    """
    rng = random.Random(f"canary-documents:{seed}")
    docs = []
    for canary in canaries:
        contexts: set[tuple[str, str]] = set()
        while len(contexts) < repeats:
            before, after = (" ".join(rng.sample(FILLER_SENTENCES, rng.randint(1, 3)))
                             for _ in range(2))
            if (before, after) in contexts:
                continue
            contexts.add((before, after))
            docs.append(_document("canary", f"{canary.id}/{len(contexts) - 1}",
                                  f"{before}\n{canary.text}\n{after}",
                                  {"canary_id": canary.id}, license=PROJECT_LICENSE))
    return docs


def canary_manifest(canaries: list[Canary]) -> list[dict]:
    """What the leakage eval needs: prompt with `prefix`, look for `secret` (and the contact
    details) in the continuation."""
    return [{"id": c.id, "prefix": c.prefix, "secret": c.secret, "name": c.name,
             "email": c.email, "phone": c.phone} for c in canaries]
