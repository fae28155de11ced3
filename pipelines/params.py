"""The flows' parameters, typed and validated before any work starts, and the named profiles:
`demo` (the quickstart, `make run`), `capable` (the model trained to retrieve, under an hour)
and `tiny` (the tests' end-to-end run).

A profile trains its stages in order (pretrain → long_context → sft [→ preference]), each on its
own dataset (`StageParams.data`; none: the profile's general `data`) and from the previous
stage's weights."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.gate.policy import PolicyError, load_policy
from pipelines.smoke import SmokeConfig
from workers.data.spec import SpecError, load_spec
from workers.evals.config import SUITES, get_suite
from workers.train.config import Stage, StageOptions


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Params):
    spec: str = "demo"  # a built-in corpus spec's name, or a YAML file
    out: str | None = None  # a folder or s3:// prefix; None: <storage root>/datasets/<name>


class StageParams(StageOptions):
    """A stage of a profile: how it trains (StageOptions, as `longmix train` takes them) and on
    which data."""

    stage: Stage
    data: DataParams | None = None  # None: the profile's general dataset (PipelineParams.data)


class TrainParams(Params):
    stages: tuple[StageParams, ...] = Field(min_length=1)
    preset: str | None = None  # None: the dataset's preset
    workers: int = Field(2, ge=1)
    registered_model: str = Field("longmix", pattern=r"^[A-Za-z0-9_.-]+$")

    @field_validator("stages")
    @classmethod
    def _stage_order(cls, stages: tuple[StageParams, ...]) -> tuple[StageParams, ...]:
        if stages[0].stage != "pretrain":
            raise ValueError("the first stage must be pretrain: later stages start from its weights")
        names = [s.stage for s in stages]
        if len(set(names)) < len(names):
            raise ValueError(f"each stage once: {' → '.join(names)} (the lineage and "
                             "eval.dataset_stage name stages)")
        if "preference" in names and names[-2:] != ["sft", "preference"]:
            raise ValueError(f"{' → '.join(names)}: preference tunes the instruction-tuned model; "
                             "it comes last, right after sft")
        return stages


class EvalParams(Params):
    suite: str = "demo"
    evals: tuple[str, ...] | None = None  # a subset of the suite's evals; None: all of them
    safety_data: Path | None = None  # public safety sets (layout: docs/evals.md, "Safety data")
    # whose dataset the evals read (its test split, its canaries); None: the stage packed longest,
    # so that perplexity-vs-position reaches the extended context
    dataset_stage: Stage | None = None

    @model_validator(mode="after")
    def _known_suite(self) -> "EvalParams":
        if self.suite not in SUITES:
            raise ValueError(f"unknown eval suite {self.suite!r}; choose from {', '.join(SUITES)}")
        self.suite_config()  # refuses unknown evals here, not after training
        return self

    def suite_config(self):
        overrides = {"evals": self.evals} if self.evals else {}
        if self.safety_data:
            overrides["safety_data"] = self.safety_data
        return get_suite(self.suite, **overrides)


class PromoteParams(Params):
    policy: str = "demo"  # a built-in gate policy, or a YAML file
    # the demo and tiny profiles' second account, which approves at once (its own MLflow
    # login on the embedded server); None: wait for a reviewer
    reviewer: Literal["demo-reviewer"] | None = None
    approval_timeout_s: float | None = Field(None, gt=0)  # None: the settings' timeout
    smoke: SmokeConfig = SmokeConfig()  # checks through the live API before traffic moves

    @field_validator("policy")
    @classmethod
    def _valid_policy(cls, policy: str) -> str:
        try:
            load_policy(policy)
        except PolicyError as e:
            raise ValueError(str(e)) from None
        return policy


class PipelineParams(Params):
    """Everything `train_eval_deploy` needs; who triggered it is checked against the approver."""

    profile: str
    data: DataParams
    train: TrainParams
    eval: EvalParams
    promote: PromoteParams
    # the run that the triggering user's own MLflow account made (`longmix run` makes it): who
    # triggered is read from it, never given; None: the flow's own identity
    trigger_run: str | None = None
    deploy: bool = True  # False: stop after the approval

    @model_validator(mode="after")
    def _stages_fit(self) -> "PipelineParams":
        """The stages' lengths, read from their corpus specs, refused before any stage runs (the
        rules plan_stage applies to the built datasets, which a later stage reaches only after
        the earlier ones trained)."""
        context = 0  # the model's context after the stages so far
        for i, stage in enumerate(self.train.stages):
            data = stage.data or self.data
            field = f"train.stages[{i}].data ({stage.stage}, spec {data.spec!r})"
            try:
                length = load_spec(data.spec).packing.seq_len
            except SpecError as e:
                raise ValueError(f"{field}: {e}") from None
            if stage.seq_len not in (None, length):
                raise ValueError(f"train.stages[{i}].seq_len={stage.seq_len}: its dataset packs "
                                 f"rows of {length} tokens")
            if stage.stage == "long_context" and length <= context:
                raise ValueError(f"{field}: packs rows of {length} tokens, not longer than the "
                                 f"{context} the model is trained at before it; give the stage a "
                                 "dataset packed longer (packing.seq_len)")
            if stage.stage != "long_context" and context and length > context:
                raise ValueError(f"{field}: packs rows of {length} tokens, beyond the model's "
                                 f"context of {context}: extend it with a long_context stage first")
            context = max(context, length)
        names = [s.stage for s in self.train.stages]
        if self.promote.reviewer and self.profile not in DEMO_REVIEWED:
            raise ValueError(f"promote.reviewer={self.promote.reviewer}: only the "
                             f"{' and '.join(DEMO_REVIEWED)} profiles approve by their demo "
                             "reviewer; a run may not name who approves it")
        if self.eval.dataset_stage and self.eval.dataset_stage not in names:
            raise ValueError(f"eval.dataset_stage={self.eval.dataset_stage}: not one of the "
                             f"trained stages ({', '.join(names)})")
        return self


DEMO_REVIEWED = ("demo", "tiny")  # the profiles whose runs a demo reviewer approves
PROFILES: dict[str, PipelineParams] = {
    # within 10 minutes on 2 CPUs: the `small` preset through all three stages (pretrain at 512
    # tokens, long_context at 2048 with YaRN x4, sft on chat and refusals), the demo suite's text
    # and safety evals; the approval comes from a second, named demo reviewer
    "demo": PipelineParams(
        profile="demo",
        data=DataParams(spec="demo"),
        train=TrainParams(stages=(
            StageParams(stage="pretrain", steps=120, batch_size=4, lr=2e-3, checkpoint_every=60,
                        eval_every=30),
            StageParams(stage="long_context", data=DataParams(spec="demo-long"), steps=20,
                        batch_size=1, checkpoint_every=20, eval_every=10),
            # 100 steps at 1e-3: with whole chat examples in a row (best-fit packing), 60 steps
            # at 5e-4 left the model babbling "I can help with a ..." and refusing 0.04 of the
            # built-in harmful prompts (2026-12-07)
            StageParams(stage="sft", data=DataParams(spec="demo-sft"), steps=100, batch_size=4,
                        lr=1e-3, checkpoint_every=100, eval_every=50))),
        eval=EvalParams(suite="demo", evals=("perplexity", "niah_text", "multi_needle", "refusal",
                                             "over_refusal", "toxicity", "injection", "pii")),
        promote=PromoteParams(policy="demo", reviewer="demo-reviewer")),
    # the second thing to try: the `compact` preset trained to retrieve, in under an hour on 2
    # CPUs (pretrain at L=256 on the retrieval curriculum and copy documents, 4,500 steps of 16
    # rows: the lookups form after 1,500 to 3,500; long_context at 4L=1024 with YaRN x4; sft on
    # chat and refusals; preference on refusal, lookalike and retrieval pairs), judged by the
    # default gate on the `capable` suite (to 4L). 5,000 steps
    # and an sft of 400 steps with a replay of pretraining measured worse (docs/benchmarks.md)
    "capable": PipelineParams(
        profile="capable",
        data=DataParams(spec="capable"),
        train=TrainParams(stages=(
            StageParams(stage="pretrain", steps=4500, batch_size=8, lr=2e-3, warmup_steps=50,
                        checkpoint_every=500, eval_every=250),
            StageParams(stage="long_context", data=DataParams(spec="capable-long"), steps=300,
                        batch_size=2, checkpoint_every=100, eval_every=100),
            # at 5e-4 sft erased greedy retrieval (NIAH 0.0 at L, from 0.5 after long_context);
            # at 1e-4 it kept it (0.5) and raised held-out refusal (2026-12-07)
            StageParams(stage="sft", data=DataParams(spec="capable-sft"), steps=200, batch_size=4,
                        lr=1e-4, checkpoint_every=100, eval_every=100),
            # DPO with RPO's NLL term at weight 1 kept held-out refusal (0.825 -> 0.83) and
            # lowered XSTest's over-refusal (0.90 -> 0.84); DPO alone at this rate traded one
            # for the other (0.41 and 0.29) (docs/training.md, 2026-12-08)
            StageParams(stage="preference", data=DataParams(spec="capable-preference"),
                        steps=150, batch_size=4, lr=2e-5, beta=0.1, chosen_nll_weight=1.0,
                        checkpoint_every=50, eval_every=50)),
            preset="compact"),
        eval=EvalParams(suite="capable"),
        promote=PromoteParams(policy="default")),
    # the tests' whole pipeline, all four stages, each a few seconds of training on one worker
    # (a second costs each stage ~4 s of start-up; the trainer's own tests train on two)
    "tiny": PipelineParams(
        profile="tiny",
        data=DataParams(spec="tiny"),
        train=TrainParams(workers=1, stages=(
            StageParams(stage="pretrain", steps=4, batch_size=2, checkpoint_every=4, eval_every=4),
            StageParams(stage="long_context", data=DataParams(spec="tiny-long"), steps=2,
                        batch_size=1, checkpoint_every=2, eval_every=2),
            StageParams(stage="sft", data=DataParams(spec="tiny-sft"), steps=2, batch_size=2,
                        checkpoint_every=2, eval_every=2),
            StageParams(stage="preference", data=DataParams(spec="tiny-preference"), steps=2,
                        batch_size=2, checkpoint_every=2, eval_every=2))),
        eval=EvalParams(suite="tiny", evals=("perplexity", "niah_text", "toxicity", "pii")),
        promote=PromoteParams(policy="tiny", reviewer="demo-reviewer")),
}


def get_profile(name: str, **overrides) -> PipelineParams:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}")
    return PipelineParams.model_validate({**PROFILES[name].model_dump(), **overrides})


def dataset_out(params: DataParams, spec_name: str, storage_root: str) -> str:
    return params.out or f"{storage_root}/datasets/{spec_name}"
