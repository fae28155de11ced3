"""The MLflow pyfunc for a longmix checkpoint, logged as code ("models from code"): MLflow copies
this file into the model and runs it on load, so no Python object is pickled. The weights come
from the model's `checkpoint` artifact through `load_checkpoint` (digests verified, safetensors).

predict(["def f(", ...]) -> greedy continuations, one string per prompt. A DataFrame with a
`prompt` column (or a single column), a Series, a list or one string are accepted.
params: max_new_tokens (default from model_config, else 32)."""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

DEFAULT_MAX_NEW_TOKENS = 32


def _prompts(model_input) -> list[str]:
    """Whatever pyfunc callers send (DataFrame, Series, list, str, numpy) -> a list of prompts."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return [str(p) for p in model_input[column]]
    if isinstance(model_input, dict):  # {"prompt": [...]} from a JSON request
        value = model_input.get("prompt", next(iter(model_input.values()), []))
        return [value] if isinstance(value, str) else [str(p) for p in value]
    return [str(p) for p in model_input]


class LongmixGenerator(PythonModel):
    def load_context(self, context) -> None:
        from model.checkpoint import load_checkpoint

        self.model, self.tokenizer = load_checkpoint(context.artifacts["checkpoint"])
        self.model.eval()
        self.max_new_tokens = int((context.model_config or {}).get("max_new_tokens",
                                                                   DEFAULT_MAX_NEW_TOKENS))

    # The DataFrame hint is what the signature's schema enforcement hands over; it is also a hint
    # MLflow infers no schema from, so the explicit signature (with its params) stays in charge.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        from model.generate import SamplingParams, generate

        new = int((params or {}).get("max_new_tokens", self.max_new_tokens))
        window = self.model.cfg.max_seq_len - new
        if window < 1:
            raise ValueError(f"max_new_tokens={new} leaves no room for a prompt in a context of "
                             f"{self.model.cfg.max_seq_len}")
        outputs = []
        for prompt in _prompts(model_input):
            ids = self.tokenizer.encode(prompt, bos=True)[-window:]  # keep the prompt's end
            outputs.append(generate(self.model, self.tokenizer, ids,
                                    SamplingParams(max_new_tokens=new)).text)
        return outputs


mlflow.models.set_model(LongmixGenerator())
