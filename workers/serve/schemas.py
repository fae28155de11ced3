"""The OpenAI API's request and response bodies, as far as longmix serves them.

Requests are strict (no coercion of "5" to 5) and refuse unknown fields, so a wrong type or a
misspelt parameter is a 400 naming it rather than a silently different request.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

MAX_LOGPROBS = 20
MAX_CHOICES = 16  # n
MAX_PROMPTS = 32  # prompts in one completions request
MAX_SEQUENCES = 64  # prompts x n: the sequences one request may start
MAX_STOP = 4
MAX_VIDEO_FRAMES = 64


def _integral(value):
    """JSON Schema counts 16.0 as an integer: accept it as 16 (and still refuse 16.5 and "16")."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _integer(**bounds):
    """An int in [bounds]; the bounds sit inside the validator, so they reach the JSON schema."""
    return Annotated[int, Field(**bounds), BeforeValidator(_integral)]


Count = _integer(ge=0)
TopN = _integer(ge=0, le=MAX_LOGPROBS)
Seed = _integer()  # any integer: reduced modulo 2**63 for torch


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class StreamOptions(Strict):
    include_usage: bool = False


class Sampling(Strict):
    """Parameters both endpoints share."""

    model: str
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: _integer(ge=1, le=MAX_CHOICES) = 1
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    seed: Seed | None = None  # choice i samples with seed + i
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @property
    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in stops if s)


TokenIds = Annotated[list[Count], Field(min_length=1)]


class CompletionRequest(Sampling):
    prompt: (str | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)] | TokenIds
             | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)])
    max_tokens: Count = 16
    logprobs: TopN | None = None
    echo: bool = False

    @model_validator(mode="after")
    def _sequences_capped(self) -> "CompletionRequest":
        prompts = 1 if isinstance(self.prompt, str) or isinstance(self.prompt[0], int) \
            else len(self.prompt)
        if prompts * self.n > MAX_SEQUENCES:
            raise ValueError(f"{prompts} prompts x n={self.n} asks for {prompts * self.n} "
                             f"sequences, over the limit of {MAX_SEQUENCES} per request")
        return self


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ImageURL(Strict):
    url: str  # data:image/png;base64,... or data:image/jpeg;base64,...
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(Strict):
    data: str  # base64 WAV
    format: Literal["wav"]


class AudioPart(Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


class VideoFrame(Strict):
    image_url: ImageURL
    timestamp: float = Field(ge=0.0)  # seconds from the start of the video


class VideoPart(Strict):
    """longmix's convention (OpenAI has no video part): the frames in order, with timestamps."""

    type: Literal["video"]
    video: Annotated[list[VideoFrame], Field(min_length=1, max_length=MAX_VIDEO_FRAMES)]


ContentPart = Annotated[TextPart | ImagePart | AudioPart | VideoPart, Field(discriminator="type")]


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None


class ChatRequest(Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    logprobs: bool = False
    top_logprobs: TopN | None = None


# responses

class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    """What lm-evaluation-harness's local-completions reads: with echo, the prompt's tokens come
    first and the first of them has no log-probability (null)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"]


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "longmix"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
