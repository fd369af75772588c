"""Draft-length policies as pure functions on hand-built inputs: the paper's ADL rule and the cost model
(expected tokens per step, the best k per second, censored argmax matches, acceptance and cost estimates)."""

import math

import pytest

from diffuspec.length import (
    AcceptanceEstimate,
    ADLState,
    CostAwarePolicy,
    CostCurve,
    MachineCosts,
    RecentAcceptance,
    StepFeedback,
    adl_update,
    argmax_match,
    best_draft_length,
    expected_tokens,
    generated_length,
)

EOS = 0

# ----- ADL ------------------------------------------------------------------------------------------------


def test_generated_length_counts_tokens_before_first_eos():
    assert generated_length([5, 6, EOS, 7], k=4, eos_token_ids={EOS}) == 2
    assert generated_length([5, 6, 7], k=3, eos_token_ids={EOS}) == 3


def test_adl_update_follows_the_paper():
    params = dict(k_min=20, k_max=30, delta=10, rho=0.5)
    state = ADLState(k=30)  # k_1 = k_max, EMAs start at 0
    state = adl_update(state, generated=30, accepted=6, **params)
    assert (state.generated_ema, state.accepted_ema) == (15.0, 3.0)
    assert state.k == 20  # G = 15 < k_min, A < G: clipped up to k_min
    state = adl_update(state, generated=30, accepted=30, **params)
    assert (state.generated_ema, state.accepted_ema) == (22.5, 16.5)
    assert state.k == 22  # A < G: k = round(G)
    state = adl_update(ADLState(k=30, generated_ema=10, accepted_ema=10), 10, 12, **params)
    assert state.k == 20  # A >= G: G + delta = 20
    state = adl_update(ADLState(k=30, generated_ema=25, accepted_ema=25), 25, 25, **params)
    assert state.k == 30  # G + delta = 35 clipped to k_max


def test_adl_ema_weights_the_new_observation_by_rho():
    # rho = 0.5 cannot tell rho from 1 - rho; 0.25 can: G = 0.75 * 8 + 0.25 * 16 = 10 (swapped: 14).
    params = dict(k_min=1, k_max=32, delta=8, rho=0.25)
    state = adl_update(ADLState(k=16, generated_ema=8, accepted_ema=4), generated=16, accepted=12, **params)
    assert (state.generated_ema, state.accepted_ema) == (10.0, 6.0)
    assert state.k == 10  # A < G
    state = adl_update(state, generated=10, accepted=30, **params)
    assert (state.generated_ema, state.accepted_ema) == (10.0, 12.0)
    assert state.k == 18  # A >= G: G + delta


def test_adl_rounds_the_length_to_the_nearest_token():
    # Fractions of .75 and .25, which rounding and truncation tell apart (rho = 0.5 and integer counts give .0 or
    # .5, where Python's round and int agree).
    params = dict(k_min=1, k_max=32, delta=2.5, rho=0.25)
    start = ADLState(k=5, generated_ema=2.0, accepted_ema=0.0)
    state = adl_update(start, generated=5, accepted=0, **params)
    assert (state.generated_ema, state.k) == (2.75, 3)  # A < G: round(2.75)
    assert adl_update(start, generated=3, accepted=0, **params).k == 2  # round(2.25)
    state = adl_update(ADLState(k=5, generated_ema=2.0, accepted_ema=4.0), generated=5, accepted=4, **params)
    assert state.k == 5  # A >= G: round(2.75 + 2.5)


# ----- the cost model -------------------------------------------------------------------------------------


def brute_force_expected_tokens(alphas, k):
    """1 + sum_{j=1..k} prod_{i<j} alpha_i, written out term by term."""
    return 1 + sum(math.prod(alphas[:j]) for j in range(1, min(k, len(alphas)) + 1))


def test_expected_tokens():
    assert expected_tokens([0.5, 0.5, 0.5], 0) == 1.0  # no draft: the target's own token
    assert expected_tokens([0.5, 0.5, 0.5], 3) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert expected_tokens([1.0] * 8, 5) == 6.0  # everything accepted: k + 1
    assert expected_tokens([0.0, 0.9, 0.9], 3) == 1.0  # the first token never accepted: nothing after counts
    alphas = [0.9, 0.8, 0.3, 0.6]
    for k in range(6):
        assert expected_tokens(alphas, k) == pytest.approx(brute_force_expected_tokens(alphas, k))


