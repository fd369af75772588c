"""The block drafter (``diffuspec train-drafter``): a one-pass diffusion drafter for any causal target, made of
the target's own parts.

- Layers: a few of the target's own decoder layers (its class and config; ``train-drafter`` starts them as copies
  of the target's last layers), run over a block ``[anchor, mask x (block_size - 1)]``, the anchor being the last
  committed token. Shifted (Dream-style, the default): block position j predicts the token j + 1 after the
  anchor, so one pass gives ``block_size`` per-position distributions, a lattice for CPS and the length policy
  like any diffusion drafter's; unshifted: each mask predicts itself (``block_size - 1``). The masks attend to the
  whole block both ways; the anchor only to the context and itself, so its prediction (the first draft) depends
  on committed tokens alone, as the target's next-token prediction does: a drafter holding all of the target's
  layers predicts the first draft exactly as the target does.
- Context: the target's own hidden states of the committed tokens (``hidden_layers``, which the decoding loop
  hands over from its verification passes), made into each drafter layer's keys and values by that layer's own
  input norm and key/value projections. ``per layer``: drafter layer i reads the target's states at the depth it
  was copied from, so a drafter layer starts out seeing exactly the keys and values the target's own layer saw;
  ``fused``: a learnt projection of several tapped layers feeds every drafter layer (DFlash's choice). The
  projected context is cached per committed position: exact, since it depends on committed tokens only. With
  ``carry_state`` every block row's input also gets a learnt projection of the target's (deepest tapped) state of
  the last position it has read, the one before the anchor, as EAGLE feeds its drafter the target's feature
  beside the token: the anchor row then starts from what the target knew one token earlier, not from a bare
  embedding.
- Vocabulary: a draft vocabulary (the most frequent tokens of the target's own output, ``draft_ids``), scored
  with the target's own output-embedding rows, borrowed at load time, never stored. Drafts never propose a token
  outside it; the target verifies every token over its full vocabulary, so the output is the target's.

Stored: the layers, the final norm, the fused projection (if any) and ``draft_ids``; nothing of the target's
embeddings. ``BlockDrafter`` drives a loaded model for one request; ``bound_factory`` (``adapters``) pairs it
with the target.
"""

from __future__ import annotations

import inspect
import sys

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, DynamicCache, PretrainedConfig, PreTrainedModel

from ..caches import rollback
from ..drafters import Draft, Drafter

MODEL_TYPE = "diffuspec_block_drafter"


class BlockDrafterConfig(PretrainedConfig):
    """``backbone``: the target's text config for the drafter's layers (``num_hidden_layers`` of them, their
    ``layer_types``, a 1-token vocabulary: the embeddings are the target's). ``context_layers``: the target's
    ``hidden_states`` indices read (one per layer unless ``fused``). ``copied_from``: the target layers the drafter
    layers started as (provenance)."""

    model_type = MODEL_TYPE

    def __init__(self, backbone: dict | None = None, context_layers: list[int] | None = None, fused: bool = False,
                 block_size: int = 16, shifted: bool = True, mask_token_id: int | None = None,
                 draft_vocab_size: int = 1, target_vocab_size: int = 1, copied_from: list[int] | None = None,
                 carry_state: bool = False, **kwargs) -> None:
        self.backbone = backbone or {}
        self.context_layers = list(context_layers or [])
        self.fused = fused
        self.block_size = block_size
        self.shifted = shifted
        self.mask_token_id = mask_token_id
        self.draft_vocab_size = draft_vocab_size
        self.target_vocab_size = target_vocab_size
        self.copied_from = list(copied_from or [])
        self.carry_state = carry_state
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)


def backbone_config(target_config: PretrainedConfig, layers: list[int]) -> dict:
    """The target's text config for a drafter made of its layers ``layers`` (their attention types kept)."""
    config = target_config.get_text_config().to_dict()
    for key in ("quantization_config", "architectures", "auto_map", "_name_or_path", "transformers_version",
                "dtype", "torch_dtype"):
        config.pop(key, None)
    if isinstance(config.get("layer_types"), list):
        config["layer_types"] = [config["layer_types"][i] for i in layers]
    config.update(num_hidden_layers=len(layers), vocab_size=1, pad_token_id=None, bos_token_id=None, eos_token_id=None,
                  unk_token_id=None,
                  tie_word_embeddings=False,
                  use_bidirectional_attention=False)
    return config


