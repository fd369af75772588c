"""``DiffuSpecLLM``: the diffuspec engine as a LangChain string LLM."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import ConfigDict

from ._common import EngineFields, final_info, step_info, usage

STEP_EVENT = "diffuspec_step"  # custom callback event fired once per verification step


def _step_payload(event) -> dict[str, Any]:
    return {
        "accepted_tokens": event.accepted,
        "draft_length": event.draft_length,
        "new_tokens": len(event.token_ids),
        "mean_accepted_tokens": event.stats.mean_accepted_tokens,
        "steps": event.stats.steps,
    }


def _custom_events(run_manager, manager_class):
    """A manager that can fire custom events for this run even when the LLM is called directly (no parent
    run), where ``dispatch_custom_event`` would raise."""
    return manager_class(
        handlers=run_manager.handlers, inheritable_handlers=run_manager.inheritable_handlers,
        parent_run_id=run_manager.parent_run_id, tags=run_manager.tags, metadata=run_manager.metadata,
    )


class DiffuSpecLLM(EngineFields, BaseLLM):
    """LangChain LLM on the diffuspec engine. Streams with ``on_llm_new_token`` per step, fires a
    ``diffuspec_step`` custom event per step, and reports stats and token usage in ``llm_output``."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True, protected_namespaces=())

    @property
    def _llm_type(self) -> str:
        return "diffuspec"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.resolved_model_name, "drafter": self.drafter, "mode": self.mode}

    def _chunk(self, event, prompt_tokens: int) -> GenerationChunk:
        info = step_info(event.accepted, event.draft_length)
        if event.finish_reason is not None:
            info.update(final_info(event.stats, event.finish_reason, self.resolved_model_name))
            info["usage"] = usage(prompt_tokens, event.stats)
        return GenerationChunk(text=event.text, generation_info=info)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        engine = self.get_engine()
        prompt_ids = engine.tokenizer(prompt)["input_ids"]
        events = _custom_events(run_manager, CallbackManager) if run_manager else None
        for event in engine.stream(prompt_ids, **self.generation_kwargs(stop, kwargs)):
            chunk = self._chunk(event, len(prompt_ids))
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                events.on_custom_event(STEP_EVENT, _step_payload(event), run_id=run_manager.run_id)
            yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        engine = self.get_engine()
        prompt_ids = engine.tokenizer(prompt)["input_ids"]
        events = _custom_events(run_manager, AsyncCallbackManager) if run_manager else None
        async for event in engine.astream(prompt_ids, **self.generation_kwargs(stop, kwargs)):
            chunk = self._chunk(event, len(prompt_ids))
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                await events.on_custom_event(STEP_EVENT, _step_payload(event), run_id=run_manager.run_id)
            yield chunk

    @staticmethod
    def _result(chunks_per_prompt: list[GenerationChunk]) -> LLMResult:
        generations = [[Generation(text=c.text, generation_info=c.generation_info)] for c in chunks_per_prompt]
        totals = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        for chunk in chunks_per_prompt:
            for key in totals:
                totals[key] += chunk.generation_info["usage"][key]
        stats = [{k: v for k, v in c.generation_info.items() if k != "usage"} for c in chunks_per_prompt]
        return LLMResult(generations=generations, llm_output={"token_usage": totals, "diffuspec": stats})

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        merged = []
        for prompt in prompts:
            chunks = list(self._stream(prompt, stop, run_manager, **kwargs))
            merged.append(sum(chunks[1:], chunks[0]))
        return self._result(merged)

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        merged = []
        for prompt in prompts:
            chunks = [c async for c in self._astream(prompt, stop, run_manager, **kwargs)]
            merged.append(sum(chunks[1:], chunks[0]))
        return self._result(merged)
