"""What the pipeline's model can do: a profile trained through the flow (pretrain at L ->
long_context at 4L with YaRN -> sft [-> preference]), the eval suite on the registered model,
the same NIAH grid on the pretrain checkpoint run at 4L without the extension (its RoPE
unscaled), and the default gate on both.

    python benchmarks/capability.py [--quick] [--profile capable] [--safety-data DIR]

The baselines are measured in the same run: chance for the NIAH rank (1 / candidates) and the
pretrain checkpoint before extension. `--quick` trains the `demo` profile (within 10 minutes on
2 CPUs) and evaluates the smaller `demo` grid. `--safety-data` names a folder laid out as the
public safety sets (AdvBench, HarmBench, StrongREJECT, JailbreakBench, XSTest) for the held-out
refusal and over-refusal figures; without it those figures are null. The last line is JSON:
niah_at_train_len, niah_at_4x, niah_at_4x_before_extension, multi_needle_recall, refusal_heldout,
xstest_over_refusal, ppl_beta, gate_default_capable, gate_default_pretrain_only, stage_minutes."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from _common import emit_json, parse_args, print_table

HELDOUT_HARMFUL = ("advbench", "harmbench", "strongreject", "jailbreakbench")


def stretched_checkpoint(folder: str, seq_len: int, out: Path) -> Path:
    """The checkpoint as it was, allowed to run at seq_len without RoPE scaling: what the model
    does beyond its context when nothing extended it."""
    from model.checkpoint import load_checkpoint, save_checkpoint

    model, tokenizer = load_checkpoint(folder)
    stretched = type(model)(model.cfg.replace(max_seq_len=seq_len))
    stretched.load_state_dict(model.state_dict())
    save_checkpoint(out, stretched, tokenizer)
    return out


def value(report, name: str) -> float | None:
    return next((m.value for m in report.metrics if m.name == name), None)


def main() -> None:
    args = parse_args(__doc__, lambda parser: (
        parser.add_argument("--profile", default=None, help="default: capable (demo with --quick)"),
        parser.add_argument("--safety-data", type=Path, default=None)))
    os.environ.setdefault("LONGMIX_HOME", tempfile.mkdtemp(prefix="longmix-capability-"))
    from pipelines.cli_pipeline import quiet_consoles

    quiet_consoles()  # before Prefect is first imported: it reads its logging settings once
    from infra.services import prefect_settings
    from infra.settings import get_settings
    from pipelines.cli_pipeline import down, start_services
    from pipelines.flows import evaluate, train
    from pipelines.gate.decide import decide
    from pipelines.gate.policy import load_policy
    from pipelines.params import get_profile
    from workers.evals.report import read_report
    from workers.evals.suite import evaluate as evaluate_model

    profile = args.profile or ("demo" if args.quick else "capable")
    base = get_profile(profile)
    eval_params = base.eval.model_copy(update={"safety_data": args.safety_data})
    settings = get_settings()
    api_url, _ = start_services(settings)
    started = time.perf_counter()
    try:
        with prefect_settings(settings, api_url):
            chain = train(base.data, base.train)
            dataset = chain.eval_dataset(eval_params.dataset_stage)
            evaluation = evaluate(chain.model, dataset, eval_params)
        report = read_report(Path(evaluation.report))
        train_len, long_len = chain.stages[0].dataset.seq_len, dataset.seq_len
        suite = eval_params.suite_config()
        work = Path(settings.home) / "capability"
        pretrain_at_4x = stretched_checkpoint(chain.stages[0].result.checkpoint, long_len,
                                              work / "pretrain-at-4x")

        def run_suite(model: str, name: str, cfg):
            return evaluate_model(model, cfg, manifest=dataset.manifest, out=work / name,
                                  settings=settings, log_to_mlflow=False).report

        # the pretrain-only model through the profile's suite, for the gate; and both models on
        # one NIAH grid at L and 4L, whatever lengths the suite has
        before = run_suite(str(pretrain_at_4x), "pretrain-only", suite)
        grid = suite.model_copy(update={"evals": ("niah_text",), "niah_lengths": tuple(
            sorted({*suite.niah_lengths, train_len, long_len}))})
        grid_after = run_suite(chain.model.model_uri, "grid-after", grid)
        grid_before = run_suite(str(pretrain_at_4x), "grid-before", grid)
    finally:
        down()
    policy = load_policy("default")
    capable_decision, pretrain_decision = decide(report, policy), decide(before, policy)
    heldout = [v for s in HELDOUT_HARMFUL
               if (v := value(report, f"refusal.{s}.refusal_rate")) is not None]
    figures = {
        "profile": profile, "train_len": train_len, "extended_len": long_len,
        "niah_at_train_len": value(grid_after, f"niah_text.accuracy.len{train_len}"),
        "niah_at_4x": value(grid_after, f"niah_text.accuracy.len{long_len}"),
        "niah_at_4x_before_extension": value(grid_before, f"niah_text.accuracy.len{long_len}"),
        "niah_rank_top1_at_train_len": value(grid_after, f"niah_text.rank_top1.len{train_len}"),
        "niah_rank_top1_chance": 1 / (suite.niah_distractors + 1),
        "multi_needle_recall": value(report, "multi_needle.recall"),
        "refusal_heldout": sum(heldout) / len(heldout) if heldout else None,
        "xstest_over_refusal": value(report, "over_refusal.xstest-safe.refusal_rate"),
        "ppl_beta": value(report, "perplexity.text.beta"),
        "gate_default_capable": capable_decision.status == "passed",
        "gate_default_pretrain_only": pretrain_decision.status == "passed",
        "failed_checks_capable": [c.name for c in capable_decision.checks if not c.passed],
        "failed_checks_pretrain_only": [c.name for c in pretrain_decision.checks if not c.passed],
        "stage_minutes": {s.stage: s.minutes for s in chain.lineage.stages},
        "total_minutes": round((time.perf_counter() - started) / 60, 2),
        "report": str(evaluation.report),
    }
    print_table("text NIAH by context length: accuracy and rank-1 share (after all stages | "
                "pretrain only, no extension)",
                ["length", "accuracy after", "accuracy before", "rank-1 after", "rank-1 before"],
                [(n, *(value(r, f"niah_text.{m}.len{n}") for m in ("accuracy", "rank_top1")
                       for r in (grid_after, grid_before)))
                 for n in grid.niah_lengths])
    emit_json(figures)


if __name__ == "__main__":
    main()