class BlockDrafterModel(PreTrainedModel):
    config_class = BlockDrafterConfig
    base_model_prefix = "drafter"
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: BlockDrafterConfig) -> None:
        super().__init__(config)
        inner = AutoConfig.for_model(**config.backbone)
        inner._attn_implementation = "sdpa"
        self.backbone = AutoModel.from_config(inner)
        hidden = inner.hidden_size
        n_layers = inner.num_hidden_layers
        if not config.fused and len(config.context_layers) != n_layers:
            raise ValueError(f"a per-layer block drafter reads one target layer per drafter layer: got "
                             f"{len(config.context_layers)} context layers for {n_layers} layers")
        self.fuse = nn.Linear(len(config.context_layers) * hidden, hidden, bias=False) if config.fused else None
        self.fuse_norm = type(self.backbone.norm)(hidden, eps=inner.rms_norm_eps) if config.fused else None
        self.carry_norm = type(self.backbone.norm)(hidden, eps=inner.rms_norm_eps) if config.carry_state else None
        self.carry = nn.Linear(hidden, hidden, bias=False) if config.carry_state else None
        self.register_buffer("draft_ids", torch.arange(config.draft_vocab_size), persistent=True)
        for layer in self.layers:
            if not hasattr(layer, "input_layernorm") or not hasattr(layer, "self_attn"):
                raise ValueError(f"{type(layer).__name__} has no input_layernorm/self_attn: this architecture is "
                                 "not supported by the block drafter")
            layer.self_attn.is_causal = False  # the block attends both ways
        attention = type(self.layers[0].self_attn)
        self._apply_rope = getattr(sys.modules[attention.__module__], "apply_rotary_pos_emb", None)
        if self._apply_rope is None:
            raise ValueError(f"{attention.__name__} has no module-level apply_rotary_pos_emb: this architecture is "
                             "not supported by the block drafter")
        self._rope_by_type = "layer_type" in inspect.signature(self.backbone.rotary_emb.forward).parameters
        self._layer_types = list(getattr(inner, "layer_types", None) or ["full_attention"] * n_layers)
        self._window = getattr(inner, "sliding_window", None)
        self._cache_arg = "cache" if "cache" in inspect.signature(type(self.layers[0]).forward).parameters \
            else "past_key_values"
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        self.backbone._init_weights(module)  # the backbone's rules (rotary buffers, norms) for every module

    @property
    def layers(self) -> nn.ModuleList:
        return self.backbone.layers

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        """The target ``hidden_states`` indices this drafter reads (``Drafter.hidden_layers``)."""
        return tuple(self.config.context_layers)

    def _rope(self, index: int, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._rope_by_type:
            return self.backbone.rotary_emb(x, positions, self._layer_types[index])
        return self.backbone.rotary_emb(x, positions)

    def context_kv(self, states: torch.Tensor, positions: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per drafter layer, the keys and values [b, kv heads, T, head dim] of committed positions from the
        target's states there ([b, T, len(context_layers) * hidden]) at ``positions`` [b, T]."""
        states = states.to(self.dtype)
        if self.fuse is not None:
            inputs = [self.fuse_norm(self.fuse(states))] * len(self.layers)
        else:
            inputs = states.split(states.shape[-1] // len(self.layers), dim=-1)
        kv = []
        for i, (layer, x) in enumerate(zip(self.layers, inputs)):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            shape = (*h.shape[:-1], -1, attn.head_dim)
            keys = attn.k_proj(h).view(shape).transpose(1, 2)
            values = attn.v_proj(h).view(shape).transpose(1, 2)
            if hasattr(attn, "k_norm"):
                keys = attn.k_norm(keys)
            if hasattr(attn, "v_norm"):
                values = attn.v_norm(values)
            cos, sin = self._rope(i, x, positions)
            keys = self._apply_rope(keys, keys, cos, sin)[1]
            kv.append((keys, values))
        return kv

    def masks(self, sees: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor) -> list[torch.Tensor]:
        """Per layer, the boolean mask [b, 1, Q, K] (True: attend) from ``sees`` ([b, Q, K]), a sliding layer's
        keys further back than its window dropped."""
        full = sees[:, None]
        if not self._window or "sliding_attention" not in self._layer_types:
            return [full] * len(self._layer_types)
        near = (query_positions[:, :, None] - key_positions[:, None, :] < self._window)[:, None]
        return [full & near if kind == "sliding_attention" else full for kind in self._layer_types]

    def block_sees(self, context: int) -> torch.Tensor:
        """[block, context + block]: what each block row attends to after ``context`` cached positions (the
        anchor: the context and itself; a mask: everything)."""
        size = self.config.block_size
        sees = torch.ones(size, context + size, dtype=torch.bool, device=self.device)
        sees[0, context + 1 :] = False
        return sees

    def predicting_rows(self, count: int) -> slice:
        """The block rows whose outputs are the first ``count`` drafts."""
        start = 0 if self.config.shifted else 1
        return slice(start, start + count)

    @property
    def max_draft(self) -> int:
        return self.config.block_size - (0 if self.config.shifted else 1)

    def block_inputs(self, embeds: torch.Tensor, last_states: torch.Tensor | None) -> torch.Tensor:
        """The block rows' inputs: the target's embeddings of their tokens ([b, Q, hidden]), plus, with
        ``carry_state``, the projection of the target's states before each row's anchor ([b, Q, len(context_layers)
        * hidden], the deepest tapped layer last; zeros where the anchor is the first token)."""
        h = embeds.to(self.dtype)
        if self.carry is not None:
            h = h + self.carry(self.carry_norm(last_states[..., -h.shape[-1] :].to(self.dtype)))
        return h

    def block_hidden(self, embeds: torch.Tensor, positions: torch.Tensor, cache: DynamicCache,
                     masks: list[torch.Tensor | None]) -> torch.Tensor:
        """The block's final hidden states [b, Q, hidden]: ``embeds`` (``block_inputs``) at ``positions``, attending to ``cache`` (the context's keys and values, layer by layer; the block's are
        appended to it) and to themselves as ``masks`` say."""
        h = embeds.to(self.dtype)
        for i, layer in enumerate(self.layers):
            out = layer(h, attention_mask=masks[i], position_embeddings=self._rope(i, h, positions),
                        position_ids=positions, **{self._cache_arg: cache})
            h = out[0] if isinstance(out, tuple) else out
        return self.backbone.norm(h)


def block_drafter_from_target(target: PreTrainedModel, layers: list[int], *, draft_ids: torch.Tensor,
                              mask_token_id: int, block_size: int = 16, shifted: bool = True,
                              context_layers: list[int] | None = None, fused: bool = False,
                              copy: bool = True, carry_state: bool = False) -> BlockDrafterModel:
    """A block drafter of the target's layers ``layers`` (copies of their weights and of the final norm when
    ``copy``, else freshly initialised ones of the same shape). Per layer (``fused`` false), drafter layer i reads
    the target's ``hidden_states[layers[i]]``, the input of the layer it was copied from; fused, it reads
    ``context_layers`` through a learnt projection. ``carry_state``'s projection starts at zero: the drafter
    starts as the copied layers alone."""
    if not fused and context_layers is not None and list(context_layers) != list(layers):
        raise ValueError("a per-layer block drafter reads the input of each copied layer: leave context_layers unset")
    config = BlockDrafterConfig(
        backbone=backbone_config(target.config, layers), context_layers=list(context_layers if fused else layers),
        fused=fused, block_size=block_size, shifted=shifted, mask_token_id=mask_token_id,
        draft_vocab_size=int(draft_ids.numel()), target_vocab_size=target.get_output_embeddings().weight.shape[0],
        copied_from=list(layers) if copy else [], carry_state=carry_state,
    )
    model = BlockDrafterModel(config).to(device=target.device, dtype=target.dtype)
    model.draft_ids.copy_(draft_ids.to(model.draft_ids.device))
    if model.carry is not None:
        nn.init.zeros_(model.carry.weight)
    if copy:
        base = target.base_model
        with torch.no_grad():
            for mine, theirs in zip(model.layers, (base.layers[i] for i in layers)):
                mine.load_state_dict(theirs.state_dict())
            model.backbone.norm.load_state_dict(base.norm.state_dict())
    return model.eval()


def draft_head(target: PreTrainedModel, model: BlockDrafterModel) -> torch.Tensor:
    """The target's output-embedding rows of the draft vocabulary [draft vocab, hidden] (a copy, in the
    drafter's dtype): the drafter's LM head."""
    weight = target.get_output_embeddings().weight
    return weight.detach()[model.draft_ids.to(weight.device)].to(model.dtype)


def check_pair(target: PreTrainedModel, model: BlockDrafterModel) -> None:
    """Refuse a block drafter made for another target, naming the fix."""
    text = target.config.get_text_config()
    hidden = target.get_input_embeddings().embedding_dim
    vocab = target.get_output_embeddings().weight.shape[0]
    inner = model.backbone.config
    problems = []
    if inner.hidden_size != hidden:
        problems.append(f"width {inner.hidden_size}, the target's {hidden}")
    if max(model.config.context_layers, default=0) > text.num_hidden_layers:
        problems.append(f"reads hidden states {model.config.context_layers}, the target has {text.num_hidden_layers} layers")
    if model.config.target_vocab_size != vocab:
        problems.append(f"a {model.config.target_vocab_size}-token target vocabulary, the target's has {vocab}")
    if problems:
        raise ValueError(f"this block drafter was built for another target ({'; '.join(problems)}): train one for "
                         "this target with `diffuspec train-drafter`")


class BlockDrafter(Drafter):
    """One request's drafting with a ``BlockDrafterModel`` for ``target`` (whose embeddings it reads and whose
    output rows ``head`` are its LM head: ``draft_head``)."""

    def __init__(self, target: PreTrainedModel, model: BlockDrafterModel, head: torch.Tensor | None = None) -> None:
        check_pair(target, model)
        self.target, self.model = target, model
        self.head = draft_head(target, model) if head is None else head
        self.embed = target.get_input_embeddings()
        self.softcap = getattr(target.config.get_text_config(), "final_logit_softcapping", None)
        self.hidden_layers = model.hidden_layers
        self.block_size, self.mask_token_id = model.config.block_size, model.config.mask_token_id
        self.vocab_size = model.config.target_vocab_size
        self.reset()

    @property
    def max_draft(self) -> int:
        """Draft tokens one pass gives."""
        return self.model.max_draft

    def reset(self) -> None:
        self.cache = DynamicCache()
        self.last_state: torch.Tensor | None = None  # the target's states of the last committed position read
        self.cached = 0  # committed positions whose keys and values are in the cache
        self.pending: list[torch.Tensor] = []  # target states not yet in the cache

    def observe_hidden_states(self, states: torch.Tensor) -> None:
        self.pending.append(states)

    @torch.inference_mode()
    def propose(self, context, k, sampling=None, generator=None) -> Draft:
        device = context.device
        if self.pending:
            fresh = torch.cat(self.pending)
            self.pending = []
            positions = torch.arange(self.cached, self.cached + fresh.shape[0], device=device)[None]
            for i, (keys, values) in enumerate(self.model.context_kv(fresh[None], positions)):
                self.cache.update(keys, values, i)
            self.cached += fresh.shape[0]
            self.last_state = fresh[-1]
        if self.cached != context.numel() - 1:
            raise RuntimeError(
                f"the block drafter holds target hidden states for {self.cached} positions but the context has "
                f"{context.numel()} tokens: its proposer must pass every committed position's states"
            )
        block = torch.full((self.block_size,), self.mask_token_id, dtype=torch.long, device=device)
        block[0] = context[-1]
        positions = torch.arange(self.cached, self.cached + self.block_size, device=device)[None]
        keys = torch.arange(self.cached + self.block_size, device=device)[None]
        masks = self.model.masks(self.model.block_sees(self.cached)[None], positions, keys)
        last = self.last_state if self.last_state is not None else torch.zeros(
            len(self.hidden_layers) * self.embed.embedding_dim, device=device)
        inputs = self.model.block_inputs(self.embed(block)[None], last.expand(1, self.block_size, -1))
        hidden = self.model.block_hidden(inputs, positions, self.cache, masks)
        rollback(self.cache, self.block_size)  # keep the context, drop the block
        draft = min(k, self.max_draft)
        logits = hidden[0, self.model.predicting_rows(draft)] @ self.head.T
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        logprobs = torch.full((draft, self.vocab_size), float("-inf"), device=device)
        logprobs[:, self.model.draft_ids] = logits.float().log_softmax(dim=-1)
        return Draft(logprobs=logprobs, forwards=1)


def is_block_drafter(model: object) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == MODEL_TYPE


AutoConfig.register(MODEL_TYPE, BlockDrafterConfig, exist_ok=True)
AutoModel.register(BlockDrafterConfig, BlockDrafterModel, exist_ok=True)
