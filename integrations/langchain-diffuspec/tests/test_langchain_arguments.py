"""Constructor arguments of both LangChain classes: unknown ones refused, the Hugging Face spellings working,
and every argument that changes the output in the cache key."""

import pytest
import torch
import transformers
from langchain_core.caches import InMemoryCache
from langchain_core.globals import set_llm_cache
from langchain_diffuspec import ChatDiffuSpec, DiffuSpecLLM

from diffuspec import DiffuSpecError
from diffuspec.chat import format_chat
from diffuspec.loading import embedded_paths

PROMPT = "def parse_args(argv):"
CLASSES = [ChatDiffuSpec, DiffuSpecLLM]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"repetition_penalty": 1.1}, "unknown argument.*repetition_penalty"),
        ({"generate_kwargs": {}}, "unknown argument.*generate_kwargs"),
        ({"model": "Qwen/Qwen2.5-0.5B-Instruct"}, "only names the model.*target='Qwen/Qwen2.5-0.5B-Instruct'"),
        ({"drafter": "some/drafter"}, "drafter was given without a target"),
        ({"model_kwargs": {"low_cpu_mem_usage": True}}, r"model_kwargs\['low_cpu_mem_usage'\] is not supported"),
        ({"dtype": "float16", "model_kwargs": {"torch_dtype": "bfloat16"}}, "dtype is given twice"),
        ({"max_tokens": 8, "max_new_tokens": 9}, "one argument"),
        ({"target": "a", "model_id": "b"}, "one argument"),
        ({"engine_config": {"k_maxx": 3}}, "engine_config got unknown argument.*k_maxx"),
        ({"max_tokens": 0}, "max_new_tokens must be a positive integer"),
        ({"max_tokens": True}, "max_new_tokens must be a positive integer"),
        ({"top_p": "0.9"}, "top_p must be"),
        ({"mode": "fast"}, "mode 'fast' is unknown"),
        ({"stop": [""]}, "stop must be"),
    ],
)
def test_bad_constructor_arguments_are_refused(cls, kwargs, error):
    with pytest.raises(DiffuSpecError, match=error):
        cls(**kwargs)


@pytest.mark.parametrize("cls", CLASSES)
def test_openai_and_hugging_face_spellings_are_one_argument(cls):
    """max_tokens/max_new_tokens, stop/stop_sequences and seed, in the constructor and per call."""
    hf = cls(target="tiny", max_new_tokens=7, stop_sequences=["\n"], seed=5, temperature=0.8)
    openai = cls(target="tiny", max_tokens=7, stop=["\n"], seed=5, temperature=0.8)
    assert hf.generation_params() == openai.generation_params()
    params = hf.generation_params()
    assert (params.max_new_tokens, params.stop, params.seed) == (7, ("\n",), 5)
    per_call = [hf.generation_params(max_tokens=3, stop_sequences=["x"], seed=1),
                hf.generation_params(max_new_tokens=3, stop=["x"], seed=1)]
    assert per_call[0] == per_call[1] and per_call[0].stop == ("\n", "x") and per_call[0].seed == 1
    for twice in ({"max_tokens": 3, "max_new_tokens": 3}, {"stop": ["a"], "stop_sequences": ["b"]}):
        with pytest.raises(DiffuSpecError, match="one argument"):
            hf.generation_params(**twice)
    with pytest.raises(DiffuSpecError, match="unknown argument.*stop_words"):
        hf.generation_params(stop_words=["x"])
    with pytest.raises(DiffuSpecError, match="unknown argument.*max_length"):
        cls(target="tiny", max_length=5)
    answers = [hf.invoke(PROMPT, stop_sequences=["("]), openai.invoke(PROMPT, stop=["("])]
    assert len({getattr(a, "content", a) for a in answers}) == 1  # seeded sampling: the same answer


def test_engine_and_model_arguments_do_not_mix():
    engine = ChatDiffuSpec().get_engine()
    with pytest.raises(DiffuSpecError, match="engine= already holds loaded models, so target, dtype"):
        ChatDiffuSpec(engine=engine, target="x", dtype="bfloat16")
    assert ChatDiffuSpec(engine=engine, model="my-label").resolved_model_name == "my-label"


