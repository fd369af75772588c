"""The output text: incremental detokenization and the one stop-string rule (read the output token by token;
the first token after which a stop string is complete ends it; cut just before the earliest occurrence),
directly and through every mode of the engine, on tiny models and on the embedded demo pair."""

import itertools

import pytest
from tiny_models import hf_greedy
from tokenizers import Tokenizer, decoders, models
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from diffuspec import DiffuSpec
from diffuspec.loading import embedded_paths
from diffuspec.stopping import find_stop, safe_length
from diffuspec.text import OutputText

DECODE = dict(skip_special_tokens=True, clean_up_tokenization_spaces=False)


def reference_cut(tokenizer, token_ids, stops):
    """The rule the slow way: decode every prefix of the output; the first that contains a stop string ends
    it, cut before that prefix's earliest stop. Returns (text, tokens kept)."""
    for n in range(1, len(token_ids) + 1):
        text = tokenizer.decode(token_ids[:n], **DECODE)
        hits = [text.find(stop) for stop in stops if stop in text]
        if hits:
            return text[: min(hits)], n
    return tokenizer.decode(token_ids, **DECODE), len(token_ids)


def groupings(items):
    """Every way to split ``items`` into consecutive non-empty blocks (as drafted blocks could)."""
    for cuts in itertools.product([False, True], repeat=len(items) - 1):
        blocks, block = [], [items[0]]
        for item, cut in zip(items[1:], cuts):
            if cut:
                blocks.append(block)
                block = []
            block.append(item)
        yield [*blocks, block]


def run_output_text(tokenizer, blocks, stops):
    """Feed ``blocks`` as a decoding loop does; returns (streamed text, tokens kept, every partial stream)."""
    output, kept, shown = OutputText(tokenizer, stops), 0, []
    for block in blocks:
        kept += output.add(block)
        if output.stopped:
            break
        shown.append(output.take_new(final=False))
    shown.append(output.take_new(final=True))
    return "".join(shown), kept, list(itertools.accumulate(shown))


# ----- find_stop / safe_length ----------------------------------------------------------------------------


def test_find_stop_spanning_blocks():
    assert find_stop("hello wor", ["world"], new_from=6) == -1
    assert find_stop("hello world!", ["world"], new_from=9) == 6  # begun in an earlier block
    assert find_stop("a STOP b END", ["END", "STOP"], new_from=0) == 2  # the earliest wins


def test_find_stop_sees_a_stop_completed_by_the_only_new_character():
    # In mode "ar" every step adds one token, often one character: the search must reach back len(stop) - 1.
    assert find_stop("abc", ["bc"], new_from=2) == 1
    assert find_stop("abc", ["abc"], new_from=2) == 0
    assert find_stop("abc", ["c"], new_from=2) == 2
    assert find_stop("abc", ["ab"], new_from=2) == -1  # complete before the new text: an earlier step's stop


def test_safe_length_holds_back_possible_stop_prefix_and_partial_chars():
    assert safe_length("hello wo", ["world"]) == 6
    assert safe_length("hello", ["world"]) == 5
    assert safe_length("abc\ufffd", []) == 3


# ----- OutputText on hand-chosen tokens, in every grouping ------------------------------------------------


