"""What both LangChain classes share: the fields (those of every diffuspec wrapper, and LangChain's own), token
counting, and the per-step figures and callback events."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import AsyncCallbackManager, CallbackManager
from langchain_core.runnables import RunnableConfig, ensure_config
from pydantic import SecretStr

from diffuspec.integration_fields import EngineFields

if TYPE_CHECKING:
    from diffuspec import DecodingStats, StepEvent

STEP_EVENT = "diffuspec_step"  # custom callback event fired once per verification step


class LangChainFields(EngineFields):
    """The wrappers' shared fields (``diffuspec.integration_fields``), and what LangChain asks of a model."""

    # Accepted for compatibility with hosted models (and langchain-tests); a local engine neither times out,
    # retries, authenticates nor needs telling to stream (it always streams internally).
    timeout: float | None = None
    max_retries: int | None = None
    api_key: SecretStr | None = None
    streaming: bool = False

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids from the engine's own tokenizer (LangChain's default would fetch GPT-2's from the hub)."""
        if getattr(self, "custom_get_token_ids", None) is not None:
            return self.custom_get_token_ids(text)
        return self.get_engine().tokenizer.encode(text, add_special_tokens=False)


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


class StepEvents:
    """Fires the ``diffuspec_step`` custom callback event of one run, once per verification step (visible in
    ``astream_events`` as ``on_custom_event``). A callback manager of its own, because
    ``dispatch_custom_event`` raises when a model is called directly (no parent run)."""

    def __init__(self, manager: CallbackManager | AsyncCallbackManager, run_id: uuid.UUID) -> None:
        self.manager, self.run_id = manager, run_id

    def __repr__(self) -> str:  # constant: it can sit in call kwargs that LangChain turns into cache keys
        return "StepEvents"

    @classmethod
    def of_run(cls, run_manager: Any, manager_class: type) -> StepEvents:
        """For a run LangChain has started (a run manager)."""
        manager = manager_class(
            handlers=run_manager.handlers, inheritable_handlers=run_manager.inheritable_handlers,
            parent_run_id=run_manager.parent_run_id, tags=run_manager.tags, metadata=run_manager.metadata,
        )
        return cls(manager, run_manager.run_id)

    @classmethod
    def of_config(cls, model: Any, config: RunnableConfig | None, manager_class: type) -> tuple[RunnableConfig, StepEvents]:
        """For a run LangChain is about to start from ``config``: its run id is fixed here, and the manager
        gets the handlers LangChain will configure for it."""
        config = ensure_config(config)
        config = {**config, "run_id": config.get("run_id") or uuid.uuid4()}
        manager = manager_class.configure(
            config.get("callbacks"), model.callbacks, model.verbose, config.get("tags"), model.tags,
            config.get("metadata"), model.metadata,
        )
        return config, cls(manager, config["run_id"])

    @staticmethod
    def payload(event: StepEvent) -> dict[str, Any]:
        return {
            "accepted_tokens": event.accepted,
            "draft_length": event.draft_length,
            "new_tokens": len(event.token_ids),
            "mean_accepted_tokens": event.stats.mean_accepted_tokens,
            "steps": event.stats.steps,
        }

    def fire(self, event: StepEvent) -> None:
        self.manager.on_custom_event(STEP_EVENT, self.payload(event), run_id=self.run_id)

    async def afire(self, event: StepEvent) -> None:
        await self.manager.on_custom_event(STEP_EVENT, self.payload(event), run_id=self.run_id)
