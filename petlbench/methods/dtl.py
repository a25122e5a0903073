"""DTL, Disentangled Transfer Learning (Fu et al., AAAI 2024), on both towers of CLIP.

A compact side path reads every block's input: ``u_j = B_j A_j x_j`` (rank ``r``, no bias,
no activation; ``A`` Kaiming-uniform, ``B`` zero). Its running sum ``R_j = sum_{k<=j} u_k``
is never reset; after each of the late blocks the stream becomes ``x + swish(R_j)`` with
``swish(R) = R * sigmoid(beta * R)``. With ``B = 0`` the model starts exactly at the
backbone.

Memory: the blocks up to (and including) the first injection run under ``no_grad`` (their
``u_j`` is computed with grad on the detached inputs), so the gradient crosses only the
blocks after the first injection. Each tower keeps its own final norm, pooling and
projection (frozen, autograd on).

DTL+ (the method `dtl-plus`, named apart as in the paper): on the vision tower, one depthwise
``k x k`` convolution (groups = width, no bias, 'same' padding) shared by every injection
filters ``swish(R)`` over the patch grid; the CLS position passes through unfiltered. The
grid is the input's size over the model's patch size, never a constant. The text tower
has no grid and stays plain DTL.

Decided where the reading leaves it open: the late blocks' ``u_j`` reads the stream with
its gradient (the stream after an injection is no longer a backbone feature, and its inputs
count among what backward keeps: docs/methods.md, `dtl`); the convolution keeps PyTorch's
default init (it filters a zero signal at step 0, so the start is exact either way).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from petlbench.config import ConfigError
from petlbench.methods.specs import DTL, DTL_PLUS, DTLConfig, DTLPlusConfig, first_injection
from petlbench.models.clip import ClipDualEncoder
from petlbench.models.wrapper import TokenWalker


class LowRankPath(nn.Module):
    """``u_j = B_j A_j x_j`` for every block ``j`` of one tower, and the injection rule."""

    def __init__(self, depth: int, width: int, r: int):
        super().__init__()
        self.down = nn.ModuleList(nn.Linear(width, r, bias=False) for _ in range(depth))
        self.up = nn.ModuleList(nn.Linear(r, width, bias=False) for _ in range(depth))
        for down, up in zip(self.down, self.up, strict=True):
            nn.init.kaiming_uniform_(down.weight, a=math.sqrt(5))
            nn.init.zeros_(up.weight)

    def forward(self, j: int, x: torch.Tensor) -> torch.Tensor:
        return self.up[j](self.down[j](x))


class PatchGridConv(nn.Module):
    """DTL+'s depthwise conv over the patch grid of (B, 1 + H*W, d) tokens; CLS passes."""

    def __init__(self, width: int, kernel: int, patch_size: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, kernel, padding="same", groups=width, bias=False)
        self.patch_size = patch_size

    def forward(self, tokens: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        h, w = (side // self.patch_size for side in image_size)
        cls, patches = tokens[:, :1], tokens[:, 1:]
        if patches.shape[1] != h * w:
            raise ConfigError(f"dtl-plus: {patches.shape[1]} patch tokens do not form the {h}x{w} grid of a {image_size} input")
        grid = patches.transpose(1, 2).reshape(len(tokens), -1, h, w)
        return torch.cat([cls, self.conv(grid).flatten(2).transpose(1, 2)], dim=1)


class DisentangledClip(TokenWalker):
    """The frozen CLIP whose towers walk their blocks with the DTL side path beside them."""

    def __init__(self, backbone: ClipDualEncoder, cfg: DTLConfig, conv_kernel: int | None = None):
        super().__init__(backbone)
        self.beta = cfg.beta
        self.paths = nn.ModuleDict()
        self.first = {}
        for tower, blocks in backbone.blocks().items():
            self.paths[tower] = LowRankPath(len(blocks), backbone.tower_shape(tower).width, cfg.r)
            self.first[tower] = first_injection(cfg, len(blocks))
        vision = backbone.tower_shape("vision")
        self.grid = PatchGridConv(vision.width, conv_kernel, vision.patch_size) if conv_kernel else None

    def _swish(self, running: torch.Tensor) -> torch.Tensor:
        return running * torch.sigmoid(self.beta * running)

    def tokens(self, tower: str, **inputs: torch.Tensor) -> torch.Tensor:
        """``tower``'s last-block output (B, N, d) with the side path injected."""
        path, first = self.paths[tower], self.first[tower]
        with torch.no_grad():
            x = self.backbone.block_input(tower, **inputs)
        args, kwargs = self.backbone.block_arguments(tower, x, inputs.get("attention_mask"))
        running = None
        for j, block in enumerate(self.backbone.blocks()[tower]):
            u = path(j, x)
            running = u if running is None else running + u
            with torch.set_grad_enabled(torch.is_grad_enabled() and j > first):
                x = block(x, *args, **kwargs)
            if j >= first:
                side = self._swish(running)
                if self.grid is not None and tower == "vision":
                    side = self.grid(side, tuple(inputs["pixel_values"].shape[-2:]))
                x = x + side
        return x


@DTL.builder("clip")
def build(backbone: ClipDualEncoder, cfg: DTLConfig) -> DisentangledClip:
    backbone.requires_grad_(False)
    with torch.device(backbone.device):
        return DisentangledClip(backbone, cfg)


@DTL_PLUS.builder("clip")
def build_plus(backbone: ClipDualEncoder, cfg: DTLPlusConfig) -> DisentangledClip:
    if cfg.conv_kernel % 2 == 0:
        raise ConfigError(f"dtl-plus: conv_kernel={cfg.conv_kernel} must be odd ('same' padding centres the kernel on each patch)")
    backbone.requires_grad_(False)
    with torch.device(backbone.device):
        return DisentangledClip(backbone, cfg, cfg.conv_kernel)
