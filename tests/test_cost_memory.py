"""The cost curves an engine measured are kept across processes, keyed by what sets them."""

import copy

from tiny_models import make_target

from diffuspec.cost_memory import costs_key, load_costs, save_costs
from diffuspec.length import MachineCosts


def test_curves_round_trip_and_keys_follow_the_parts(tmp_path, monkeypatch, tokenizer, drafter):
    monkeypatch.setenv("DIFFUSPEC_CACHE", str(tmp_path))
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


def test_an_unreadable_file_is_no_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSPEC_CACHE", str(tmp_path))
    (tmp_path / "costs").mkdir()
    (tmp_path / "costs" / "k.json").write_text("{not json")
    assert load_costs("k") is None
