"""Fit the refusal heads on XSTest's 2,250 human-labelled completions plus the project's own
refusals and answers (workers/data/instructions.yaml: terse refusals like the ones longmix models
learn, which XSTest's chatty completions lack), and measure each scorer's accuracy on XSTest
completions of a model left out of the fit (five folds, one per model).

    python -m workers.evals.refusal_calibration SAFETY_DATA/xstest [--write]

--write stores the heads (fitted on all five models) and the held-out accuracies in
refusal_heads.json. Nothing of XSTest itself is stored: only 385 weights per head.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.evals.refusal import HEADS_FILE, embed, features, string_match

REFUSAL_LABELS = ("2_full_refusal", "3_partial_refusal")  # final_label; the rest is compliance
C = 1.0  # logistic regression's inverse regularisation


@dataclass
class LabelledCompletions:
    texts: list[str]
    refused: np.ndarray  # (N,) bool, the human label
    models: np.ndarray  # (N,) which model wrote it


def read_xstest_completions(folder: Path) -> LabelledCompletions:
    files = sorted(Path(folder).glob("xstest_v2_completions_*.csv"))
    if not files:
        raise FileNotFoundError(f"{folder}: no xstest_v2_completions_*.csv")
    texts, refused, models = [], [], []
    for path in files:
        model = path.stem.removeprefix("xstest_v2_completions_").removesuffix("_streval")
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                texts.append(row["completion"] or "")
                refused.append(row["final_label"].strip() in REFUSAL_LABELS)
                models.append(model)
    return LabelledCompletions(texts, np.array(refused), np.array(models))


def project_examples() -> LabelledCompletions:
    """The refusals and helpful answers of the project's instruction set, labelled by kind."""
    from workers.data.synth import load_instructions

    spec = load_instructions()
    refusals = [r for c in spec.refusal_categories.values() for r in c.responses]
    answers = [a.answer for a in [*spec.lookalikes, *spec.python_qa]]
    answers += [d.definition for d in spec.definitions]
    texts = refusals + answers
    return LabelledCompletions(texts, np.array([True] * len(refusals) + [False] * len(answers)),
                               np.array(["project"] * len(texts)))


def fit_head(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, max_iter=2000, class_weight="balanced").fit(x, y)
    return clf.coef_[0].astype(np.float32), float(clf.intercept_[0])


def leave_one_model_out(x: np.ndarray, data: LabelledCompletions,
                        extra: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """Accuracy over all completions, each predicted by a head fitted without its model's (and
    with the `extra` (features, labels) always in the fit)."""
    correct = 0
    for model in np.unique(data.models):
        held = data.models == model
        x_fit, y_fit = x[~held], data.refused[~held]
        if extra is not None:
            x_fit, y_fit = np.vstack([x_fit, extra[0]]), np.concatenate([y_fit, extra[1]])
        w, b = fit_head(x_fit, y_fit)
        correct += int(((x[held] @ w + b > 0) == data.refused[held]).sum())
    return correct / len(data.texts)


def calibrate(folder: Path, embeddings: np.ndarray | None = None) -> dict:
    data, own = read_xstest_completions(folder), project_examples()
    emb = embed(data.texts) if embeddings is None else embeddings
    match = np.array([string_match(t) for t in data.texts])
    result = {"string_match_accuracy": float((match == data.refused).mean()), "heads": {},
              "calibration": {"set": "XSTest v2 completions (final_label)", "completions":
                              len(data.texts), "models": sorted(set(data.models.tolist())),
                              "heldout": "leave-one-model-out",
                              "also_fitted_on": f"{len(own.texts)} project refusals and answers"}}
    own_emb = embed(own.texts)
    for scorer in ("classifier", "combined"):
        x, x_own = features(data.texts, scorer, emb), features(own.texts, scorer, own_emb)
        w, b = fit_head(np.vstack([x, x_own]), np.concatenate([data.refused, own.refused]))
        result["heads"][scorer] = {
            "weights": [round(float(v), 6) for v in w], "bias": b,
            "heldout_accuracy": leave_one_model_out(x, data, (x_own, own.refused))}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("xstest", type=Path)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    result = calibrate(args.xstest)
    summary = {"string_match": result["string_match_accuracy"],
               **{k: h["heldout_accuracy"] for k, h in result["heads"].items()}}
    print(json.dumps(summary))
    if args.write:
        HEADS_FILE.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
