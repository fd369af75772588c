"""A tuning: what ``diffuspec tune-target`` learnt on top of a base model, as a small folder applied at load time.

``tuning.json`` names a LoRA adapter folder (peft), merged into the base weights, so decoding costs nothing
extra and the merged model *is* the target every output is checked against; a chat template (a file in the
folder, or the name of one shipped in ``diffuspec/chat_templates``), set on the tokenizer; and the tokens that end
an answer besides EOS (``<end_of_turn>`` for Gemma), added to the model's generation config so that generation
stops there.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .errors import DiffuSpecError

TUNING_FILE = "tuning.json"
TEMPLATES_DIR = Path(__file__).parent / "chat_templates"


def template_text(name_or_file: str | Path, folder: Path | None = None) -> str:
    """A chat template: a file in ``folder``, else one shipped under that name."""
    if folder is not None and (folder / name_or_file).is_file():
        return (folder / name_or_file).read_text()
    shipped = TEMPLATES_DIR / f"{name_or_file}.jinja"
    if not shipped.is_file():
        names = ", ".join(sorted(p.stem for p in TEMPLATES_DIR.glob("*.jinja")))
        raise DiffuSpecError(f"chat template {name_or_file!r} not found: give a file in the tuning folder or one of "
                             f"{names}")
    return shipped.read_text()


def set_chat(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: str | None,
             end_of_turn: list[str] | tuple[str, ...] = ()) -> None:
    """Give ``tokenizer`` the chat ``template`` and make the ``end_of_turn`` tokens end generation."""
    if template is not None:
        tokenizer.chat_template = template
    ids = [tokenizer.convert_tokens_to_ids(token) for token in end_of_turn]
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise DiffuSpecError(f"end-of-turn tokens {list(end_of_turn)} are not all in the tokenizer's vocabulary")
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    model.generation_config.eos_token_id = sorted({*eos, *ids})


def read_tuning(folder: str | Path) -> dict[str, Any]:
    spec_file = Path(folder) / TUNING_FILE
    if not spec_file.is_file():
        raise DiffuSpecError(f"{folder} is not a tuning folder (no {TUNING_FILE}): give a folder written by "
                             "`diffuspec tune-target`")
    return json.loads(spec_file.read_text())


def merge_tuning(model: PreTrainedModel, folder: str | Path) -> PreTrainedModel:
    """``model`` with the tuning's adapter in ``folder`` merged in (a new module tree; the base's weights are
    changed in place)."""
    folder = Path(folder)
    spec = read_tuning(folder)
    if spec.get("adapter"):
        from peft import PeftModel

        with warnings.catch_warnings():  # peft reads a property transformers deprecates; nothing for users to act on
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            model = PeftModel.from_pretrained(model, folder / spec["adapter"]).merge_and_unload()
    return model.eval()


def tuning_chat(folder: str | Path) -> tuple[str | None, list[str]]:
    """The tuning's chat template (None: the tokenizer's own) and end-of-turn tokens, for ``set_chat``."""
    folder = Path(folder)
    spec = read_tuning(folder)
    template = template_text(spec["chat_template"], folder) if spec.get("chat_template") else None
    return template, list(spec.get("end_of_turn", ()))