CURVES = {
    # alphas, seconds per step as a function of k (fixed overhead + per-token cost, CPU-like bend)
    "cheap drafts, good drafter": ([0.95, 0.9, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], lambda k: 10 + 1.0 * k),
    "costly drafts": ([0.95, 0.9, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], lambda k: 10 + 6.0 * k),
    "first token hard": ([0.3, 0.95, 0.95, 0.95, 0.9, 0.9, 0.5, 0.2, 0.1, 0.1], lambda k: 5 + 2 * math.sqrt(k)),
    "bent verification": ([0.8] * 10, lambda k: 4 + (2 * k if k <= 3 else 6 + 0.2 * (k - 3))),
}


@pytest.mark.parametrize("name", list(CURVES))
def test_best_draft_length_is_the_best_per_second(name):
    alphas, seconds = CURVES[name]
    for k_min, k_max in [(1, 10), (2, 6), (4, 4)]:
        k, tokens = best_draft_length(alphas, [seconds(j) for j in range(k_max + 1)], k_min, k_max)
        rates = {j: brute_force_expected_tokens(alphas, j) / seconds(j) for j in range(k_min, k_max + 1)}
        assert k_min <= k <= k_max
        assert rates[k] == pytest.approx(max(rates.values()))
        assert tokens == pytest.approx(brute_force_expected_tokens(alphas, k))


def test_best_draft_length_finds_an_inner_optimum():
    def best(name):
        alphas, seconds = CURVES[name]
        return best_draft_length(alphas, [seconds(j) for j in range(11)], 1, 10)[0]

    assert 1 < best("cheap drafts, good drafter") < 10  # neither bound: the search really compares lengths
    assert best("costly drafts") < best("cheap drafts, good drafter")  # dearer drafts: shorter ones


def test_argmax_match_reads_what_greedy_verification_would_have_accepted():
    # Verified path [1, 2, 9]: two accepted, the target said 3 at position 2; known target tokens 1, 2, 3.
    assert argmax_match([1, 2, 3, 4], [1, 2, 9], accepted=2, next_token=3) == 3  # censored: at least 3
    assert argmax_match([1, 5, 3, 4], [1, 2, 9], accepted=2, next_token=3) == 1
    assert argmax_match([7, 2, 3], [1, 2, 9], accepted=2, next_token=3) == 0
    assert argmax_match([1, 2, 9], [1, 2, 9], accepted=2, next_token=3) == 2  # the rejected token, twice
    assert argmax_match([1], [1, 2, 9], accepted=2, next_token=3) == 1  # a shorter argmax path
    assert argmax_match([4, 4], [1, 2], accepted=0, next_token=4) == 1  # nothing accepted: only position 0 known


def test_acceptance_estimate_counts_tried_positions_only():
    estimate = AcceptanceEstimate(4, prior=0.5, prior_weight=2.0, decay=1.0)
    assert estimate.alphas() == [0.5] * 4
    estimate.observe(accepted=2, tried=3)  # positions 0, 1 accepted, 2 rejected, 3 never tried
    pooled = (2 + 1) / (3 + 2)  # all positions together, shrunk to the prior: position 0's anchor
    a0 = (1 + 2 * pooled) / 3
    a1 = (1 + 2 * a0) / 3  # each later position shrinks to the one before it
    a2 = 2 * a1 / 3
    assert estimate.alphas() == pytest.approx([a0, a1, a2, a2])  # never tried: as the deepest tried one
    estimate.observe(accepted=0, tried=1)
    pooled = (2 + 1) / (4 + 2)
    a0 = (1 + 2 * pooled) / 4
    a1 = (1 + 2 * a0) / 3
    a2 = 2 * a1 / 3
    assert estimate.alphas() == pytest.approx([a0, a1, a2, a2])


def test_untried_positions_expect_the_deepest_tried_rate_not_the_pooled_one():
    """Deep positions are accepted more often once reached (a drafter in step with its target): a policy that
    has only drafted 2 tokens must not think a third would do as badly as the shallow positions' average."""
    estimate = AcceptanceEstimate(6, prior=0.5, prior_weight=2.0, decay=1.0)
    for _ in range(20):
        estimate.observe(accepted=0, tried=1)  # position 0 often fails...
        estimate.observe(accepted=2, tried=2)  # ...but once it passes, position 1 always does
    alphas = estimate.alphas()
    pooled = (40 + 2 * 0.5) / (60 + 2)
    assert alphas[1] > 0.9 and alphas[2] == pytest.approx(alphas[1]) and alphas[5] == pytest.approx(alphas[1])
    assert alphas[2] > pooled + 0.2


