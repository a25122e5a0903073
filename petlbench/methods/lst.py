"""Ladder Side-Tuning (Sung et al., NeurIPS 2022), applied to both towers.

The backbone body runs under an explicit `torch.no_grad()`: a small side network (the
backbone's block structure with every width divided by `r`) reads the backbone's
per-layer hidden states through gated ladder connections, and its output goes through the
backbone's frozen final norm, pooling and projection *with autograd on*, so the gradient
reaches the side network but never the backbone body.

On the VSE family the side network runs beside the BERT text tower (BERT layers, every
width divided by `r`), ending in the frozen text head (per-token projection, masked mean).
The CNN image tower has no side network (LST is defined on transformer blocks): its body
runs under ``no_grad`` and only its head follows the suite's `train.head` rule. The frozen
VSE backbone runs in eval mode (BatchNorm statistics and BERT's dropout of a frozen feature
extractor).

On T5 (the LST code's own setting) a side encoder and a side decoder run beside the two
stacks, walked block by block under ``no_grad`` (`LadderStack`); the side decoder attends
to the side encoder's output, and its output goes through `up` into the frozen language
model head (`LadderSideEncoderDecoder`).

Side blocks are initialised by pruning the backbone's blocks to `1/r` of their rows,
ranked by Fisher importance (the authors' default), weight magnitude, or not at all
(random). On the dual encoders the pruning keeps each block's structure (`prune_block_into`);
on T5 it is the LST code's chain through the whole model (`chain_selection`). Deviation
from the authors on the dual encoders, who accumulate squared gradients at batch 1: a
contrastive loss over one pair is constant, so importance is accumulated over batches of
`fisher_batch_size` pairs (`fisher_samples` samples in all); T5 takes them one by one.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter

import torch
from torch import nn

from petlbench.config import ConfigError
from petlbench.methods.encoder_decoder import SideEncoded, kept_layers, lst_code_init
from petlbench.methods.specs import LST, LSTConfig
from petlbench.models.backbone import Backbone, BlockWalk, DualEncoder, Encoded, EncoderDecoder
from petlbench.models.clip import TOWERS, ClipDualEncoder
from petlbench.models.vse import VseDualEncoder
from petlbench.models.wrapper import BackboneWrapper, TowerWise
from petlbench.registry import SetupData


class LadderSide(nn.Module):
    """The side network of one tower."""

    def __init__(self, backbone: DualEncoder, tower: str, keep: list[int], r: int, gate_temperature: float):
        """The side of ``backbone``'s ``tower``, built on the backbone's device: its blocks are
        of the tower's block type, built from the tower's block config with every width / r."""
        super().__init__()
        blocks, shape = backbone.blocks()[tower], backbone.tower_shape(tower)
        d = shape.width
        if d % r or shape.mlp_width % r or (d // r) % shape.heads:
            raise ConfigError(f"lst: r={r} must divide the width {d} and MLP width {shape.mlp_width} into whole heads of {shape.heads}")
        side_config = copy.deepcopy(backbone.block_config(tower))
        side_config.hidden_size, side_config.intermediate_size = d // r, shape.mlp_width // r
        self.keep = keep
        self.temperature = gate_temperature
        with torch.device(backbone.device):  # the blocks' own constructors take no device
            self.down_in = nn.Linear(d, d // r)
            self.downs = nn.ModuleList(nn.Linear(d, d // r) for _ in keep)
            self.gates = nn.Parameter(torch.zeros(len(keep)))  # alpha_i = 0: g_i = 0.5
            self.blocks = nn.ModuleList(type(blocks[i])(side_config) for i in keep)
            self.norm = nn.LayerNorm(d // r, eps=shape.norm_eps)
            self.up = nn.Linear(d // r, d)

    def forward(self, hidden_states: tuple[torch.Tensor, ...], attention_mask: torch.Tensor | None) -> torch.Tensor:
        side = self.down_in(hidden_states[0])
        gates = torch.sigmoid(self.gates / self.temperature)
        for j, layer in enumerate(self.keep):
            side = gates[j] * side + (1 - gates[j]) * self.downs[j](hidden_states[layer + 1])
            side = self.blocks[j](side, attention_mask)
        return self.up(self.norm(side))


def _causal_padding_mask(token_mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, N, N) boolean mask, True where query i may attend key j: j <= i and j real."""
    n = token_mask.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=token_mask.device).tril()
    return (causal[None] & token_mask[:, None, :])[:, None]


