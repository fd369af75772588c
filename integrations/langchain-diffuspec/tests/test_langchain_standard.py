"""langchain-tests' standard suites for ChatDiffuSpec: on the tiny preset (fast), and on the default real model
(slow: tool calling and structured output included)."""

import pytest
from langchain_diffuspec import ChatDiffuSpec
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests


class TestChatDiffuSpecUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self):
        return ChatDiffuSpec

    @property
    def has_tool_calling(self):
        return True  # bind_tools and tool-call parsing exist; the demo model itself does not call tools yet

    @property
    def has_structured_output(self):
        return True


class TestChatDiffuSpecIntegration(ChatModelIntegrationTests):
    """The checks that make sense for the tiny code-completion preset (no tool use, images, audio, PDFs)."""

    @property
    def chat_model_class(self):
        return ChatDiffuSpec

    @property
    def chat_model_params(self):
        return {"target": "tiny", "max_tokens": 32}

    @property
    def has_tool_calling(self):
        return False

    @property
    def has_structured_output(self):
        return False

    @property
    def returns_usage_metadata(self):
        return True

    @property
    def supports_model_override(self):
        return False  # one local engine per wrapper: build another ChatDiffuSpec for another model


@pytest.mark.slow
class TestChatDiffuSpecDefaultModel(ChatModelIntegrationTests):
    """The standard checks on ``ChatDiffuSpec()`` with no arguments: the default real model, tuned to call tools
    and answer in JSON (slow: it loads Gemma 3 270M; run with ``-m slow``)."""

    @property
    def chat_model_class(self):
        return ChatDiffuSpec

    @property
    def chat_model_params(self):
        return {}

    @property
    def has_tool_calling(self):
        return True

    @property
    def has_tool_choice(self):
        return True

    @property
    def has_structured_output(self):
        return True

    @property
    def supports_json_mode(self):
        return True

    @property
    def returns_usage_metadata(self):
        return True

    @property
    def supports_model_override(self):
        return False
