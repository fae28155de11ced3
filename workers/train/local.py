"""Train a preset in this process on real text that ships with Python: the smoke run behind
`longmix train` until the Ray Train worker exists. Same step function as the distributed path."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from model.checkpoint import save_checkpoint
from model.encoders import Media
from model.config import get_preset
from model.generate import SamplingParams, generate
from model.tokenizer import Tokenizer
from model.transformer import Transformer
from workers.data.pack import pack_documents
from workers.data.records import Document, split_of
from workers.data.sources import python_docs_corpus, stdlib_sources
from workers.train.flops import measure_matmul_peak, training_flops_per_token
from workers.train.data import Batch
from workers.train.loop import OptimConfig, StepResult, make_optimizer, train_step, validation_loss


@dataclass
class LocalTrainConfig:
    preset: str = "small"
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 300
    max_minutes: float = 10.0  # a safety cap: stop early, still save and report
    lr: float = 2e-3
    warmup_steps: int = 30
    eval_every: int = 100
    corpus_bytes: int = 3_000_000
    seed: int = 0
    sample_prompt: str = "def "

    def __post_init__(self) -> None:
        get_preset(self.preset)  # unknown preset: refused before any work
        for name in ("seq_len", "batch_size", "steps", "eval_every", "corpus_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")


@dataclass
class TrainSummary:
    preset: str
    steps: int
    tokens: int
    seconds: float
    tokens_per_second: float
    utilisation: float  # achieved FLOP/s over the measured fp32 matmul peak
    parameters: dict[str, int]
    first_loss: float
    final_loss: float
    validation_loss_start: float
    validation_loss_end: float
    max_over_mean_expert_load: list[float]  # per MoE layer, over the whole run
    checkpoint: str
    sample: str
    loss_history: list[float] = field(default_factory=list)


def mean_validation_loss(model: Transformer, data, batch_size: int) -> float:
    batches = [Batch(data.rows(torch.arange(i, min(i + batch_size, len(data)))), Media())
               for i in range(0, len(data), batch_size)]
    total, count = validation_loss(model, batches)
    return total / max(count, 1)


def load_corpus(corpus_bytes: int) -> tuple[list[str], list[str]]:
    """Train and validation documents, split by a hash of each document."""
    docs = python_docs_corpus() + stdlib_sources(max_bytes=corpus_bytes)
    splits = [split_of(Document("local", "", "text", [d]).content_hash(), 5, 0) for d in docs]
    train = [d for d, s in zip(docs, splits) if s == "train"]
    val = [d for d, s in zip(docs, splits) if s == "validation"]
    return train, val


def train_local(cfg: LocalTrainConfig, out_dir: str | Path,
                on_step: Callable[[int, StepResult, float | None], None] | None = None) -> TrainSummary:
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    model_cfg = get_preset(cfg.preset, max_seq_len=max(cfg.seq_len, get_preset(cfg.preset).max_seq_len))

    train_docs, val_docs = load_corpus(cfg.corpus_bytes)
    tokenizer = Tokenizer.train(train_docs, vocab_size=model_cfg.vocab_size)
    train = pack_documents((tokenizer.encode(d) for d in train_docs), cfg.seq_len)
    val = pack_documents((tokenizer.encode(d) for d in val_docs), cfg.seq_len)

    model = Transformer(model_cfg)
    optim_cfg = OptimConfig(lr=cfg.lr, warmup_steps=min(cfg.warmup_steps, cfg.steps),
                            total_steps=cfg.steps)
    optimizer = make_optimizer(model, optim_cfg)
    sampler = torch.Generator().manual_seed(cfg.seed)
    val_start = mean_validation_loss(model, val, cfg.batch_size)

    history: list[float] = []
    load_totals = None
    tokens, started = 0, time.perf_counter()
    for step in range(cfg.steps):
        rows = torch.randint(len(train), (cfg.batch_size,), generator=sampler)
        result = train_step(model, optimizer, [Batch(train.rows(rows), Media())], step, optim_cfg)
        history.append(result.loss)
        tokens += result.tokens
        counts = result.tokens_per_expert.float()
        load_totals = counts if load_totals is None else load_totals + counts
        val_loss = None
        if (step + 1) % cfg.eval_every == 0:
            val_loss = mean_validation_loss(model, val, cfg.batch_size)
        if on_step:
            on_step(step, result, val_loss)
        if time.perf_counter() - started > cfg.max_minutes * 60:
            break
    seconds = time.perf_counter() - started

    val_end = mean_validation_loss(model, val, cfg.batch_size)
    flops = training_flops_per_token(model_cfg, cfg.seq_len) * tokens
    peak = measure_matmul_peak(torch.float32, seconds=0.5)
    model.eval()
    sample = generate(model, tokenizer, tokenizer.encode(cfg.sample_prompt, bos=True),
                      SamplingParams(max_new_tokens=48)).text
    summary = TrainSummary(
        preset=cfg.preset, steps=len(history), tokens=tokens, seconds=round(seconds, 1),
        tokens_per_second=round(tokens / seconds, 1), utilisation=round(flops / seconds / peak, 4),
        parameters=model_cfg.param_counts(), first_loss=history[0], final_loss=history[-1],
        validation_loss_start=val_start, validation_loss_end=val_end,
        max_over_mean_expert_load=[round(float(c.max() / c.mean()), 3) for c in load_totals],
        checkpoint=str(out_dir / "checkpoint"), sample=cfg.sample_prompt + sample,
        loss_history=history)
    summary_json = json.dumps({"config": asdict(cfg), "summary": asdict(summary)}, indent=2).encode()
    save_checkpoint(out_dir / "checkpoint", model, tokenizer,
                    extra_files={"training_summary.json": summary_json})
    return summary
