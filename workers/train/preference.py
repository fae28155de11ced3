"""Direct Preference Optimization (Rafailov et al. 2023, "Direct Preference Optimization: Your
Language Model is Secretly a Reward Model"): the preference stage's objective.

For a prompt x with a chosen response y_w and a rejected one y_l, the policy π (being trained,
from the sft checkpoint) and a frozen reference π_ref (the same checkpoint):

    loss = -log σ(β [(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))])

β sets how far the policy may move from the reference. The implicit reward of a response is
β (log π(y|x) - log π_ref(y|x)); reference-free, π_ref is taken as uniform and drops out
(log-probabilities alone), which needs no second model but lets the policy drift further.

DPO only widens a difference, so it can lower both responses' likelihood (answers end early, a
refusal it was to keep becomes less likely). With a weight α > 0 the chosen responses' per-token
negative log-likelihood is added, α · (-log π(y_w|x) / |y_w|), as RPO does (Pang et al. 2024,
"Iterative Reasoning Preference Optimization"), which holds the chosen responses up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model.encoders import Media
from workers.data.pack import PackedSequences


@dataclass
class PairBatch:
    """Chosen and rejected sequences, row i of each the same prompt; both (B, L + 1), the loss
    mask on the responses' tokens."""

    chosen: PackedSequences
    rejected: PackedSequences

    def both(self) -> PackedSequences:
        """Chosen rows then rejected rows (2B, L + 1): one forward for the two."""
        return PackedSequences(*(torch.cat([getattr(self.chosen, f), getattr(self.rejected, f)])
                                 for f in ("tokens", "doc_ids", "loss_mask")))


def collate_pairs(columns: dict[str, np.ndarray]) -> PairBatch:
    """Preference rows (as Ray Data's numpy batch, PREFERENCE_SCHEMA) -> a PairBatch on CPU."""
    def rows(prefix: str) -> PackedSequences:
        def column(name: str, dtype) -> torch.Tensor:
            return torch.from_numpy(np.stack(columns[prefix + name]).astype(dtype))
        return PackedSequences(column("tokens", np.int64), column("doc_ids", np.int64),
                               column("loss_mask", np.bool_))
    return PairBatch(rows(""), rows("rejected_"))


def response_logprobs(logits: torch.Tensor, rows: PackedSequences) -> torch.Tensor:
    """(N,) summed log-probability of each row's masked target tokens (its response)."""
    targets = rows.tokens[:, 1:].to(logits.device)  # (N, L)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logp * rows.loss_mask[:, 1:].to(logits.device)).sum(-1)


@dataclass
class DpoTerms:
    loss: torch.Tensor  # ()
    chosen_rewards: torch.Tensor  # (B,) β (log π - log π_ref) of the chosen responses
    rejected_rewards: torch.Tensor  # (B,)

    def stats(self, chosen_logp: torch.Tensor, rejected_logp: torch.Tensor) -> dict[str, float]:
        return {"loss": self.loss.item(),
                "reward_margin": (self.chosen_rewards - self.rejected_rewards).mean().item(),
                "reward_accuracy": (self.chosen_rewards > self.rejected_rewards).float().mean().item(),
                "chosen_logp": chosen_logp.mean().item(),
                "rejected_logp": rejected_logp.mean().item()}


def dpo_loss(chosen_logp: torch.Tensor, rejected_logp: torch.Tensor,
             ref_chosen_logp: torch.Tensor | None, ref_rejected_logp: torch.Tensor | None,
             beta: float, chosen_tokens: torch.Tensor | None = None,
             chosen_nll_weight: float = 0.0) -> DpoTerms:
    """DPO's loss from the policy's and the reference's (None: reference-free) log-probabilities
    of the chosen and rejected responses, each (B,); with `chosen_nll_weight` α > 0, plus α times
    the chosen responses' mean per-token NLL (`chosen_tokens` (B,): their lengths)."""
    if ref_chosen_logp is None or ref_rejected_logp is None:
        ref_chosen_logp = ref_rejected_logp = torch.zeros_like(chosen_logp)
    chosen_rewards = beta * (chosen_logp - ref_chosen_logp)
    rejected_rewards = beta * (rejected_logp - ref_rejected_logp)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    if chosen_nll_weight:
        loss = loss - chosen_nll_weight * (chosen_logp / chosen_tokens).mean()
    return DpoTerms(loss, chosen_rewards.detach(), rejected_rewards.detach())


def forward_pairs(model: torch.nn.Module, rows: PackedSequences, device: torch.device):
    """The model's output on PairBatch.both()'s rows (chosen then rejected) and the responses'
    summed log-probabilities: (chosen (B,), rejected (B,)), output."""
    out = model(rows.tokens[:, :-1].to(device), Media(), doc_ids=rows.doc_ids[:, :-1].to(device))
    logp = response_logprobs(out.logits, rows)
    n = len(rows) // 2
    return logp[:n], logp[n:], out


def dpo_objective(reference: torch.nn.Module | None, beta: float, chosen_nll_weight: float = 0.0):
    """The train_step objective (workers.train.loop.Objective) of DPO against `reference`
    (frozen, in eval mode; None: reference-free), with RPO's NLL term where the weight is > 0."""
    def objective(model: torch.nn.Module, batch: PairBatch, device: torch.device):
        rows = batch.both()  # one concatenation for the policy's and the reference's forward
        chosen, rejected, out = forward_pairs(model, rows, device)
        ref = (None, None)
        if reference is not None:
            with torch.no_grad():
                ref_chosen, ref_rejected, _ = forward_pairs(reference, rows, device)
            ref = (ref_chosen, ref_rejected)
        chosen_tokens = batch.chosen.loss_mask[:, 1:].sum(-1).clamp(min=1).to(device)  # (B,)
        terms = dpo_loss(chosen, rejected, *ref, beta=beta, chosen_tokens=chosen_tokens,
                         chosen_nll_weight=chosen_nll_weight)
        return terms.loss, out, terms.stats(chosen.detach(), rejected.detach()), \
            rows.tokens[:, 1:].numel()
    return objective


@torch.no_grad()
def preference_validation(model: torch.nn.Module, reference: torch.nn.Module | None,
                          batches, beta: float) -> tuple[float, float, int]:
    """Summed DPO loss, summed implicit-reward accuracy, and the number of pairs, over `batches`
    (so that workers can add theirs up before dividing)."""
    model.eval()
    device = next(model.parameters()).device
    objective = dpo_objective(reference, beta)
    loss = correct = 0.0
    pairs = 0
    for batch in batches:
        _, _, stats, _ = objective(model, batch, device)
        n = len(batch.chosen)
        loss += stats["loss"] * n
        correct += stats["reward_accuracy"] * n
        pairs += n
    return loss, correct, pairs