class LadderSideTuned(TowerWise):
    """The CLIP backbone (frozen, no graph) plus one side network per tower."""

    def __init__(self, backbone: ClipDualEncoder, cfg: LSTConfig):
        super().__init__(backbone)
        towers = backbone.blocks()
        depth = len(towers["vision"])
        if any(not 0 <= i < len(b) for b in towers.values() for i in cfg.drop_layers):
            raise ConfigError(f"lst: drop_layers={cfg.drop_layers} must index the towers' layers (0..{depth - 1})")
        self.side = nn.ModuleDict(
            {
                tower: LadderSide(backbone, tower, [i for i in range(len(blocks)) if i not in cfg.drop_layers], cfg.r, cfg.gate_temperature)
                for tower, blocks in towers.items()
            }
        )

    def encode(self, tower: str, **inputs: torch.Tensor) -> torch.Tensor:
        states = self.backbone.frozen_states(tower, **inputs)
        mask = _causal_padding_mask(states.token_mask) if tower == "text" else None
        tokens = self.side[tower](states.hidden_states, mask)
        return self.backbone.tower_head(tower, tokens, pool_index=states.pool_index)


# --------------------------------------------------------------------------- pruned init


def fisher_importance(
    backbone: Backbone, data: SetupData, batch_size: int, n_batches: int, params: list[nn.Parameter] | None = None
) -> dict[nn.Parameter, torch.Tensor]:
    """Sum of squared gradients of the task's loss per backbone weight in ``params`` (default:
    every block's), over ``n_batches`` set-up batches of ``batch_size``."""
    if params is None:
        params = [p for blocks in backbone.blocks().values() for p in blocks.parameters()]
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    scores = {p: torch.zeros_like(p) for p in params}
    batches = data.batches(batch_size)
    try:
        with torch.enable_grad():
            for _ in range(n_batches):
                loss = data.loss(backbone, next(batches))
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for p, g in zip(params, grads, strict=True):
                    if g is not None:  # None: a tower the task's loss never reads (its rows all score zero)
                        scores[p] += g.square()
    finally:
        for p, flag in zip(params, saved, strict=True):
            p.requires_grad_(flag)
    return scores


