"""What each method is, without its implementation: its config (the options a method YAML
sets, with their defaults and rules), its display name and group in paper tables, its
learning-rate grid, the backbone families it applies to and what it keeps of each for
backward, and the module that implements it. Nothing here imports torch: `petlbench list`,
config validation and the reports read these specs alone, and a method's module (which
adds its builders, `MethodSpec.builder`) is imported only when a model is built."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from petlbench.config import HASHED_UNLESS_DEFAULT, MethodConfig, rule
from petlbench.registry import EVERY_BLOCK, NOTHING, Keeps, last_blocks, register

BOTH = ("clip", "vse")  # both dual-encoder families
ALL = (*BOTH, "t5")  # every backbone family


def on(families: tuple[str, ...], keeps: Keeps) -> dict[str, Keeps]:
    return dict.fromkeys(families, keeps)


# ----------------------------------------------------------------------------- baselines


@dataclass
class FullConfig(MethodConfig):
    pass


@dataclass
class LinearConfig(MethodConfig):
    pass


@dataclass
class PartialConfig(MethodConfig):
    k: int = field(default=1, metadata=rule("trainable blocks at the top of each tower (at most the tower depth)", ge=1, le=10_000))


FULL = register(
    "full", FullConfig, "Full fine-tuning", "baseline", "full", on(ALL, EVERY_BLOCK), defines_head=True, lr_grid=(1e-4, 3e-4, 1e-3)
)
LINEAR = register(
    "linear",
    LinearConfig,
    "Linear probe",
    "baseline",
    "linear",
    on(BOTH, NOTHING),
    defines_head=True,
    lr_grid=(1e-2, 3e-2, 1e-1),
    why_not="it trains the projections into a joint embedding space, which only a dual encoder has",
)
PARTIAL = register(
    "partial",
    PartialConfig,
    "Partial fine-tuning",
    "baseline",
    "partial",
    {
        "clip": last_blocks("k"),
        # the gradient that reaches the encoder's last blocks crosses every decoder block's cross-attention
        "t5": Keeps(
            lambda cfg, depth, tower: range(depth - cfg.k if tower == "encoder" else 0, depth),
            "the encoder's last `k` blocks and every decoder block (the gradient reaches the encoder through their cross-attention)",
        ),
    },
    defines_head=True,
    lr_grid=(3e-4, 1e-3, 3e-3),
)


# ---------------------------------------------------- methods whose backward crosses the backbone


@dataclass
class AdapterConfig(MethodConfig):
    """ReLU is the default for both placements, so that they differ in placement only: it
    is what AdapterHub's Pfeiffer configuration and AdaptFormer (the usual ViT adapter
    baseline) use; GELU is the CLIP-family alternative."""

    r: int = field(default=8, metadata=rule("reduction factor: the bottleneck width is the block width // r", ge=1, le=65536))
    placement: Literal["houlsby", "pfeiffer"] = field(
        default="houlsby", metadata={"help": "'houlsby': after the attention and the MLP sub-layers; 'pfeiffer': after the MLP only"}
    )
    activation: Literal["relu", "gelu", "gelu_new"] = field(
        default="relu", metadata={"help": "non-linearity inside the bottleneck (gelu_new: GELU's tanh approximation, the LST code's)"}
    )
    # Options added after records existed: in a run's hash only where not at their default.
    init: Literal["zero-up", "normal"] = field(
        default="zero-up",
        metadata={
            "help": "zero-up: the up-projection starts at zero (the model starts as the backbone); "
            "normal: every weight N(0, 0.01), biases 0 (the LST code)",
            **HASHED_UNLESS_DEFAULT,
        },
    )
    train_norms: bool = field(
        default=False,
        metadata={"help": "every normalisation layer of the backbone trains too (the LST code's adapters)", **HASHED_UNLESS_DEFAULT},
    )


@dataclass
class BitFitConfig(MethodConfig):
    pass


@dataclass
class LoraConfig(MethodConfig):
    r: int = field(default=8, metadata=rule("rank of the update B A", ge=1, le=65536))
    alpha: float = field(default=16.0, metadata=rule("the update is scaled by alpha / r", gt=0, le=1e6))
    dropout: float = field(default=0.0, metadata=rule("dropout on the input of the low-rank branch", ge=0, lt=1))
    targets: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata=rule(
            "names of the blocks' linear layers to adapt (q_proj, k_proj, v_proj, out_proj, fc1, fc2: a family maps them to its own)",
            min_items=1,
            nonempty=True,
        ),
    )
    train_biases: bool = field(  # added after records existed: in a run's hash only where not at its default
        default=False,
        metadata={
            "help": "every bias trains too, zero-initialised ones added where the backbone has none, and every parameter named "
            "'*bias*' (T5's relative position tables): the LST code's LoRA configuration",
            **HASHED_UNLESS_DEFAULT,
        },
    )


@dataclass
class PromptConfig(MethodConfig):
    # 8, the low end of the usual 8..16 (docs/methods.md, `prompt`): prompts lengthen every
    # sequence of both towers (37 vision and 40 text tokens on the shipped model, 50 and 77
    # on ViT-B/32), and the activations kept for backward grow with it; the validation sweep
    # may ask for more.
    prompts: int = field(default=8, metadata=rule("prompt tokens per tower and set (p)", ge=1, le=10_000))
    depth: Literal["deep", "shallow"] = field(
        default="deep", metadata={"help": "deep: a fresh set of prompts before every block; shallow: one set before the first block"}
    )


CLIP_T5 = ("clip", "t5")
ADAPTER = register("adapter", AdapterConfig, "Adapter", "backbone", "adapter", on(CLIP_T5, EVERY_BLOCK), lr_grid=(1e-3, 3e-3, 1e-2))
BITFIT = register("bitfit", BitFitConfig, "BitFit", "backbone", "bitfit", on(CLIP_T5, EVERY_BLOCK), lr_grid=(3e-3, 1e-2, 3e-2))
LORA = register("lora", LoraConfig, "LoRA", "backbone", "lora", on(ALL, EVERY_BLOCK), lr_grid=(1e-3, 3e-3, 1e-2))
LORA_FA = register("lora-fa", LoraConfig, "LoRA-FA", "backbone", "lora_fa", on(ALL, EVERY_BLOCK), lr_grid=(3e-3, 1e-2, 3e-2))
PROMPT = register(
    "prompt",
    PromptConfig,
    "Prompt tuning",
    "backbone",
    "prompt",
    on(CLIP_T5, EVERY_BLOCK),
    lr_grid=(3e-3, 1e-2, 3e-2),
    refuses=lambda cfg, family: (
        f"prompt: depth {cfg.depth!r} on an encoder-decoder: prompt tuning there prepends one set to the encoder's input "
        "(depth shallow, as Lester et al. and the LST code)"
        if family == "t5" and cfg.depth != "shallow"
        else None
    ),
)


# ---------------------------------------------------------------- memory-efficient methods


@dataclass
class LSTConfig(MethodConfig):
    r: int = field(
        default=4, metadata=rule("width reduction of the side network (paper: 8 for NLP, 4 for vision-language)", ge=1, le=65536)
    )
    drop_layers: list[int] = field(
        default_factory=list,
        metadata=rule("backbone layers with no ladder and no side block (paper, 12 layers: [0, 4, 8])", ge=0, le=10_000, min_items=0),
    )
    init: Literal["fisher", "magnitude", "random"] = field(
        default="fisher",
        metadata={"help": "side-block initialisation: pruned backbone rows ranked by Fisher importance or weight magnitude, or random"},
    )
    fisher_samples: int = field(
        default=512, metadata=rule("training samples whose squared gradients rank the rows (init=fisher)", ge=1, le=10**8)
    )
    fisher_batch_size: int = field(
        default=32,
        metadata=rule(
            "examples per batch while ranking (init=fisher): at least 2 on a dual encoder, whose contrastive loss over one pair is "
            "constant; the LST code's T5 form takes them one by one (1)",
            ge=1,
            le=2**20,
        ),
    )
    gate_temperature: float = field(default=0.1, metadata=rule("T in the ladder gate sigmoid(alpha / T)", gt=0, le=1e6))


def tapped_layers_field() -> Any:
    """``drop_layers`` of the methods whose encoder-decoder form taps the blocks' outputs
    (SHERL's T5 code, and UniPT built the same way): added after records existed."""
    return field(
        default_factory=list,
        metadata={
            **rule(
                "encoder-decoder form only: blocks whose outputs are not tapped (the authors' T5 code, 12 blocks: [0, 4, 8])",
                ge=0,
                le=10_000,
                min_items=0,
            ),
            **HASHED_UNLESS_DEFAULT,
        },
    )


def taps_every_layer_off_t5(name: str) -> Callable[[Any, str], str | None]:
    """The `refuses` rule of those methods: their dual-encoder forms tap every layer."""
    return lambda cfg, family: (
        f"{name}: drop_layers {cfg.drop_layers} applies to the encoder-decoder form; the dual-encoder forms tap every layer"
        if cfg.drop_layers and family != "t5"
        else None
    )


@dataclass
class UniPTConfig(MethodConfig):
    downsample: int = field(
        default=1,
        metadata=rule(
            "r_d: UniPT works in width m = embedding width / r_d (1 in the authors' CLIP code, 2 in their VSE setting; "
            "on T5, m = d_model / r_d)",
            ge=1,
            le=65536,
        ),
    )
    drop_layers: list[int] = tapped_layers_field()


@dataclass
class DTLConfig(MethodConfig):
    r: int = field(default=2, metadata=rule("rank of each block's side map B_j A_j (the authors' default: 2)", ge=1, le=65536))
    late: float = field(
        default=0.5,
        metadata=rule(
            "fraction of each tower's blocks, from the top, after which the side path is added back: the last "
            "max(1, floor(late * depth + 1/2)) blocks (0.5: the last half, blocks 6..11 of ViT-B's 12)",
            gt=0,
            le=1,
        ),
    )
    beta: float = field(default=100.0, metadata=rule("swish sharpness: swish(R) = R * sigmoid(beta * R)", gt=0, le=1e6))


@dataclass
class DTLPlusConfig(DTLConfig):
    conv_kernel: int = field(
        default=3, metadata=rule("side of the shared depthwise conv on the vision patch grid (odd; the authors: 3)", ge=1, le=99)
    )


def first_injection(cfg: DTLConfig, depth: int) -> int:
    """The index of the first block after which DTL's side path is added back (the late
    blocks of docs/methods.md, `dtl`, as a suffix of the blocks; half-way cases round up,
    not to even)."""
    return depth - max(1, math.floor(cfg.late * depth + 0.5))


@dataclass
class SherlConfig(MethodConfig):
    downsample: int = field(
        default=1,
        metadata=rule(
            "m = joint width / downsample (CLIP; VSE halves it again, as the authors' VSE code); on T5, m = d_model / downsample "
            "(the authors' T5 launcher leaves it at 4)",
            ge=1,
            le=65536,
        ),
    )
    pool_gate: bool = field(
        default=False, metadata={"help": "scale each tap's pooled token by sigmoid(gamma_i / 0.1), gamma_i = 1 (the MSR-VTT script)"}
    )
    drop_layers: list[int] = tapped_layers_field()


@dataclass
class ResTuningConfig(MethodConfig):
    bottleneck: int = field(default=32, metadata=rule("width l of every residual adapter (the code's default: 32)", ge=1, le=65536))
    zero_init_last: bool = field(default=False, metadata={"help": "zero the up-projections of the last block's two adapters"})


LST = register(
    "lst",
    LSTConfig,
    "LST",
    "memory-efficient",
    "lst",
    on(ALL, NOTHING),
    needs_data=True,
    # the ranking only picks the side network's initial values; a random init builds the same shapes
    without_data=lambda cfg: dataclasses.replace(cfg, init="random"),
    setup_batch=lambda cfg: cfg.fisher_batch_size if cfg.init == "fisher" else None,
    lr_grid=(1e-3, 3e-3, 1e-2),
    # checked whatever `init` says, so that a dry run (which sets up without data) finds it too
    refuses=lambda cfg, family: (
        f"lst: fisher_batch_size={cfg.fisher_batch_size} on a dual encoder, whose contrastive loss over one pair is constant "
        "(every gradient zero): its Fisher ranking needs 2 or more"
        if family != "t5" and cfg.fisher_batch_size < 2
        else None
    ),
)
# SHERL's T5 form (and UniPT's, built the same way) runs the decoder's last block with autograd on its output.
LAST_DECODER_BLOCK = Keeps(
    lambda cfg, depth, tower: range(depth - 1, depth) if tower == "decoder" else range(0),
    "the decoder's last block (it runs with autograd on the side output)",
)
UNIPT = register(
    "unipt",
    UniPTConfig,
    "UniPT",
    "memory-efficient",
    "unipt",
    {**on(BOTH, NOTHING), "t5": LAST_DECODER_BLOCK},
    lr_grid=(3e-3, 1e-2, 3e-2),
    refuses=taps_every_layer_off_t5("unipt"),
)
LATE_BLOCKS = Keeps(lambda cfg, depth, tower: range(first_injection(cfg, depth) + 1, depth), "the blocks after the first injection")
DTL = register("dtl", DTLConfig, "DTL", "memory-efficient", "dtl", {"clip": LATE_BLOCKS}, lr_grid=(3e-3, 1e-2, 3e-2))
DTL_PLUS = register("dtl-plus", DTLPlusConfig, "DTL+", "memory-efficient", "dtl", {"clip": LATE_BLOCKS}, lr_grid=(3e-3, 1e-2, 3e-2))
SHERL = register(
    "sherl",
    SherlConfig,
    "SHERL",
    "memory-efficient",
    "sherl",
    {
        "clip": NOTHING,
        "vse": Keeps(lambda cfg, depth, tower: range(depth - 1, depth), "the last block of each tower"),
        "t5": LAST_DECODER_BLOCK,
    },
    lr_grid=(3e-3, 1e-2, 3e-2),
    refuses=taps_every_layer_off_t5("sherl"),
)
RES_TUNING = register(
    "res-tuning-bypass",
    ResTuningConfig,
    "Res-Tuning-Bypass",
    "memory-efficient",
    "res_tuning",
    {"clip": NOTHING},
    lr_grid=(1e-3, 3e-3, 1e-2),
)
