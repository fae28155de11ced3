"""EleutherAI lm-evaluation-harness, `local-completions` pointed at the live endpoint, on a small
multiple-choice task read from a local JSON file: its per-choice log-likelihoods equal
model.generate.score on the same checkpoint, bit for bit, and so does its accuracy."""

import json

import pytest
from transformers import PreTrainedTokenizerFast

from model.generate import score

QUESTIONS = [
    ("The function that returns the length of a list is", ["len", "size", "count"], 0),
    ("To leave a loop early, Python uses the statement", ["break", "exit", "stop"], 0),
    ("A Python dictionary maps keys to", ["values", "lists", "files"], 0),
    ("The keyword that defines a function is", ["def", "fun", "function"], 0),
    ("Text in Python is held in objects of type", ["str", "text", "chars"], 0),
    ("The value that means nothing in Python is", ["None", "null", "nil"], 0),
]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory, server):
    folder = tmp_path_factory.mktemp("lm-eval")
    data = folder / "python_facts.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                            for q, c, a in QUESTIONS))
    (folder / "python_facts.yaml").write_text(f"""
task: longmix_python_facts
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
""")
    PreTrainedTokenizerFast(tokenizer_file=str(server.checkpoint / "tokenizer.json"),
                            clean_up_tokenization_spaces=False).save_pretrained(folder / "tokenizer")
    return folder


def in_process_loglikelihood(server, context: str, continuation: str) -> float:
    """What the harness asks for, computed on the checkpoint in this process: the continuation's
    log-probability after the context, split into tokens as the harness splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = server.tokenizer.encode(context)
    continuation_ids = server.tokenizer.encode(context + continuation)[len(context_ids):]
    logprobs = score(server.transformer, context_ids + continuation_ids).tolist()
    return sum(logprobs[len(context_ids) - 1:])


def test_local_completions_scores_equal_in_process_scoring(server, task_dir, monkeypatch,
                                                           one_thread):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    for offline in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(offline, "1")
    monkeypatch.setenv("OPENAI_API_KEY", server.key)  # local-completions sends it as the bearer
    results = simple_evaluate(
        model="local-completions",
        model_args={"model": server.model, "base_url": f"{server.url}/v1/completions",
                    "tokenizer": str(task_dir / "tokenizer"), "tokenizer_backend": "huggingface",
                    "tokenized_requests": True, "max_length": 512, "num_concurrent": 2},
        tasks=["longmix_python_facts"], task_manager=TaskManager(include_path=str(task_dir),
                                                                  include_defaults=False),
        log_samples=True, bootstrap_iters=0)
    samples = results["samples"]["longmix_python_facts"]
    assert len(samples) == len(QUESTIONS)
    correct = 0
    for sample in samples:
        served = [resp[0][0] for resp in sample["resps"]]
        expected = [in_process_loglikelihood(server, *args) for args in
                    (tuple(a) for a in sample["arguments"])]
        assert served == expected
        correct += max(range(len(expected)), key=expected.__getitem__) == sample["target"]
    acc = results["results"]["longmix_python_facts"]["acc,none"]
    assert acc == pytest.approx(correct / len(QUESTIONS))
