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

from diffuspec.params import GenerationParams

from ._common import LangChainFields, StepEvents, final_info, step_info, usage


class DiffuSpecLLM(LangChainFields, BaseLLM):
    """LangChain LLM on the diffuspec engine. Streams with ``on_llm_new_token`` per step, fires a
    ``diffuspec_step`` custom event per step, and reports stats and token usage in ``llm_output``."""

    @property
    def _llm_type(self) -> str:
        return "diffuspec"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self.identity()

    def _chunk(self, event: Any, prompt_tokens: int) -> GenerationChunk:
        info = step_info(event.accepted, event.draft_length)
        if event.finish_reason is not None:
            info.update(final_info(event.stats, event.finish_reason, self.resolved_model_name))
            info["usage"] = usage(prompt_tokens, event.stats)
        return GenerationChunk(text=event.text, generation_info=info)

    def _start(self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]) -> tuple[list[int], GenerationParams]:
        params = self.generation_params(stop, **kwargs)  # checked before the engine loads
        return self.get_engine().tokenizer(prompt)["input_ids"], params

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        prompt_ids, params = self._start(prompt, stop, kwargs)
        events = StepEvents.of_run(run_manager, CallbackManager) if run_manager else None
        for event in self.get_engine().stream(prompt_ids, params=params):
            chunk = self._chunk(event, len(prompt_ids))
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                events.fire(event)
            yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        prompt_ids, params = self._start(prompt, stop, kwargs)
        events = StepEvents.of_run(run_manager, AsyncCallbackManager) if run_manager else None
        async for event in self.get_engine().astream(prompt_ids, params=params):
            chunk = self._chunk(event, len(prompt_ids))
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                await events.afire(event)
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