def test_acceptance_estimate_forgets_old_steps():
    estimate = AcceptanceEstimate(2, prior=0.5, prior_weight=2.0, decay=0.5)
    estimate.observe(accepted=0, tried=2)
    estimate.observe(accepted=2, tried=2)
    # decayed counts: tried 0.5 + 1 = 1.5, accepted 0 * 0.5 + 1 = 1 at both positions
    pooled = (2 + 1) / (3 + 2)
    a0 = (1 + 2 * pooled) / (1.5 + 2)
    assert estimate.alphas() == pytest.approx([a0, (1 + 2 * a0) / (1.5 + 2)])


def test_cost_curve_interpolates_and_extrapolates():
    curve = CostCurve(smoothing=0.5)
    assert curve(7) == 0.0  # nothing measured yet
    curve.observe(2, 4.0)
    assert curve(1) == curve(9) == 4.0  # one point: flat
    curve.observe(6, 12.0)
    assert curve(4) == pytest.approx(8.0)  # between points: linear
    assert curve(10) == pytest.approx(20.0)  # beyond: the last segment's slope
    assert curve(0) == pytest.approx(0.0)  # before: the first segment's slope, never below 0
    curve.observe(6, 16.0)  # an EMA per size
    assert curve(6) == pytest.approx(14.0)
    assert curve(4) == pytest.approx(9.0)
    curve.observe(3, 3.0)  # cheaper than size 2: noise; the two are pooled so the curve never falls
    assert [curve(s) for s in (2, 3, 4, 6, 8)] == pytest.approx([3.5, 3.5, 7.0, 14.0, 21.0])
    curve.observe(4, 9.0)  # three rising knots: each size reads the segment around it
    assert [curve(s) for s in (3, 4, 5, 6)] == pytest.approx([3.5, 9.0, 11.5, 14.0])
    assert curve.table(8) == pytest.approx([curve(s) for s in range(9)])


# ----- the cost-aware policy on hand-built machine costs ---------------------------------------------------------


def trained_cost_policy(verify: dict[int, float], *, k_min: int, k_max: int, search: bool = False,
                        search_seconds: float = 0.0) -> CostAwarePolicy:
    """A cost policy on hand-built costs (verification seconds by tokens verified; drafting free; path search
    ``search_seconds`` at any length) whose drafts have all been accepted, 30 times."""
    costs = MachineCosts.empty()
    for size, seconds in verify.items():
        costs.verify.observe(size, seconds)
    policy = CostAwarePolicy(costs, "test", k_min=k_min, k_max=k_max, search=search, adaptive_search=False)
    assert policy.choose(room=100).k == k_max  # the first step explores
    for _ in range(30):
        policy.observe(StepFeedback(drafted=k_max, accepted=k_max, generated=k_max, search_seconds=search_seconds))
    return policy


def best_k_by_definition(policy: CostAwarePolicy, k_min: int, k_max: int, search: bool) -> int:
    """The k with the most E(k) / T(k), T(k) the step's seconds: verification of k + 1 tokens (the last committed
    token and the draft), plus the search when it runs."""
    alphas = (policy.searched if search else policy.argmax).alphas()
    costs = policy.costs

    def seconds(k):
        return costs.verify(k + 1) + (policy.search_cost(k) if search else 0.0)

    return max(range(k_min, k_max + 1), key=lambda k: expected_tokens(alphas, k) / seconds(k))


# verification flat up to 4 tokens, then twice as dear: a draft of 3 fills the cheap pass
FLAT_TO_4 = {1: 1.0, 4: 1.0, 5: 2.0, 9: 2.2}


