"""What every test suite of the repository shares."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_cost_memory(tmp_path_factory):
    """Engines remember their measured costs in a folder of this session, never in the user's cache (the
    converted GGUF cache stays where it is: the slow tests load the real model from it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DIFFUSPEC_COSTS", str(tmp_path_factory.mktemp("costs")))
        yield
