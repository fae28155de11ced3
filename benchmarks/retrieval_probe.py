"""Does a small model learn to retrieve, and from which data? A fast, in-process probe of the
retrieval curriculum: the project's Transformer and training step on packed rows mixed from
training text, fact lists, facts in haystacks, recall drills and copy documents, measured as it
trains on held-out examples of each kind.

    python benchmarks/retrieval_probe.py [--quick] [--mix text=0.2,lists=0.6,haystacks=0.2]
        [--steps 600] [--seq-len 256] [--batch 16] [--d-model 128] [--tie] [--split-digits]
    python benchmarks/retrieval_probe.py --checkpoint DIR [--seq-len 512]   # measure, no training

Figures (held out, teacher-forced): the accuracy of the first digit of an answer (finding the
value by its key) and of the digits after it (copying once found), for fact lists, haystacks and
drills; and the eval needle's likelihood rank-1 share at the row length ("The special magic
{city} number is: ...", 10 candidates), beside its chance (0.1) measured in the same run. Drills
are a fact list in the form "Key: value." read twice, the second time shuffled; copy documents
are a random stretch of the 256 most frequent tokens repeated (the induction unit test's data);
mqar documents are Zoology's multi-query associative recall over one-token keys and values (the
128 most frequent tokens as keys, the next 128 as values: `k1 v1 ... kn vn`, then the keys again
in another order, each followed by its value), measured as `mqar_recall` (chance about 0.1);
mqar2 documents are the same with two-token keys and a ":" between key and value (`k k : v`), the
step from MQAR towards the drills' "Key: value.", measured as `mqar2_recall`. The last line is
JSON."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from _common import emit_json, parse_args, print_table

from model.checkpoint import load_checkpoint
from model.config import get_preset
from model.encoders import Media
from model.tokenizer import BOS_ID, EOS_ID, Tokenizer
from model.transformer import Transformer
from workers.data import retrieval
from workers.data.needles import draw_needle, needle_sentence
from workers.data.pack import PackedSequences
from workers.data.sources import python_docs_corpus
from workers.evals.haystack import (distractor_numbers, insert_at_depths, question_prompt,
                                    rank_of_first)
from workers.train.data import Batch
from workers.train.loop import OptimConfig, make_optimizer, train_step

KINDS = ("text", "lists", "haystacks", "drills", "copies", "mqar", "mqar2")
MQAR_PAIRS = (4, 16)  # key-value pairs of an associative-recall document: at least, at most
HELD_OUT_TEXTS = 12  # the corpus's last texts: haystacks of the held-out examples
SAMPLES = 20  # held-out examples per kind


def add_arguments(parser) -> None:
    parser.add_argument("--mix", default="text=0.2,lists=0.6,haystacks=0.2",
                        help=f"shares of the document kinds ({', '.join(KINDS)})")
    parser.add_argument("--warm-mix", action="append", default=[],
                        help="a mix for the first --warm-steps steps (a curriculum's first phase); "
                             "repeated, phases in turn, each with its own --warm-steps")
    parser.add_argument("--warm-steps", type=int, action="append", default=[])
    parser.add_argument("--copy-alphabet", type=int, default=256,
                        help="copy documents draw from this many of the most frequent tokens")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--tie", action="store_true", help="tie input and output embeddings")
    parser.add_argument("--vocab", type=int, default=4096, help="the BPE tokenizer's vocabulary")
    parser.add_argument("--split-digits", action="store_true",
                        help="a tokenizer that splits numbers into single digits")
    parser.add_argument("--key-conv", type=int, default=0, metavar="K",
                        help="a hypothesis test, not a model option: add a causal depthwise "
                             "convolution of width K over each layer's keys (smeared keys)")
    parser.add_argument("--qkv-conv", type=int, default=0, metavar="K",
                        help="as --key-conv, over queries, keys and values (each its own)")
    parser.add_argument("--answers-only", action="store_true",
                        help="fact lists, haystacks and drills count in the loss from their "
                             "questions (or recall) on: the lookups are a larger share of it")
    parser.add_argument("--every", type=int, default=100, help="measure every N steps")
    parser.add_argument("--checkpoint", default=None,
                        help="measure this checkpoint (its weights and tokenizer; a pipeline "
                             "stage's) on the held-out sets instead of training a model")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (bf16 autocast)")


class ShortConv(torch.nn.Module):
    """k_t + sum_j w_j * k_(t-j) per channel, j = 1..K-1 (starting at zero), over a projection's
    output: attention can match a key a few tokens back in one step ("smeared keys"; over queries
    too, a query can carry the tokens before it). Probe-only: it reads across packed documents'
    borders and has no decode path."""

    def __init__(self, wk: torch.nn.Linear, width: int):
        super().__init__()
        self.wk, self.width = wk, width
        self.conv = torch.nn.Conv1d(wk.out_features, wk.out_features, width,
                                    groups=wk.out_features, bias=False)
        torch.nn.init.zeros_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.wk(x)  # (B, T, C)
        past = torch.nn.functional.pad(k.transpose(1, 2), (self.width - 1, 0))  # (B, C, T+K-1)
        return k + self.conv(past).transpose(1, 2)


class Documents:
    """Each kind of training document, drawn from the training texts, as token ids."""

    def __init__(self, tokenizer: Tokenizer, texts: list[str], seq_len: int, seed: int,
                 answers_only: bool = False, copy_alphabet: int = 256):
        self.tok, self.texts, self.seq_len = tokenizer, texts, seq_len
        self.answers_only, self.copy_alphabet = answers_only, copy_alphabet
        self.rng = np.random.default_rng(seed)
        self.stream = tokenizer.encode("\n\n".join(texts))
        self.chars_per_token = len("\n\n".join(texts)) / len(self.stream)
        counts = np.bincount(np.array(self.stream), minlength=tokenizer.vocab_size)
        self.frequent = np.argsort(-counts)[:256]
        (self.colon,) = tokenizer.encode(":")

    def wrap(self, text: str) -> tuple[list[int], list[bool]]:
        """The document's tokens, and which of them the loss counts: all of them, or with
        `answers_only` those from the first question (or the recall) on."""
        cut = min((i for i in (text.find("Question: "), text.find("\nRecall:")) if i >= 0),
                  default=0) if self.answers_only else 0
        head, tail = self.tok.encode(text[:cut]) if cut else [], self.tok.encode(text[cut:])
        return [BOS_ID, *head, *tail, EOS_ID], [False] * (1 + len(head)) + [True] * (len(tail) + 1)

    def draw(self, kind: str) -> tuple[list[int], list[bool]]:
        rng, n = self.rng, self.seq_len
        if kind == "text":
            start = int(rng.integers(len(self.stream) - n))
            ids = [BOS_ID, *self.stream[start:start + int(rng.integers(n // 2, n))]]
            return ids, [True] * len(ids)
        if kind == "lists":
            return self.wrap(list_item(rng)[0])
        if kind == "haystacks":
            chars = int(rng.integers(n // 4, n - 40) * self.chars_per_token)
            return self.wrap(haystack_item(self.texts, chars, rng)[0])
        if kind == "drills":
            return self.wrap(drill_item(rng)[0])
        if kind in ("mqar", "mqar2"):
            ids = [BOS_ID, *self.mqar(rng, two_token_keys=kind == "mqar2")[0], EOS_ID]
            return ids, [True] * len(ids)
        period = int(rng.integers(4, 40))  # copies
        stretch = list(rng.choice(self.frequent[:self.copy_alphabet], period))
        ids = [BOS_ID, *(stretch * 8)[:int(rng.integers(2 * period, min(n, 6 * period)))], EOS_ID]
        return ids, [True] * len(ids)

    def mqar(self, rng, two_token_keys: bool = False) -> tuple[list[int], list[int]]:
        """Multi-query associative recall (Zoology's MQAR) over one-token keys and values: pairs
        `k v` side by side, then every key again in another order, each followed by its value;
        with `two_token_keys`, `k k : v` (a key is a pair of tokens, distinct pairs sharing their
        tokens, and a separator before the value). (tokens, the positions of the recalled
        values)."""
        n = int(rng.integers(*MQAR_PAIRS))
        if two_token_keys:  # few last tokens: a key's last token alone does not tell it apart
            heads = rng.choice(self.frequent[8:128], n, replace=False)
            keys = [[int(h), int(t)] for h, t in zip(heads, rng.choice(self.frequent[:8], n))]
        else:
            keys = [[int(k)] for k in rng.choice(self.frequent[:128], n, replace=False)]
        values = [int(v) for v in rng.choice(self.frequent[128:], n)]
        sep = [self.colon] if two_token_keys else []
        pairs = [t for k, v in zip(keys, values) for t in (*k, *sep, v)]
        recall = [t for i in rng.permutation(n) for t in (*keys[i], *sep, values[i])]
        width = len(pairs) // n
        return pairs + recall, [len(pairs) + width * j + width - 1 for j in range(n)]

    def row(self, mix: dict[str, float]) -> tuple[list[int], list[int], list[bool]]:
        """seq_len + 1 tokens of whole documents (the last one cut), their document ids and
        which of them the loss counts."""
        kinds, shares = list(mix), np.array(list(mix.values()))
        ids: list[int] = []
        docs: list[int] = []
        counted: list[bool] = []
        while len(ids) <= self.seq_len:
            doc, count = self.draw(kinds[int(self.rng.choice(len(kinds), p=shares / shares.sum()))])
            docs += [docs[-1] + 1 if docs else 0] * len(doc)
            ids += doc
            counted += count
        n = self.seq_len + 1
        return ids[:n], docs[:n], counted[:n]


def list_item(rng) -> tuple[str, str, str]:
    """A fact list and its first question: (whole text, the text up to the answer, answer)."""
    text, _ = retrieval.fact_list(rng)
    facts, questions = text.split("\n\n", 1)
    question, answer = questions.split("\n")[0].rsplit(" Answer: ", 1)
    return text, f"{facts}\n\n{question} Answer:", answer


def haystack_item(texts, chars, rng) -> tuple[str, str, str]:
    text, _ = retrieval.haystack_example(str(rng.choice(["single", "multi_key"])), texts, chars,
                                          rng)
    prompt, answer = text.rsplit(" Answer: ", 1)
    return text, prompt + " Answer:", answer


def drill_item(rng) -> tuple[str, str, str]:
    """A recall drill, the text up to its first recalled value, and that value."""
    text, meta = retrieval.drill(rng)
    listed, recall = text.split("\nRecall: ")
    return text, f"{listed}\nRecall: {recall.split(':')[0]}:", meta["answer"].split(", ")[0]


def held_out_mqar(docs: "Documents", two_token_keys: bool = False
                  ) -> list[tuple[list[int], list[int]]]:
    """MQAR documents from another seed: (tokens with BOS, positions of the recalled values)."""
    rng = np.random.default_rng(11)
    items = []
    for _ in range(SAMPLES):
        ids, at = docs.mqar(rng, two_token_keys)
        items.append(([BOS_ID, *ids], [p + 1 for p in at]))
    return items


def held_out_copies(docs: "Documents") -> list[tuple[list[int], list[int]]]:
    """Random stretches of the 256 most frequent tokens, repeated to 128 tokens: (tokens with
    BOS, positions of the repeats)."""
    rng = np.random.default_rng(13)
    items = []
    for _ in range(SAMPLES):
        period = int(rng.integers(8, 32))
        ids = [BOS_ID, *[int(t) for t in rng.choice(docs.frequent, period)] * (128 // period + 1)]
        items.append((ids[:129], list(range(period + 1, 129))))
    return items


def on_model(model, rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, device=next(model.parameters()).device)


@torch.no_grad()
def recall_accuracy(model, items) -> float:
    """Teacher-forced accuracy of the tokens at the items' positions: MQAR's recalled values
    (guessing among a document's values scores 1/pairs, about 0.1) or a copy's repeats."""
    hits = count = 0
    for ids, at in items:
        pred = model(on_model(model, [ids])).logits[0].argmax(-1).cpu()
        hits += sum(int(pred[p - 1] == ids[p]) for p in at)
        count += len(at)
    return hits / count


def held_out(tok: Tokenizer, texts: list[str], seq_len: int, chars_per_token: float):
    """(prompt ids, answer) per kind, from other seeds and the held-out texts; the eval needles."""
    rng = np.random.default_rng(7)
    room = int((seq_len - 60) * chars_per_token)
    makers = {"lists": lambda: list_item(rng), "drills": lambda: drill_item(rng),
              "haystacks": lambda: haystack_item(texts, room, rng)}
    sets = {}
    for kind, make in makers.items():
        items = []
        for _ in range(50 * SAMPLES):
            if len(items) == SAMPLES:
                break
            _, prompt, answer = make()
            ids = [BOS_ID, *tok.encode(prompt)]
            if len(ids) < seq_len - 16:
                items.append((ids, answer))
        if len(items) < SAMPLES:
            raise SystemExit(f"--seq-len {seq_len} is too short for held-out {kind} examples")
        sets[kind] = items
    needles = []
    for i in range(SAMPLES):
        city, number = draw_needle(rng)
        haystack, _ = retrieval.haystack_with_room(texts, int((seq_len - 30) * chars_per_token),
                                                   rng)
        text = insert_at_depths(haystack, [needle_sentence(city, number)], [i / (SAMPLES - 1)])
        needles.append(([BOS_ID, *tok.encode(text + question_prompt(city))[-(seq_len - 12):]],
                        number))
    return sets, needles


@torch.no_grad()
def value_accuracy(model, tok, items) -> tuple[float, float]:
    """Teacher-forced accuracy of the answer's first digit (or character group) and the rest."""
    first = rest = rest_count = 0
    for ids, answer in items:
        target = tok.encode(" " + answer)
        pred = model(on_model(model, [ids + target])).logits[0, len(ids) - 1:-1].argmax(-1).cpu()
        hit = (pred == torch.tensor(target)).float()
        lead = 1 if tok.decode(target[:1]).strip() == "" else 0  # a lone space before the value
        first += hit[lead].item()
        rest += hit[lead + 1:].sum().item()
        rest_count += len(target) - lead - 1
    return first / len(items), rest / max(rest_count, 1)


@torch.no_grad()
def needle_rank1(model, tok, needles, rng) -> float:
    wins = 0
    for ids, number in needles:
        candidates = [number, *distractor_numbers(rng, 9, {number})]
        rows = [tok.encode(" " + c) for c in candidates]
        width = max(map(len, rows))
        x = on_model(model, [ids + r + [EOS_ID] * (width - len(r)) for r in rows])
        logp = model(x).logits[:, len(ids) - 1:-1].log_softmax(-1).cpu()  # (10, width, V)
        scores = [sum(logp[i, j, t].item() for j, t in enumerate(r)) for i, r in enumerate(rows)]
        wins += rank_of_first(scores) == 1
    return wins / len(needles)


def parse_mix(text: str) -> dict[str, float]:
    mix = {k: float(v) for k, v in (part.split("=") for part in text.split(","))}
    if unknown := set(mix) - set(KINDS):
        raise SystemExit(f"a mix names unknown kinds {sorted(unknown)}; choose from {KINDS}")
    return mix


def measure(model, tok, sets, recall_sets, needles, rng) -> dict[str, float]:
    """The held-out figures of a model in eval mode: per kind, the first and later pieces of an
    answer; the MQAR and copy recalls; the eval needle's rank-1 share."""
    row = {}
    for kind, items in sets.items():
        first, rest = value_accuracy(model, tok, items)
        row[f"{kind}_first"], row[f"{kind}_rest"] = round(first, 3), round(rest, 3)
    for name, items in recall_sets.items():
        row[name] = round(recall_accuracy(model, items), 3)
    row["niah_rank1"] = needle_rank1(model, tok, needles, rng)
    return row


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], add_arguments)
    steps = 100 if args.quick else args.steps
    mix = parse_mix(args.mix)
    if len(args.warm_mix) != len(args.warm_steps):
        raise SystemExit("give each --warm-mix its --warm-steps")
    phases = [(parse_mix(m), n) for m, n in zip(args.warm_mix, args.warm_steps)]
    phase_ends = np.cumsum([n for _, n in phases]).tolist()
    torch.manual_seed(0)
    corpus = python_docs_corpus()
    texts, held_texts = corpus[:-HELD_OUT_TEXTS], corpus[-HELD_OUT_TEXTS:]
    if args.checkpoint:
        model, tok = load_checkpoint(args.checkpoint)
    else:
        tok = Tokenizer.train(texts, vocab_size=args.vocab, split_digits=args.split_digits)
    docs = Documents(tok, texts, args.seq_len, seed=0, answers_only=args.answers_only,
                     copy_alphabet=args.copy_alphabet)
    sets, needles = held_out(tok, held_texts, args.seq_len, docs.chars_per_token)
    recall_sets = {"mqar_recall": held_out_mqar(docs), "mqar2_recall": held_out_mqar(docs, True),
                   "copy_acc": held_out_copies(docs)}
    rng = np.random.default_rng(5)
    if args.checkpoint:
        model.eval()
        row = {"checkpoint": args.checkpoint, **measure(model, tok, sets, recall_sets, needles, rng)}
        print_table("retrieval probe: a checkpoint's held-out figures", list(row), [list(row.values())])
        emit_json({**row, "niah_rank1_chance": 0.1, "seq_len": args.seq_len})
        return
    cfg = get_preset("small", vocab_size=tok.vocab_size, d_model=args.d_model,
                     n_heads=max(2, args.d_model // 32), n_experts=4,
                     expert_hidden=2 * args.d_model, dense_hidden=4 * args.d_model,
                     max_seq_len=args.seq_len, rope_original_max_seq_len=args.seq_len,
                     tie_embeddings=args.tie)
    model = Transformer(cfg)
    for layer in model.layers:
        if args.key_conv:
            layer.attn.wk = ShortConv(layer.attn.wk, args.key_conv)
        if args.qkv_conv:
            for name in ("wq", "wk", "wv"):
                setattr(layer.attn, name, ShortConv(getattr(layer.attn, name), args.qkv_conv))
    device = torch.device(args.device)
    model.to(device)
    optim = OptimConfig(lr=args.lr, warmup_steps=min(50, steps // 4), total_steps=steps,
                        weight_decay=0.1)
    optimizer = make_optimizer(model, optim)
    rows, started = [], time.perf_counter()
    for step in range(steps):
        phase = next((m for (m, _), end in zip(phases, phase_ends) if step < end), mix)
        batch = [docs.row(phase) for _ in range(args.batch)]
        packed = PackedSequences(*(torch.tensor([b[i] for b in batch]) for i in range(3)))
        result = train_step(model, optimizer, [Batch(packed, Media())], step, optim,
                            autocast_dtype=torch.bfloat16 if device.type == "cuda" else None)
        if (step + 1) % args.every == 0 or step == steps - 1:
            model.eval()
            row = {"step": step + 1, "loss": round(result.loss, 3),
                   **measure(model, tok, sets, recall_sets, needles, rng)}
            row["minutes"] = round((time.perf_counter() - started) / 60, 1)
            model.train()
            rows.append(row)
            print(row, flush=True)
    print_table(f"retrieval probe: mix {args.mix}, d_model {args.d_model}, "
                f"{args.seq_len} tokens x {args.batch}, tied={args.tie}, "
                f"split digits={args.split_digits}, key conv={args.key_conv}, "
                f"qkv conv={args.qkv_conv}, answers only={args.answers_only}",
                list(rows[0]), [list(r.values()) for r in rows])
    emit_json({**rows[-1], "niah_rank1_chance": 0.1, "mix": mix, "tie": args.tie,
               "warm_phases": [{"mix": m, "steps": n} for m, n in phases],
               "copy_alphabet": args.copy_alphabet, "split_digits": args.split_digits,
               "key_conv": args.key_conv, "qkv_conv": args.qkv_conv,
               "answers_only": args.answers_only,
               "seq_len": args.seq_len, "batch": args.batch, "d_model": args.d_model,
               "vocab": args.vocab,
               "tokens_per_step": args.batch * args.seq_len,
               "params": sum(p.numel() for p in model.parameters()),
               "ln_chance_digit": round(math.log(10), 3)})


if __name__ == "__main__":
    main()
