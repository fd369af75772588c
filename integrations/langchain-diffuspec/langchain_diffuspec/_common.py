"""What both LangChain classes share: the engine fields, lazy loading, and per-call generation arguments."""

from __future__ import annotations

from typing import Any

from diffuspec import DecodingStats, DiffuSpec
from diffuspec.loading import shared_engine
from pydantic import BaseModel, ConfigDict, Field

DEMO_MODEL_NAME = "diffuspec-demo"


class EngineFields(BaseModel):
    """Construct with an existing ``engine``, with model paths (``target``, ``drafter``, ``ar_drafter``), or with
    nothing for the embedded demo pair. Weights load on first use, once per distinct configuration."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True, protected_namespaces=())

    engine: DiffuSpec | None = Field(default=None, exclude=True)
    target: str | None = None
    drafter: str | None = None
    ar_drafter: str | None = None
    device: str | None = None
    engine_config: dict[str, Any] = Field(default_factory=dict)  # DiffuSpecConfig fields
    model_name: str | None = Field(default=None, alias="model")
    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    mode: str | None = None  # None: the engine's configured mode
    # Accepted for interface compatibility with hosted models; a local engine neither times out nor retries.
    timeout: float | None = None
    max_retries: int = 0

    def get_engine(self) -> DiffuSpec:
        if self.engine is None:
            self.engine = shared_engine(
                self.target, self.drafter, ar_drafter=self.ar_drafter, device=self.device, **self.engine_config
            )
        return self.engine

    @property
    def resolved_model_name(self) -> str:
        return self.model_name or self.target or DEMO_MODEL_NAME

    def generation_kwargs(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Engine arguments: constructor values, overridden per call; stop strings from both apply."""
        stops = [*(self.stop or []), *(stop or []), *(kwargs.get("stop") or [])]
        return {
            "max_new_tokens": kwargs.get("max_tokens", self.max_tokens),
            "temperature": kwargs.get("temperature", self.temperature),
            "top_k": kwargs.get("top_k", self.top_k),
            "top_p": kwargs.get("top_p", self.top_p),
            "seed": kwargs.get("seed", self.seed),
            "mode": kwargs.get("mode", self.mode),
            "stop": list(dict.fromkeys(stops)) or None,
        }


def step_info(accepted: int, draft_length: int) -> dict[str, list[int]]:
    """Per-step figures as one-element lists, which LangChain concatenates when it adds chunks."""
    return {"accepted_tokens": [accepted], "draft_lengths": [draft_length]}


def final_info(stats: DecodingStats, finish_reason: str, model_name: str) -> dict[str, Any]:
    """Aggregates, sent once on the last chunk (floats must not meet another float when chunks merge)."""
    return {
        "finish_reason": finish_reason,
        "model_name": model_name,
        "mean_accepted_tokens": stats.mean_accepted_tokens,
        "acceptance_rate": stats.acceptance_rate,
        "tokens_per_step": stats.tokens_per_step,
        "tokens_per_second": stats.tokens_per_second,
        "verification_steps": stats.steps,
    }


def usage(prompt_tokens: int, stats: DecodingStats) -> dict[str, int]:
    return {
        "input_tokens": prompt_tokens,
        "output_tokens": stats.new_tokens,
        "total_tokens": prompt_tokens + stats.new_tokens,
    }