@pytest.mark.parametrize("search", [False, True])
def test_the_cost_policy_verifies_k_plus_one_tokens(search):
    """A draft of k tokens is verified with the token before it: k = 3 fills the flat part of the curve, and a
    policy reading the curve one size off (k tokens) would take 4."""
    policy = trained_cost_policy(FLAT_TO_4, k_min=2, k_max=7, search=search, search_seconds=0.1)
    choice = policy.choose(room=100)
    assert choice.k == best_k_by_definition(policy, 2, 7, search) == 3
    assert choice.search is search
    assert choice.predicted_tokens == pytest.approx(expected_tokens(policy._alphas(search), 3))


def test_the_cost_policy_keeps_to_its_bounds_and_the_room_left():
    policy = trained_cost_policy(FLAT_TO_4, k_min=5, k_max=7)
    assert policy.choose(room=100).k == best_k_by_definition(policy, 5, 7, False) == 7  # 3 is below k_min
    assert policy.choose(room=2).k == 2  # near max_new_tokens: never more than the room


def test_the_cost_policy_adds_tree_nodes_while_verification_stays_flat():
    """A path of 3 verifies 4 tokens; 4 branch nodes fill the flat part (8 verified), the 5th triples the cost."""
    policy = trained_cost_policy({1: 1.0, 8: 1.0, 9: 3.0, 16: 3.5}, k_min=1, k_max=3)
    values = [0.3] * 8
    path = expected_tokens(policy.argmax.alphas(), 3)
    rates = [(path + sum(values[:m])) / policy.costs.verify(3 + 1 + m) for m in range(len(values) + 1)]
    nodes, predicted = policy.tree_branches(3, values)
    assert nodes == rates.index(max(rates)) == 4
    assert predicted == pytest.approx(path + 4 * 0.3)


def test_the_cost_policy_takes_plain_steps_where_no_draft_pays_and_probes_now_and_then():
    """Drafting costs 3 s whatever its length and nothing is ever accepted: a plain step (1 token for a 1 s
    verification) earns more, so the policy drafts only on its probe steps; once drafts are accepted it drafts."""
    costs = MachineCosts.empty()
    for size, seconds in {1: 1.0, 9: 1.2}.items():
        costs.verify.observe(size, seconds)
    policy = CostAwarePolicy(costs, "test", k_min=1, k_max=8, search=False, adaptive_search=False, probe_every=4)
    policy.draft_cost.observe(1, 3.0)
    policy.draft_cost.observe(8, 3.0)
    assert policy.choose(room=100).k == 8  # the first step explores
    for _ in range(30):
        policy.observe(StepFeedback(drafted=8, accepted=0, generated=8))
    ks = [policy.choose(room=100).k for _ in range(8)]
    assert ks == [0, 0, 1, 0, 0, 0, 1, 0]  # steps 2..9: a draft on the 4th and 8th (probes), else plain steps
    assert policy.plain_step_rate() == pytest.approx(1.0)
    for _ in range(30):
        policy.observe(StepFeedback(drafted=8, accepted=8, generated=8))
    assert policy.choose(room=100).k == 8  # every draft accepted: 9 tokens for 4.2 s beats 1 for 1 s


def test_a_new_request_starts_from_the_engines_recent_acceptance_instead_of_exploring():
    """The same costs as above: a drafter nothing of which is accepted. The first request explores with a full
    draft and learns; the next one, given the same ``RecentAcceptance``, takes a plain step at once, and one
    with a memory of its own (another engine) explores again."""
    costs = MachineCosts.empty()
    for size, seconds in {1: 1.0, 9: 1.2}.items():
        costs.verify.observe(size, seconds)
    recent = RecentAcceptance(8)

    def policy(memory: RecentAcceptance) -> CostAwarePolicy:
        made = CostAwarePolicy(costs, "test", k_min=1, k_max=8, search=False, adaptive_search=False, recent=memory)
        made.draft_cost.observe(1, 3.0)
        made.draft_cost.observe(8, 3.0)
        return made

    first = policy(recent)
    assert first.choose(room=100).k == 8
    for _ in range(10):
        first.observe(StepFeedback(drafted=8, accepted=0, generated=8))
    assert recent.argmax.known and recent.argmax.alphas()[0] < 0.1
    assert policy(recent).choose(room=100).k == 0
    assert policy(RecentAcceptance(8)).choose(room=100).k == 8
    # a request's own steps still decide: drafts accepted whole bring drafting back within the request
    later = policy(recent)
    for _ in range(30):
        later.observe(StepFeedback(drafted=8, accepted=8, generated=8))
    assert later.choose(room=100).k == 8