def piece_tokenizer(pieces):
    """A tokenizer whose tokens are the given multi-character pieces (decoding concatenates them)."""
    core = Tokenizer(models.WordLevel(vocab={p: i for i, p in enumerate(["<unk>", *pieces])}, unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")


STOP_CASES = [
    # tokens, stops, text: the example; "n " completes (on " a") before "rn a " (on " list")
    (['"""', "Retur", "n", " a", " list"], ["rn a ", "n "], '"""Retur'),
    # ... the same text in other tokens: both complete on "n a ", so the earlier-starting one wins
    (['"""', "Retur", "n a ", "list"], ["rn a ", "n "], '"""Retu'),
    (["x", "Re", "turn"], ["turn", "Return"], "x"),  # several stops completed by one token
    (["x", "Return", "x"], ["turn", "Return"], "x"),  # ... inside one token
    (["Re", "tur", "n", "x"], ["Return"], ""),  # spans three tokens; completed by the only new character
    (["x", "Retur", "n", "x"], ["rn"], "xRetu"),  # completed by a one-character token
    (["x", "list", "x"], ["is"], "xl"),  # strictly inside a token, with text after it
    (["list", "x", "list"], ["tx", "st"], "li"),  # the first token already holds one: later ones never count
    (["Re", "turn", "Re", "turn"], ["nR", "rnRet"], "Retur"),  # "nR" completes first though "rnRet" starts earlier
    (["x", "list", "x"], ["zz", "xx"], "xlistx"),  # no stop
]


@pytest.mark.parametrize("tokens, stops, expected", STOP_CASES)
def test_stop_rule_is_the_same_for_every_grouping(tokens, stops, expected):
    tokenizer = piece_tokenizer(sorted(set(tokens)))
    ids = tokenizer.convert_tokens_to_ids(tokens)
    assert tokenizer.decode(ids, **DECODE) == "".join(tokens)
    want, want_kept = reference_cut(tokenizer, ids, stops)
    assert want == expected
    for blocks in groupings(ids):
        text, kept, partial = run_output_text(tokenizer, blocks, stops)
        assert (text, kept) == (expected, want_kept), blocks
        assert all(expected.startswith(p) for p in partial)  # nothing shown is taken back


@pytest.fixture(scope="module")
def demo_tokenizer():
    return AutoTokenizer.from_pretrained(embedded_paths()["target"])


def test_incremental_decoding_equals_whole_decoding(demo_tokenizer):
    text = "def f(x):\n    return {'ü': x ** 2}  # ünïcode 日本語 😀 done"
    ids = demo_tokenizer(text)["input_ids"]
    assert any("\ufffd" in demo_tokenizer.decode([i]) for i in ids)  # characters split over tokens
    for size in (1, 2, 3, 7):
        blocks = [ids[i : i + size] for i in range(0, len(ids), size)]
        streamed, kept, partial = run_output_text(demo_tokenizer, blocks, ["never"])
        assert streamed == text and kept == len(ids)
        assert not any("\ufffd" in p for p in partial)  # a half character is never shown


def test_stop_inside_a_multibyte_character_run(demo_tokenizer):
    text = "x = '日本語' + 'ü' # end"
    ids = demo_tokenizer(text)["input_ids"]
    for stops in (["本"], ["語'"], ["ü'", "+"]):
        want, want_kept = reference_cut(demo_tokenizer, ids, stops)
        for size in (1, 2, 5):
            blocks = [ids[i : i + size] for i in range(0, len(ids), size)]
            assert run_output_text(demo_tokenizer, blocks, stops)[:2] == (want, want_kept)


# ----- through the engine: every mode gives the same text -------------------------------------------------

# (mode, config changes): one token per step, drafted blocks of several fixed lengths, the default policies
CONFIGS = [
    ("ar", {}),
    ("diffuspec", {}),
    ("diffuspec", {"draft_length": 1}),
    ("diffuspec", {"draft_length": 3}),
    ("diffuspec", {"draft_length": 8}),
    ("diffuspec", {"length_policy": "adl"}),
    ("ar-drafter", {"draft_length": 4}),
    ("prompt-lookup", {}),
]


def assert_same_stop_in_every_mode(engine, prompt, stops, max_new_tokens):
    reference = engine.generate(prompt, max_new_tokens=max_new_tokens, mode="ar")
    want, kept = reference_cut(engine.tokenizer, reference.token_ids, stops)
    assert kept < len(reference.token_ids), "the stop strings must occur in the output"
    for mode, changes in CONFIGS:
        configured = engine.with_config(**changes)
        out = configured.generate(prompt, max_new_tokens=max_new_tokens, stop=stops, mode=mode)
        where = f"{mode} {changes}"
        assert out.text == want, where
        assert out.token_ids == reference.token_ids[:kept], where
        assert out.finish_reason == "stop", where


@pytest.fixture(scope="module")
def tiny_engine(targets, drafter, tokenizer):
    return DiffuSpec(targets["llama"], drafter, tokenizer, ar_drafter=targets["qwen2"])


def tiny_stop_sets(text):
    """Stops cut out of the target's own output (one character per token): a plain one, an overlapping pair
    whose later-starting member completes first, two ending on the same character, one never completed."""
    return [
        [text[12:15]],
        [text[12:17], text[14:16]],
        [text[12:16], text[14:16]],
        [text[12:16] + "\x00", text[13:15]],
    ]


def test_stop_strings_give_the_same_text_in_every_mode(tiny_engine, tokenizer):
    prompt = "the quick brown fox jumps"
    ids = tokenizer(prompt)["input_ids"]
    text = tokenizer.decode(hf_greedy(tiny_engine.target, ids, 24), **DECODE)
    for stops in tiny_stop_sets(text):
        assert_same_stop_in_every_mode(tiny_engine, prompt, stops, max_new_tokens=24)


@pytest.fixture(scope="module")
def demo_engine():
    return DiffuSpec.from_pretrained("tiny", device="cpu")


def test_overlapping_stops_on_the_demo_pair(demo_engine):
    # The case: once "...Retu" in diffuspec mode and "...Retur" in ar mode.
    assert_same_stop_in_every_mode(demo_engine, "def f(x):", ["rn a ", "n "], max_new_tokens=64)


def test_stops_completed_by_one_multicharacter_token_on_the_demo_pair(demo_engine):
    prompt = "import os\n"
    out = demo_engine.generate(prompt, max_new_tokens=48, mode="ar")
    ends = [len(demo_engine.tokenizer.decode(out.token_ids[: i + 1], **DECODE)) for i in range(len(out.token_ids))]
    # a token of three or more characters well inside the output: both stops end with it
    i = next(i for i in range(8, len(ends)) if ends[i] - ends[i - 1] >= 3 and out.text[ends[i - 1]:ends[i]].strip())
    start, end = ends[i - 1], ends[i]
    assert_same_stop_in_every_mode(demo_engine, prompt, [out.text[start - 2 : end], out.text[end - 2 : end]], 48)
