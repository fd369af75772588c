"""Loading a model pair by hub id or local path, or the embedded demo pair shipped in the package."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .config import DiffuSpecError
from .path_search import CorpusNGram

if TYPE_CHECKING:
    from .config import DiffuSpecConfig
    from .engine import DiffuSpec

EMBEDDED_DIR = Path(__file__).parent / "demo"
EMBEDDED = {role: EMBEDDED_DIR / role for role in ("target", "drafter", "ar_drafter")}
CPS_NGRAM_FILE = "cps_ngram.safetensors"  # a drafter directory may carry CPS's corpus n-gram table


@dataclass
class LoadedModels:
    target: PreTrainedModel
    drafter: PreTrainedModel | None
    ar_drafter: PreTrainedModel | None
    tokenizer: PreTrainedTokenizerBase
    cps_ngram: CorpusNGram | None = None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def embedded_paths() -> dict[str, str]:
    """Paths of the embedded demo pair (target, diffusion drafter, AR drafter)."""
    missing = [str(p) for p in EMBEDDED.values() if not (p / "config.json").exists()]
    if missing:
        raise DiffuSpecError(
            f"the embedded demo models are missing ({', '.join(missing)}): reinstall diffuspec from a full "
            "clone, or rebuild them with `diffuspec train-demo`"
        )
    return {role: str(path) for role, path in EMBEDDED.items()}


def _load_model(
    path: str, *, device: str | None, dtype, device_map, trust_remote_code: bool
) -> PreTrainedModel:
    kwargs = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ValueError:  # e.g. Dream registers only AutoModel (needs trust_remote_code=True)
        model = AutoModel.from_pretrained(path, **kwargs)
    if device_map is None:
        model = model.to(device or default_device())
    return model.eval()


def _same_tokenizer(path: str, reference: PreTrainedTokenizerBase, role: str) -> None:
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):  # no tokenizer files beside the weights: nothing to compare
        return
    if tokenizer.get_vocab() != reference.get_vocab():
        raise DiffuSpecError(
            f"the {role} at {path} uses a different tokenizer from the target ({len(tokenizer)} vs "
            f"{len(reference)} tokens, or the same size with different ids): speculative decoding needs one "
            f"shared vocabulary. Pick a {role} trained with the target's tokenizer."
        )


def load_models(
    target: str | None = None,
    drafter: str | None = None,
    *,
    ar_drafter: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
) -> LoadedModels:
    """Load target, drafter(s), the target's tokenizer and the drafter directory's CPS n-gram table if it has
    one; check that the tokenizers agree."""
    if target is None:
        if drafter is not None or ar_drafter is not None:
            raise DiffuSpecError("a drafter was given without a target: pass target=... too")
        paths = embedded_paths()
        target, drafter, ar_drafter = paths["target"], paths["drafter"], paths["ar_drafter"]
    tokenizer = AutoTokenizer.from_pretrained(target)
    roles = {"drafter": drafter, "AR drafter": ar_drafter}
    for role, path in roles.items():
        if path is not None:
            _same_tokenizer(path, tokenizer, role)
    device = str(device) if device is not None else None
    load = dict(device=device, dtype=dtype, device_map=device_map, trust_remote_code=trust_remote_code)
    return LoadedModels(
        target=_load_model(target, **load),
        drafter=_load_model(drafter, **load) if drafter else None,
        ar_drafter=_load_model(ar_drafter, **load) if ar_drafter else None,
        tokenizer=tokenizer,
        cps_ngram=_cps_ngram(drafter),
    )


def _cps_ngram(drafter: str | None) -> CorpusNGram | None:
    table = Path(drafter) / CPS_NGRAM_FILE if drafter else None
    return CorpusNGram.load(table) if table and table.is_file() else None


_SHARED: dict[tuple, object] = {}
_SHARED_LOCK = threading.Lock()


def shared_engine(
    target: str | None = None,
    drafter: str | None = None,
    *,
    ar_drafter: str | None = None,
    config: DiffuSpecConfig | None = None,
    **load: object,
) -> DiffuSpec:
    """One engine per distinct (models, loading arguments, config), loaded on first use and shared by every
    wrapper that asks for the same: building a wrapper stays cheap, and the weights are loaded once.
    ``load`` holds ``from_pretrained``'s loading arguments (device, dtype, device_map, trust_remote_code)."""
    from .config import DiffuSpecConfig
    from .engine import DiffuSpec

    config = config or DiffuSpecConfig()
    key = (target, drafter, ar_drafter, config, repr(sorted(load.items())))  # repr: a device_map dict
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = DiffuSpec.from_pretrained(target, drafter, ar_drafter=ar_drafter, config=config, **load)
        return _SHARED[key]
