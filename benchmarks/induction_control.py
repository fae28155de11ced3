"""Is longmix's Transformer slow to learn to copy, or is any transformer at this budget? A control
for the retrieval probe: longmix's Transformer and a textbook GPT-2-style model (learned
absolute positions, LayerNorm, GELU MLP; written here in a few lines) train on the induction unit
test's data, rows of a random stretch of tokens repeated after a random prefix, with the same
optimizer, schedule, batch and steps, in the same process.

    python benchmarks/induction_control.py [--quick] [--vocab 256] [--steps 600]

Figures (teacher-forced, on the same held-out rows): the share of repeated tokens each model
predicts, beside chance (1/vocab), and longmix / textbook as a ratio; both every --every steps.
The last line is JSON."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from _common import emit_json, parse_args, print_table, use_all_cores
from torch import nn

from model.config import get_preset
from model.tokenizer import SPECIAL_TOKENS
from model.transformer import Transformer
from workers.data.copies import repeated_rows

FIRST_ID = len(SPECIAL_TOKENS)  # the rows' token ids start after the special ones
HELD_OUT = 64


def add_arguments(parser) -> None:
    parser.add_argument("--vocab", type=int, default=256, help="distinct tokens in the rows")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)


class TextbookBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, D // self.heads).permute(
            2, 0, 3, 1, 4)  # each (B, H, T, Dh)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, Dh)
        x = x + self.out(y.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.ln2(x))


class TextbookGPT(nn.Module):
    def __init__(self, vocab: int, seq_len: int, d: int, layers: int, heads: int):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList(TextbookBlock(d, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))  # (B, T, D)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x)), torch.zeros(())  # logits (B, T, V), no auxiliary loss


class Longmix(nn.Module):
    """longmix's Transformer with the same forward signature (its routing losses added)."""

    def __init__(self, vocab: int, seq_len: int, d: int, layers: int, heads: int):
        super().__init__()
        self.model = Transformer(get_preset(
            "tiny", vocab_size=vocab, d_model=d, n_layers=layers, n_heads=heads,
            n_kv_heads=heads, max_seq_len=seq_len, rope_original_max_seq_len=seq_len,
            n_experts=4, top_k=2, expert_hidden=2 * d))

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(ids)
        return out.logits, out.aux_loss + out.z_loss


def copy_rows(gen: torch.Generator, n: int, seq_len: int, vocab: int):
    """(n, seq_len + 1) copy rows and the mask of the targets that repeat something seen."""
    return repeated_rows(n, seq_len + 1, range(FIRST_ID, FIRST_ID + vocab), (8, seq_len // 2), gen)


@torch.no_grad()
def copy_accuracy(model: nn.Module, rows: torch.Tensor, masks: torch.Tensor) -> float:
    model.eval()
    logits, _ = model(rows[:, :-1])
    model.train()
    return (logits.argmax(-1) == rows[:, 1:])[masks[:, 1:]].float().mean().item()


def train(name: str, model: nn.Module, args, held_out) -> list[float]:
    """AdamW, linear warm-up over 50 steps, clip 1.0; the copy accuracy every --every steps."""
    gen = torch.Generator().manual_seed(1)  # the same training rows for both models
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95),
                                  weight_decay=0.1)
    accuracies, started = [], time.perf_counter()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 50)
        rows, _ = copy_rows(gen, args.batch, args.seq_len, args.vocab)
        logits, extra = model(rows[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten()) + extra
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % args.every == 0 or step == args.steps - 1:
            accuracies.append(copy_accuracy(model, *held_out))
            print(f"{name}: step {step + 1} loss {loss.item():.3f} copy accuracy "
                  f"{accuracies[-1]:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    return accuracies


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], add_arguments)
    if args.quick:
        args.steps, args.every = 150, 50
    use_all_cores()
    held_out = copy_rows(torch.Generator().manual_seed(7), HELD_OUT, args.seq_len, args.vocab)
    shape = (FIRST_ID + args.vocab, args.seq_len, args.d_model, args.layers, args.d_model // 32)
    results = {}
    for name, build in (("textbook", TextbookGPT), ("longmix", Longmix)):
        torch.manual_seed(0)
        results[name] = train(name, build(*shape), args, held_out)
    steps = [min((i + 1) * args.every, args.steps) for i in range(len(results["longmix"]))]
    chance = 1 / args.vocab
    print_table(f"copy accuracy on held-out repeats: vocabulary {args.vocab}, "
                f"{args.seq_len} tokens x {args.batch}, d_model {args.d_model}, "
                f"{args.layers} layers, lr {args.lr}",
                ["step", "textbook GPT", "longmix", "longmix / textbook", "chance"],
                [[s, f"{t:.3f}", f"{m:.3f}", f"{m / max(t, 1e-9):.2f}", f"{chance:.4f}"]
                 for s, t, m in zip(steps, results["textbook"], results["longmix"])])
    emit_json({"steps": steps, "textbook_copy_accuracy": results["textbook"],
               "longmix_copy_accuracy": results["longmix"], "chance": chance,
               "longmix_vs_textbook": results["longmix"][-1] / max(results["textbook"][-1], 1e-9),
               "vocab": args.vocab, "seq_len": args.seq_len, "batch": args.batch,
               "d_model": args.d_model, "layers": args.layers, "lr": args.lr})


if __name__ == "__main__":
    main()
