"""langchain-tests' standard suites for ChatDiffuSpec on the embedded demo pair."""

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
    """The standard checks that make sense for a small local code model (no tool use, images, audio, PDFs)."""

    @property
    def chat_model_class(self):
        return ChatDiffuSpec

    @property
    def chat_model_params(self):
        return {"max_tokens": 32}

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
