"""The cost curves an engine measured are kept across processes, keyed by what sets them."""

import copy
import json

import pytest
from tiny_models import make_target

from diffuspec import DiffuSpec, DiffuSpecConfig
from diffuspec.cost_memory import costs_dir, costs_key, load_costs, save_costs
from diffuspec.length import MachineCosts


@pytest.fixture
def memory(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSPEC_COSTS", str(tmp_path))
    return tmp_path


def test_curves_round_trip_and_keys_follow_the_parts(memory, tokenizer, drafter):
    target = make_target("llama", len(tokenizer))
    key = costs_key(target, drafter, target.device)
    assert load_costs(key) is None
    costs = MachineCosts.empty()
    for size, seconds in ((1, 0.2), (2, 0.31), (17, 0.45)):
        costs.verify.observe(size, seconds)
    draft, search = costs.drafting("diffuspec")
    draft.observe(8, 0.01)
    search.observe(8, 0.002)
    costs.other.observe(8, 0.001)
    save_costs(key, costs)
    again = load_costs(key)
    assert again.verify.points == costs.verify.points and again.other.points == costs.other.points
    assert again.draft["diffuspec"].points == {8: 0.01} and again.search["diffuspec"].points == {8: 0.002}
    assert again.verify(9) == costs.verify(9)
    other_target = make_target("llama", len(tokenizer), seed=5)  # same architecture: the same costs
    assert costs_key(other_target, drafter, target.device) == key
    deeper = copy.deepcopy(target)
    deeper.config.num_hidden_layers = 3
    assert costs_key(deeper, drafter, target.device) != key
    assert costs_key(target, None, target.device) != key
    assert costs_key(target, drafter, target.device, precision="int8") != key


@pytest.mark.parametrize("content", ["{not json", '{"verify": {"1": -3}, "draft": {}, "search": {}, "other": {}}',
                                     '{"verify": []}'])
def test_an_unreadable_file_is_no_memory_and_says_so(memory, content):
    (memory / "k.json").write_text(content)
    with pytest.warns(UserWarning, match="ignoring the unreadable cost memory"):
        assert load_costs("k") is None


def test_the_memory_lives_where_the_environment_says(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFUSPEC_COSTS", "off")
    assert costs_dir() is None
    save_costs("k", MachineCosts.empty())  # nothing written, nothing raised
    assert load_costs("k") is None
    monkeypatch.delenv("DIFFUSPEC_COSTS")
    monkeypatch.setenv("DIFFUSPEC_CACHE", str(tmp_path))
    assert costs_dir() == tmp_path / "costs"


def test_an_engine_starts_from_the_curves_saved_by_the_last_one(memory, tokenizer, drafter):
    target = make_target("llama", len(tokenizer))
    ids = tokenizer("the cat sat")["input_ids"]
    first = DiffuSpec(target, drafter, tokenizer, DiffuSpecConfig(k_max=6))
    expected = first.generate(ids, 20).token_ids  # calibrates: measures verification sizes 1..7
    saved = list(memory.glob("*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["verify"]
    second = DiffuSpec(target, drafter, tokenizer, DiffuSpecConfig(k_max=6))
    assert second._costs.verify.points == first._costs.verify.points  # no calibration before its first request
    assert second.generate(ids, 20).token_ids == expected
    saved[0].write_text("{broken")  # a damaged memory: generation goes on, measuring afresh
    with pytest.warns(UserWarning, match="unreadable cost memory"):
        third = DiffuSpec(target, drafter, tokenizer, DiffuSpecConfig(k_max=6))
    assert not third._costs.verify.points
    assert third.generate(ids, 20).token_ids == expected
    assert load_costs(first._costs_key) is not None  # and rewritten
