"""Copy rows: a random prefix, then a random stretch repeated to the end of the row. A model can
predict the repeats only by copying by content (an induction head, the mechanism retrieval is
built on), and the period and offset vary from row to row, so copying by position cannot. The
induction unit test and benchmarks/induction_control.py train on them."""

from __future__ import annotations

import torch


def repeated_rows(n: int, width: int, vocab: range, periods: tuple[int, int],
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, width) token rows from `vocab`, a stretch of `periods[0]` to `periods[1] - 1` tokens
    repeated after a prefix shorter than it; and the (n, width) mask of the tokens that repeat an
    earlier one (the second copy on)."""
    rows, repeats = [], []
    for _ in range(n):
        period = int(torch.randint(*periods, (), generator=generator))
        offset = int(torch.randint(0, period, (), generator=generator))
        stretch = torch.randint(vocab.start, vocab.stop, (period,), generator=generator)
        prefix = torch.randint(vocab.start, vocab.stop, (offset,), generator=generator)
        rows.append(torch.cat([prefix, stretch.repeat(width // period + 1)])[:width])  # (width,)
        repeats.append(torch.arange(width) >= offset + period)
    return torch.stack(rows), torch.stack(repeats)