def test_hosted_model_arguments_are_accepted():
    """langchain-tests constructs every chat model like this; these do nothing for a local engine."""
    chat = ChatDiffuSpec(temperature=0, max_tokens=100, timeout=60, stop=[], max_retries=2, api_key="test",
                         streaming=True)
    assert chat.generation_params().max_new_tokens == 100


def test_one_default_answer_length_for_every_wrapper():
    """Without max_tokens, every wrapper answers at most 256 tokens or a quarter of the window (the tiny
    preset's 512: 128), LlamaIndex's DiffuSpecLLM included (its test checks num_output)."""
    assert ChatDiffuSpec(target="tiny").generation_params().max_new_tokens == 128
    assert DiffuSpecLLM(target="tiny").generation_params().max_new_tokens == 128
    assert ChatDiffuSpec(target="tiny", max_new_tokens=300).generation_params().max_new_tokens == 300


def test_hugging_face_spellings_load_the_model(monkeypatch):
    """model_id, model_kwargs (torch_dtype included), device_map and trust_remote_code reach from_pretrained."""
    loads = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(path, **kwargs):
        loads.append(kwargs)
        return real(path, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    paths = embedded_paths()
    chat = ChatDiffuSpec(model_id=paths["target"], drafter=paths["drafter"], model_kwargs={"torch_dtype": "bfloat16"},
                         device_map="cpu", trust_remote_code=False, model="demo-bf16", max_new_tokens=12)
    engine = chat.get_engine()
    assert [(k["dtype"], k["device_map"], k["trust_remote_code"]) for k in loads] == [(torch.bfloat16, "cpu", False)] * 2
    assert chat.target == paths["target"] and engine.target.dtype == torch.bfloat16
    message = chat.invoke(PROMPT)
    assert message.response_metadata["model_name"] == "demo-bf16"
    prompt = format_chat(engine.tokenizer, [{"role": "user", "content": PROMPT}])
    assert message.content == engine.generate(prompt, 12).text
    llm = DiffuSpecLLM(model_id=paths["target"], drafter=paths["drafter"], dtype="bfloat16", device_map="cpu",
                       trust_remote_code=False, max_new_tokens=12)
    assert llm.get_engine() is engine  # the same configuration: one shared engine


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": 5}, {"temperature": 0.7}, {"top_k": 5}, {"top_p": 0.9}, {"seed": 1}, {"stop": ["\n"]},
        {"mode": "ar"}, {"engine_config": {"k_max": 8}}, {"target": "t"}, {"drafter": "d", "target": "t"},
        {"ar_drafter": "a", "target": "t"}, {"dtype": "bfloat16"}, {"model_kwargs": {"device_map": "auto"}},
        {"device": "cpu"}, {"trust_remote_code": True},
    ],
)
def test_every_output_changing_argument_is_in_the_cache_key(cls, change):
    def key(model):
        return model._get_llm_string() if cls is ChatDiffuSpec else str(sorted(model.asdict().items()))  # as BaseLLM keys

    assert key(cls(**change)) != key(cls())


@pytest.fixture
def llm_cache():
    cache = InMemoryCache()
    set_llm_cache(cache)
    yield cache
    set_llm_cache(None)


def test_cached_answers_are_not_shared_across_settings(llm_cache):
    short = ChatDiffuSpec(max_tokens=4).invoke(PROMPT)
    longer = ChatDiffuSpec(max_tokens=32).invoke(PROMPT)
    assert short.usage_metadata["output_tokens"] == 4 < longer.usage_metadata["output_tokens"]
    assert longer.content.startswith(short.content) and longer.content != short.content
    again = ChatDiffuSpec(max_tokens=4).invoke(PROMPT)
    assert again.content == short.content and len(llm_cache._cache) == 2  # the same settings hit the cache
    assert DiffuSpecLLM(max_tokens=4).invoke(PROMPT) != DiffuSpecLLM(max_tokens=32).invoke(PROMPT)
