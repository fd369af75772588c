"""DLMSettings: the knobs of a diffusion LM's own sampler and of Spiffy, and DenoisingStep, what one forward
pass of either yields."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DiffuSpecError
from .graph import GraphShape


@dataclass(frozen=True)
class DLMSettings:
    """Semi-autoregressive masked diffusion (LLaDA-style) and Spiffy's draft graph.

    Each block of ``block_length`` masks is denoised in ``steps_per_block`` steps, each unmasking the
    ``tokens_per_step`` most confident positions. ``prefix_cache`` computes the committed text's keys and values
    once per block, from the committed text alone (block-causal attention); ``False`` recomputes everything each
    step (models such as LLaDA that take no cache). It changes the model's function, so compare dlm and spiffy
    under the same value.

    Spiffy evaluates up to ``graph_size`` draft states beside the real one per forward. Without a calibrated
    ``graph`` (``calibrate_graph``) it drafts the likeliest nodes under a prior fitted to the demo drafter
    (``GraphShape.default``), at most ``graph_depth`` steps deep, with each position's ``token_ranks`` likeliest
    tokens. Drafts whose geometric-mean candidate probability is below ``prune_below`` are dropped (Spiffy v4's
    dynamic pruning). Measured on the demo drafter (8 prompts, 64 tokens, greedy, block 16, 16 steps): graph_size
    8 takes 0.48x dlm's forwards; every draft row costs compute, so on a 2-core CPU graph_size 3 is faster (0.56x
    forwards) while a GPU, where rows are nearly free, wants 8 or more. Pruning at 0.3 drops 12% of the rows
    for 3% more forwards.
    """

    block_length: int = 16
    steps_per_block: int = 16
    prefix_cache: bool = True
    graph_size: int = 8
    graph_depth: int = 6
    token_ranks: int = 2  # drafts use each position's top-``token_ranks`` tokens
    prune_below: float = 0.3
    graph: GraphShape | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise DiffuSpecError(message)

        def positive_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= 1

        need(positive_int(self.block_length), f"block_length must be a positive integer, got {self.block_length!r}")
        need(
            positive_int(self.steps_per_block) and self.steps_per_block <= self.block_length,
            f"steps_per_block must be an integer in [1, block_length={self.block_length}] (each step unmasks at "
            f"least one token), got {self.steps_per_block!r}",
        )
        need(isinstance(self.prefix_cache, bool), f"prefix_cache must be True or False, got {self.prefix_cache!r}")
        need(
            isinstance(self.graph_size, int) and not isinstance(self.graph_size, bool) and self.graph_size >= 0,
            f"graph_size must be an integer >= 0 (0: no drafts, plain dlm), got {self.graph_size!r}",
        )
        need(positive_int(self.graph_depth), f"graph_depth must be a positive integer, got {self.graph_depth!r}")
        need(positive_int(self.token_ranks), f"token_ranks must be a positive integer, got {self.token_ranks!r}")
        need(
            isinstance(self.prune_below, (int, float)) and not isinstance(self.prune_below, bool)
            and 0.0 <= self.prune_below < 1.0,
            f"prune_below must be a number in [0, 1) (0: no pruning), got {self.prune_below!r}",
        )
        need(
            self.graph is None or isinstance(self.graph, GraphShape),
            f"graph must be a GraphShape (from calibrate_graph) or None, got {type(self.graph).__name__}",
        )
        if self.graph is not None:
            need(
                self.graph.tokens_per_step == self.tokens_per_step,
                f"the graph was calibrated for {self.graph.tokens_per_step} tokens per step but these settings "
                f"unmask {self.tokens_per_step}: calibrate it again with these block_length and steps_per_block",
            )

    @property
    def tokens_per_step(self) -> int:
        return -(-self.block_length // self.steps_per_block)

    def draft_graph(self) -> GraphShape:
        """The calibrated graph, or the default shape, cut to ``graph_size`` nodes."""
        if self.graph is not None:
            return self.graph.truncated(self.graph_size)
        return GraphShape.default(self.graph_size, self.graph_depth, self.tokens_per_step, self.token_ranks)


@dataclass(frozen=True)
class DenoisingStep:
    """What one forward pass produced."""

    tokens: list[int]  # tokens final now that complete the left-to-right prefix (streamable; may be empty)
    forwards: int  # model forward passes spent (1 per batched forward)
    denoising_steps: int  # sampler transitions this forward's distributions advanced (1 for dlm)
    graph_size: int = 0  # draft states evaluated beside the real one (spiffy)
