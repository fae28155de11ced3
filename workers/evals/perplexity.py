"""Negative log-likelihood vs token position on held-out sequences, per modality: the cumulative
average NLL at log-spaced positions, fitted with the power law L(x) = alpha * x^beta + gamma
(Gemini 1.5 report, section 5.2.1.1). A curve that keeps falling with x means the model uses
the far context; gamma is the loss it tends to."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import numpy as np

from workers.evals.adapters import CapabilityError, ModelAdapter
from workers.evals.config import SuiteConfig
from workers.evals.figures import nll_curves
from workers.evals.heldout import HeldOut
from workers.evals.results import EvalDataset, EvalResult

MIN_TOKENS = 16  # shorter sequences say nothing about position


@dataclass
class PowerLaw:
    alpha: float
    beta: float
    gamma: float
    r2: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.alpha * np.power(x, self.beta) + self.gamma


def cumulative_nll(logprobs: list[list[float]], points: int) -> tuple[np.ndarray, np.ndarray,
                                                                       np.ndarray]:
    """Per sequence, the mean NLL of its first x predicted tokens (NaN = not predicted, skipped),
    averaged over the sequences that reach x; x log-spaced. -> positions, nll, sequences."""
    longest = max(len(lp) for lp in logprobs)
    xs = np.unique(np.geomspace(1, longest, points).astype(int))
    curves = []
    for lp in logprobs:
        nll = -np.asarray(lp, dtype=np.float64)
        seen = np.cumsum(~np.isnan(nll))
        total = np.cumsum(np.nan_to_num(nll))
        curve = np.full(len(xs), np.nan)
        reached = xs <= len(nll)
        idx = xs[reached] - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            curve[reached] = np.where(seen[idx] > 0, total[idx] / seen[idx], np.nan)
        curves.append(curve)
    stacked = np.vstack(curves)
    counts = (~np.isnan(stacked)).sum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # positions no sequence reaches
        mean = np.nanmean(stacked, axis=0)
    keep = counts > 0
    return xs[keep], mean[keep], counts[keep]


def fit_power_law(x: np.ndarray, y: np.ndarray) -> PowerLaw | None:
    """Least squares fit of alpha * x^beta + gamma; None when it does not converge."""
    from scipy.optimize import curve_fit

    if len(x) < 4:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (a, b, c), _ = curve_fit(lambda t, a, b, c: a * np.power(t, b) + c, x, y,
                                     p0=(max(y[0] - y[-1], 1e-3), -0.5, y[-1]), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    law = PowerLaw(float(a), float(b), float(c), 0.0)
    residual = np.sum((y - law(x)) ** 2)
    spread = np.sum((y - y.mean()) ** 2)
    law.r2 = float(1 - residual / spread) if spread > 0 else 1.0
    return law


def perplexity(adapter: ModelAdapter, data: HeldOut, cfg: SuiteConfig) -> EvalResult:
    result = EvalResult(eval="perplexity")
    curves = {}
    for modality in ("text", "image", "audio", "video"):
        sequences = [s for s in data.sequences if s.modality == modality][:cfg.ppl_sequences]
        if not sequences:
            continue
        try:
            logprobs = [adapter.token_logprobs(s) for s in sequences]
        except CapabilityError as e:
            result.notes.append(f"{modality}: not measured: {e}")
            continue
        logprobs = [lp for lp in logprobs if len(lp) >= MIN_TOKENS]
        if not logprobs:
            result.notes.append(f"{modality}: no held-out sequence of {MIN_TOKENS}+ tokens")
            continue
        rows = [{"index": i, "tokens": len(lp) + 1, "text": s.text[:500],
                 "sha256": hashlib.sha256(s.text.encode()).hexdigest()}
                for i, (s, lp) in enumerate(zip(sequences, logprobs))]
        dataset = EvalDataset.of(f"perplexity/{data.name}/{modality}", data.name, rows)
        result.datasets.append(dataset)
        x, y, counts = cumulative_nll(logprobs, cfg.ppl_points)
        law = fit_power_law(x, y)
        n = len(logprobs)
        result.metric(f"{modality}.nll", y[-1], n, dataset, higher_is_better=False)
        if law is None:
            result.notes.append(f"{modality}: the power law did not converge")
        else:
            for name, value in (("alpha", law.alpha), ("beta", law.beta), ("gamma", law.gamma)):
                result.metric(f"{modality}.{name}", value, n, dataset, higher_is_better=None)
            result.metric(f"{modality}.r2", law.r2, n, dataset)
        result.tables[f"perplexity_{modality}"] = [
            {"position": int(p), "cumulative_nll": float(v), "sequences": int(c),
             "fit": float(law(np.array([p]))[0]) if law else None}
            for p, v, c in zip(x, y, counts)]
        curves[f"{modality} ({n} seq.)"] = (x, y, law(x) if law else None)
    if curves:
        result.figures["perplexity_vs_position.png"] = nll_curves(curves)
    else:
        result.skipped = "; ".join(result.notes) or "no held-out sequences"
    return result