def _row_scores(linear: nn.Linear, importance: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    rows = importance(linear.weight).sum(dim=1)
    return rows + importance(linear.bias) if linear.bias is not None else rows


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    return scores.topk(k).indices.sort().values


@dataclass(frozen=True)
class BlockLayout:
    """Where a transformer block keeps the matrices pruning reads, as attribute paths: one
    pruning routine serves every layout (CLIP's pre-LN block, BERT's post-LN layer)."""

    qkv: tuple[str, str, str]
    attn_out: str
    fc1: str
    fc2: str
    norms: tuple[str, ...]  # LayerNorms on the residual stream

    def __call__(self, block: nn.Module, path: str) -> nn.Module:
        return attrgetter(path)(block)


CLIP_BLOCK = BlockLayout(
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.out_proj", "mlp.fc1", "mlp.fc2", ("layer_norm1", "layer_norm2")
)


def prune_block_into(
    side: nn.Module, block: nn.Module, importance: Callable[[torch.Tensor], torch.Tensor], heads: int, layout: BlockLayout = CLIP_BLOCK
) -> None:
    """Copy the most important `1/r` of ``block``'s rows into ``side`` (same layout, every
    width divided by r). Q/K/V rows are chosen jointly, per head (heads keep their
    structure); each matrix's input columns follow the choice of the matrix feeding it;
    the residual-stream rows are those the block's residual writers (attention output, fc2)
    rank highest, and the residual LayerNorms keep them."""
    at = functools.partial(layout, block)
    side_at = functools.partial(layout, side)
    q = at(layout.qkv[0])
    head_dim, side_head_dim = q.out_features // heads, side_at(layout.qkv[0]).out_features // heads
    resid = _top(_row_scores(at(layout.attn_out), importance) + _row_scores(at(layout.fc2), importance), side_at(layout.fc2).out_features)
    qkv = sum(_row_scores(at(path), importance) for path in layout.qkv).view(heads, head_dim)
    per_head = qkv.topk(side_head_dim, dim=1).indices.sort(dim=1).values
    attn_rows = (per_head + torch.arange(heads, device=per_head.device)[:, None] * head_dim).flatten()
    mlp_rows = _top(_row_scores(at(layout.fc1), importance), side_at(layout.fc1).out_features)

    def copy_linear(path: str, rows: torch.Tensor, cols: torch.Tensor) -> None:
        dst, src = side_at(path), at(path)
        dst.weight.copy_(src.weight[rows][:, cols])
        if src.bias is not None:
            dst.bias.copy_(src.bias[rows])

    with torch.no_grad():
        for path in layout.qkv:
            copy_linear(path, attn_rows, resid)
        copy_linear(layout.attn_out, resid, attn_rows)
        copy_linear(layout.fc1, mlp_rows, resid)
        copy_linear(layout.fc2, resid, mlp_rows)
        for path in layout.norms:
            side_at(path).weight.copy_(at(path).weight[resid])
            side_at(path).bias.copy_(at(path).bias[resid])


def row_importance(
    backbone: Backbone, cfg: LSTConfig, data: SetupData, params: list[nn.Parameter] | None = None
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What ranks the backbone's rows for ``cfg.init``: squared gradients (Fisher, computed
    here on ``data`` for ``params``, default every block's), weight magnitude, or None for a
    random initialisation."""
    if cfg.init == "fisher":
        fisher = fisher_importance(backbone, data, cfg.fisher_batch_size, max(1, cfg.fisher_samples // cfg.fisher_batch_size), params)
        return fisher.__getitem__
    return torch.abs if cfg.init == "magnitude" else None


class LadderSideTunedVse(BackboneWrapper):
    """The frozen VSE backbone plus a ladder side network on its text tower."""

    frozen_eval = True

    def __init__(self, backbone: VseDualEncoder, cfg: LSTConfig):
        super().__init__(backbone)
        layers = backbone.blocks()["text"]
        if any(not 0 <= i < len(layers) for i in cfg.drop_layers):
            raise ConfigError(f"lst: drop_layers={cfg.drop_layers} must index the text tower's layers (0..{len(layers) - 1})")
        keep = [i for i in range(len(layers)) if i not in cfg.drop_layers]
        self.side = nn.ModuleDict({"text": LadderSide(backbone, "text", keep, cfg.r, cfg.gate_temperature)})

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        c5 = self.backbone.frozen_states("vision", pixel_values=pixel_values).hidden_states[-1]
        return self.backbone.tower_head("vision", c5.flatten(2).transpose(1, 2))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.backbone.frozen_states("text", input_ids=input_ids, attention_mask=attention_mask)
        # the text blocks' mask, in the form their attention implementation expects: the side
        # blocks are built from a copy of their config, so they expect the same form
        (mask,), _ = self.backbone.block_arguments("text", states.hidden_states[0], attention_mask)
        tokens = self.side["text"](states.hidden_states, mask)
        return self.backbone.tower_head("text", tokens, token_mask=states.token_mask)


BERT_LAYER = BlockLayout(
    ("attention.self.query", "attention.self.key", "attention.self.value"),
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
    ("attention.output.LayerNorm", "output.LayerNorm"),
)


@LST.builder("clip")
def build_clip(backbone: ClipDualEncoder, cfg: LSTConfig, data: SetupData) -> LadderSideTuned:
    """``data(batch_size)`` yields training batches for the Fisher ranking (setup: it runs
    before the measured steps, so it is outside the training memory figure)."""
    backbone.requires_grad_(False)
    model = LadderSideTuned(backbone, cfg)
    importance = row_importance(backbone, cfg, data)
    if importance is not None:
        for tower in TOWERS:
            side = model.side[tower]
            for j, layer in enumerate(side.keep):
                prune_block_into(side.blocks[j], backbone.blocks()[tower][layer], importance, backbone.tower_shape(tower).heads)
    return model


@LST.builder("vse")
def build_vse(backbone: VseDualEncoder, cfg: LSTConfig, data: SetupData) -> LadderSideTunedVse:
    """The text tower only (see the module doc)."""
    backbone.requires_grad_(False)
    model = LadderSideTunedVse(backbone, cfg)
    importance = row_importance(backbone, cfg, data)
    if importance is not None:
        side, layers, heads = model.side["text"], backbone.blocks()["text"], backbone.tower_shape("text").heads
        for j, layer in enumerate(side.keep):
            prune_block_into(side.blocks[j], layers[layer], importance, heads, BERT_LAYER)
    return model.train(backbone.training)


# --------------------------------------------------------------- the encoder-decoder form


class LadderStack(nn.Module):
    """The side network beside one stack of an encoder-decoder (the LST code's T5 form):
    ``s = Down_in(h_0)``; after each kept backbone block i, ``s = g_i s + (1 - g_i)
    Down_i(h_i)``, ``g_i = sigmoid(alpha_i / T)``, then side block i (the stack's kind with
    every width / r; the first owns the side's relative position table); a side norm and
    dropout at the end. A decoder's side blocks attend to the side encoder's output. One gate
    per backbone block, as the LST code allocates them (a dropped block's gets a zero
    gradient)."""

    def __init__(self, backbone: EncoderDecoder, tower: str, keep: list[int], r: int, gate_temperature: float):
        super().__init__()
        shape = backbone.tower_shape(tower)
        d, side = shape.width, shape.width // r
        self.keep, self.temperature = keep, gate_temperature
        with torch.device(backbone.device):
            self.down_in = nn.Linear(d, side)
            self.downs = nn.ModuleList(nn.Linear(d, side) for _ in keep)
            self.gates = nn.Parameter(torch.zeros(shape.depth))  # alpha_i = 0: g_i = 0.5
            self.dropout = nn.Dropout(shape.dropout)
        self.blocks = nn.ModuleList(backbone.new_block(tower, r, positions=j == 0) for j in range(len(keep)))
        self.norm = backbone.new_norm(side)

    def run(self, walk: BlockWalk, blocks: nn.ModuleList, cross: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's ``blocks`` walked under ``no_grad`` with this side beside them, block
        by block as the LST code runs them (a dropped block's output is gone once the next
        block has read it): (the backbone's last-block output, the side's output)."""
        side_walk = walk.fresh()
        hidden = walk.tokens
        side = self.down_in(hidden)
        gates = torch.sigmoid(self.gates / self.temperature)
        ladders = dict(zip(self.keep, zip(self.downs, self.blocks, strict=True), strict=True))
        for i, block in enumerate(blocks):
            with torch.no_grad():
                hidden = walk(block, hidden)
            if i in ladders:
                down, side_block = ladders[i]
                side = gates[i] * side + (1 - gates[i]) * down(hidden)
                side = side_walk(side_block, side, cross)
        return hidden, self.dropout(self.norm(side))


class LadderSideEncoderDecoder(nn.Module):
    """The frozen encoder-decoder (both stacks walked under ``no_grad``) with a ladder side
    network beside each stack; the side decoder's output goes through ``Up`` (side width ->
    d) into the frozen language-model head, with the backbone's scaling before it. The
    backbone decoder's blocks run for the ladders; its final norm does not (nothing reads
    it: the LST code computes it and discards it)."""

    def __init__(self, backbone: EncoderDecoder, cfg: LSTConfig):
        super().__init__()
        self.backbone = backbone
        stacks = backbone.blocks()
        for tower in stacks:
            shape = backbone.tower_shape(tower)
            if shape.width % cfg.r or shape.mlp_width % cfg.r or shape.head_width % cfg.r:
                raise ConfigError(
                    f"lst: r={cfg.r} must divide the {tower}'s width {shape.width}, feed-forward width {shape.mlp_width} "
                    f"and head width {shape.head_width}"
                )
        self.side = nn.ModuleDict(
            {
                tower: LadderStack(backbone, tower, kept_layers("lst", cfg.drop_layers, len(blocks)), cfg.r, cfg.gate_temperature)
                for tower, blocks in stacks.items()
            }
        )
        d = backbone.tower_shape("decoder").width
        with torch.device(backbone.device):
            self.up = nn.Linear(d // cfg.r, d)
        for projection in [self.up, *(layer for stack in self.side.values() for layer in (stack.down_in, *stack.downs))]:
            lst_code_init(projection)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SideEncoded:
        with torch.no_grad():
            walk = self.backbone.walk("encoder", input_ids=input_ids, attention_mask=attention_mask)
        hidden, side = self.side["encoder"].run(walk, self.backbone.blocks()["encoder"])
        with torch.no_grad():
            states = self.backbone.finish("encoder", hidden)
        return SideEncoded(Encoded(states, attention_mask), side)

    def decode(self, decoder_input_ids: torch.Tensor, encoded: SideEncoded) -> torch.Tensor:
        with torch.no_grad():
            walk = self.backbone.walk(
                "decoder", decoder_input_ids=decoder_input_ids, states=encoded.backbone.states, mask=encoded.backbone.mask
            )
        _, side = self.side["decoder"].run(walk, self.backbone.blocks()["decoder"], cross=encoded.side)
        return self.backbone.head_logits(self.up(side))


# The LST code's pruning chain on T5 ("fisher-v2", no residual structure): per block, in
# order, a norm (a path: it keeps the current selection) or a group of linear layers (a
# tuple: their input columns are the current selection; their rows are ranked together and
# the kept ones become the selection).
_T5_SELF = ("layer.0.layer_norm", tuple(f"layer.0.SelfAttention.{p}" for p in "qkv"), ("layer.0.SelfAttention.o",))
_T5_CROSS = ("layer.1.layer_norm", tuple(f"layer.1.EncDecAttention.{p}" for p in "qkv"), ("layer.1.EncDecAttention.o",))
T5_CHAIN = {
    "encoder": (*_T5_SELF, "layer.1.layer_norm", ("layer.1.DenseReluDense.wi",), ("layer.1.DenseReluDense.wo",)),
    "decoder": (*_T5_SELF, *_T5_CROSS, "layer.2.layer_norm", ("layer.2.DenseReluDense.wi",), ("layer.2.DenseReluDense.wo",)),
}
T5_POSITION_TABLE = "layer.0.SelfAttention.relative_attention_bias"


def _kept_as_the_lst_code_keeps(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The indices of the ``k`` highest ``scores``, in the order the LST code keeps them: it
    removes the lowest ``n - k`` and keeps ``list(set(range(n)) - set(removed))``, CPython's
    set order, which is not ascending once ``n`` outgrows the set's table. The order matters:
    the kept query/key/value rows are cut into heads in it, and every residual writer's kept
    rows land on the residual positions in it."""
    if scores.device.type == "meta":  # a model built for its shapes alone has no values to order by
        return scores.topk(k).indices
    n = len(scores)
    removed = scores.argsort()[: n - k].tolist()
    return torch.tensor(list(set(range(n)) - set(removed)), device=scores.device)


def chain_selection(
    backbone: EncoderDecoder, importance: Callable[[torch.Tensor], torch.Tensor], r: int
) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor | None]]:
    """The LST code's T5 pruning, as (kept rows, kept input columns or None for a norm) per
    module of every block and per final norm. The first selection ranks the token
    embeddings' columns; then, block after block through the encoder and on into the
    decoder, each group of linears is cut to the selection's columns, its rows ranked by
    the L1 norm of the element-wise product of its members' importances, and the top 1/r
    kept become the selection, in the LST code's order (so the residual stream's selection
    changes at every writer);
    a norm keeps the selection it meets. A decoder's cross-attention keys and values read
    the decoder stream's selection, as the chain runs."""
    selection = _kept_as_the_lst_code_keeps(
        importance(backbone.token_embeddings().weight).abs().sum(dim=0), backbone.tower_shape("encoder").width // r
    )
    chosen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for (tower, blocks), final in zip(backbone.blocks().items(), backbone.final_norms(), strict=True):
        for block in blocks:
            for step in T5_CHAIN[tower]:
                if isinstance(step, str):
                    chosen[attrgetter(step)(block)] = (selection, None)
                    continue
                linears = [attrgetter(path)(block) for path in step]
                columns = selection
                product = functools.reduce(torch.mul, (importance(linear.weight)[:, columns] for linear in linears))
                selection = _kept_as_the_lst_code_keeps(product.abs().sum(dim=1), linears[0].out_features // r)
                chosen.update((linear, (selection, columns)) for linear in linears)
        chosen[final] = (selection, None)
    return chosen


def copy_chain_selection(
    side: nn.Module, block: nn.Module, tower: str, chosen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor | None]]
) -> None:
    """``block``'s pruned weights (`chain_selection`) into the side block of the same kind."""
    with torch.no_grad():
        for step in T5_CHAIN[tower]:
            for path in (step,) if isinstance(step, str) else step:
                source, target = attrgetter(path)(block), attrgetter(path)(side)
                rows, columns = chosen[source]
                target.weight.copy_(source.weight[rows] if columns is None else source.weight[rows][:, columns])


@LST.builder("t5")
def build_t5(backbone: EncoderDecoder, cfg: LSTConfig, data: SetupData) -> LadderSideEncoderDecoder:
    """Side blocks from the pruned backbone blocks of the same index (`chain_selection`), the
    side's position table copied whole from the stack's first block, the side's final norm
    from the pruned final norm; the importances from squared gradients of the task's loss
    over the token embeddings, every block and the final norms (or the weights' magnitude)."""
    backbone.requires_grad_(False)
    model = LadderSideEncoderDecoder(backbone, cfg)
    params = [backbone.token_embeddings().weight]
    params += [p for module in [*backbone.blocks().values(), *backbone.final_norms()] for p in module.parameters()]
    importance = row_importance(backbone, cfg, data, params)
    if importance is not None:
        chosen = chain_selection(backbone, importance, cfg.r)
        for (tower, blocks), final in zip(backbone.blocks().items(), backbone.final_norms(), strict=True):
            side = model.side[tower]
            for j, layer in enumerate(side.keep):
                copy_chain_selection(side.blocks[j], blocks[layer], tower, chosen)
            with torch.no_grad():
                attrgetter(T5_POSITION_TABLE)(side.blocks[0]).weight.copy_(attrgetter(T5_POSITION_TABLE)(blocks[0]).weight)
                side.norm.weight.copy_(final.weight[chosen[final][0]])
    return model.train(backbone.training)
