"""Poseur's network (Mao et al., ECCV 2022; `aim-uofa/Poseur`) in plain PyTorch: backbone,
ChannelMapper neck, coarse FC proposal, keypoint queries, EMSDA decoder layers with iterative
refinement, and the per-joint score from the predicted sigma.

Upstream names, for the reader (all under `mmpose/models/` of aim-uofa/Poseur):
`heads/poseur_head.py` `PoseurHead.forward`, `utils/transformer.py` `PoseurTransformer.forward`,
`DeformableDetrTransformerDecoder`, `DetrTransformerDecoderLayer_grouped`, and
`mmpose/ops/multi_scale_deform_attn.py` `MultiScaleDeformableAttention_post_value` (EMSDA: the
value is sampled un-projected and each head's samples are projected afterwards). Deformable
sampling is mmcv's `multi_scale_deformable_attn_pytorch` (`F.grid_sample`), with each level
sampled once for all heads instead of once per repeated head (the same numbers).

Backbones are torchvision's ResNet-50 and MobileNetV2 (timm is not a distill dependency):
mmpose's `ResNet` has torchvision's layout and upstream initialises it from
`torchvision://resnet50`; mmpose's `MobileNetV2` is the same network under other key names
(`teachers.poseur.map_upstream_keys` renames them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v2, resnet50

__all__ = ["ARCHS", "EMSDA", "PoseurArch", "PoseurNet", "PoseurOutput", "inverse_sigmoid"]

NUM_JOINTS = 17


@dataclass(frozen=True)
class PoseurArch:
    """One configuration (upstream's configs/poseur/coco/*.py)."""

    backbone: str  # "resnet50" | "mobilenetv2"
    width_mult: float  # MobileNetV2 widen_factor (1.0 upstream)
    in_channels: tuple[int, ...]  # the neck's inputs: backbone stage widths
    embed_dims: int = 256
    num_heads: int = 8
    num_levels: int = 4
    num_points: int = 4
    num_layers: int = 6
    feedforward: int = 1024
    num_reg_fcs: int = 2
    gn_groups: int = 32
    input_size: tuple[int, int] = (192, 256)  # (width, height), upstream's image_size


ARCHS: dict[str, PoseurArch] = {
    # poseur_res50_coco_256x192.py
    "resnet50": PoseurArch("resnet50", 1.0, (256, 512, 1024, 2048)),
    # poseur_mobilenetv2_coco_256x192.py (out_indices (1, 2, 4, 7))
    "mobilenetv2": PoseurArch("mobilenetv2", 1.0, (24, 32, 96, 1280)),
    # random weights for tests: MobileNetV2 ×0.25, 32-d queries, 2 decoder layers, 64×48 crops
    "tiny": PoseurArch("mobilenetv2", 0.25, (8, 8, 24, 1280), embed_dims=32, num_points=2,
                       num_layers=2, feedforward=64, gn_groups=8, input_size=(48, 64)),
}

# torchvision MobileNetV2 `features` indices that end mmpose's layer2, layer3, layer5, conv2
_MOBILENET_OUTS = (3, 6, 13, 18)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Upstream's `inverse_sigmoid`: clamped to [0, 1] first."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class Backbone(nn.Module):
    """Four feature maps, strides 4, 8, 16, 32."""

    def __init__(self, arch: PoseurArch) -> None:
        super().__init__()
        self.kind = arch.backbone
        if arch.backbone == "resnet50":
            net = resnet50(weights=None)
            self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
            self.layer1, self.layer2, self.layer3, self.layer4 = (
                net.layer1, net.layer2, net.layer3, net.layer4)
        else:
            self.features = mobilenet_v2(weights=None, width_mult=arch.width_mult).features

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        if self.kind == "resnet50":
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
                x = layer(x)
                outs.append(x)
            return outs
        for i, block in enumerate(self.features):
            x = block(x)
            if i in _MOBILENET_OUTS:
                outs.append(x)
        return outs


class ChannelMapper(nn.Module):
    """mmdet's ChannelMapper as upstream configures it: a bias-free 1×1 conv and GroupNorm per
    level, no activation."""

    def __init__(self, arch: PoseurArch) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, arch.embed_dims, 1, bias=False)
                                   for c in arch.in_channels)
        self.norms = nn.ModuleList(nn.GroupNorm(arch.gn_groups, arch.embed_dims)
                                   for _ in arch.in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [n(c(f)) for f, c, n in zip(feats, self.convs, self.norms, strict=True)]


class NormLinear(nn.Linear):
    """Upstream's `Linear_with_norm(norm=True)`: x·Wᵀ / ‖x‖ + b."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.matmul(self.weight.t()) / torch.norm(x, dim=-1, keepdim=True) + self.bias


def sine_embed_2d(h: int, w: int, feats: int, device: torch.device) -> torch.Tensor:
    """mmcv's SinePositionalEncoding(normalize=True, offset=-0.5) of an unpadded (h, w) map:
    (1, 2·feats, h, w), y channels first."""
    scale, eps = 2 * math.pi, 1e-6
    y = (torch.arange(1, h + 1, dtype=torch.float32, device=device) - 0.5) / (h + eps) * scale
    x = (torch.arange(1, w + 1, dtype=torch.float32, device=device) - 0.5) / (w + eps) * scale
    dim_t = torch.arange(feats, dtype=torch.float32, device=device)
    dim_t = 10000 ** (2 * (dim_t // 2) / feats)

    def embed(v: torch.Tensor) -> torch.Tensor:  # (n,) → (n, feats), sin/cos interleaved
        p = v[:, None] / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = embed(y)[:, None, :].expand(h, w, feats)
    pos_x = embed(x)[None, :, :].expand(h, w, feats)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)[None]


def proposal_pos_embed(points: torch.Tensor, embed_dims: int) -> torch.Tensor:
    """Upstream's `get_proposal_pos_embed` (init_q_sigmoid False): (B, K, 2) → (B, K, C)."""
    feats = embed_dims // 2
    dim_t = torch.arange(feats, dtype=torch.float32, device=points.device)
    dim_t = 10000 ** (2 * (dim_t // 2) / feats)
    pos = points[:, :, :, None] * (2 * math.pi) / dim_t
    return torch.stack((pos[:, :, :, 0::2].sin(), pos[:, :, :, 1::2].cos()), dim=4).flatten(2)


class EMSDA(nn.Module):
    """Efficient multi-scale deformable attention (`MultiScaleDeformableAttention_post_value`):
    every head samples the full, un-projected value at its points; the weighted samples of head
    h are then projected by its own C → C/heads matrix (`value_proj_weight`)."""

    def __init__(self, arch: PoseurArch) -> None:
        super().__init__()
        c, h, lv, p = arch.embed_dims, arch.num_heads, arch.num_levels, arch.num_points
        self.num_heads, self.num_levels, self.num_points = h, lv, p
        self.sampling_offsets = nn.Linear(c, h * lv * p * 2)
        self.attention_weights = nn.Linear(c, h * lv * p)
        self.value_proj_weight = nn.Parameter(torch.empty(h * c, c // h))
        self.value_proj_bias = nn.Parameter(torch.empty(h, c // h))
        self.output_proj = nn.Linear(c, c)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Upstream's init_weights (the value projection as nn.Embedding: N(0, 1))."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
        grid = grid.repeat(1, self.num_levels, self.num_points, 1)
        for i in range(self.num_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)
        nn.init.normal_(self.value_proj_weight)
        nn.init.normal_(self.value_proj_bias)

    def forward(self, query: torch.Tensor, value: list[torch.Tensor],
                reference: torch.Tensor) -> torch.Tensor:
        """query (B, K, C) with its position added; value: per level (B, C, H_l, W_l);
        reference (B, K, 2) normalised x, y → (B, K, C), before the residual."""
        b, k, c = query.shape
        h, lv, p = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(b, k, h, lv, p, 2)
        weights = self.attention_weights(query).view(b, k, h, lv * p).softmax(-1)
        samples = []
        for lvl, feat in enumerate(value):
            size = feat.new_tensor([feat.shape[3], feat.shape[2]])  # (W, H): x, y normaliser
            loc = reference[:, :, None, None, :] + offsets[:, :, :, lvl] / size
            grid = (2 * loc - 1).view(b, k * h, p, 2)
            samples.append(F.grid_sample(feat, grid, mode="bilinear", padding_mode="zeros",
                                         align_corners=False))  # (B, C, K·H, P)
        sampled = torch.stack(samples, dim=-2).view(b, c, k, h, lv * p)
        out = (sampled * weights[:, None]).sum(-1)  # (B, C, K, H)
        out = out.permute(0, 2, 3, 1)  # (B, K, H, C)
        proj = self.value_proj_weight.view(h, c, c // h)
        out = torch.einsum("bkhc,hco->bkho", out, proj) + self.value_proj_bias
        return self.output_proj(out.flatten(2))


class DecoderLayer(nn.Module):
    """`DetrTransformerDecoderLayer_grouped` at inference (one group of 17 queries):
    self-attention, norm, EMSDA cross-attention, norm, FFN, norm (post-norm)."""

    def __init__(self, arch: PoseurArch) -> None:
        super().__init__()
        c = arch.embed_dims
        self.self_attn = nn.MultiheadAttention(c, arch.num_heads)
        self.norm1 = nn.LayerNorm(c)
        self.cross_attn = EMSDA(arch)
        self.norm2 = nn.LayerNorm(c)
        self.ffn = nn.Sequential(nn.Linear(c, arch.feedforward), nn.ReLU(),
                                 nn.Linear(arch.feedforward, c))
        self.norm3 = nn.LayerNorm(c)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, value: list[torch.Tensor],
                reference: torch.Tensor) -> torch.Tensor:
        q = (x + pos).transpose(0, 1)  # nn.MultiheadAttention is sequence-first here
        x = self.norm1(x + self.self_attn(q, q, x.transpose(0, 1), need_weights=False)[0]
                       .transpose(0, 1))
        x = self.norm2(x + self.cross_attn(x + pos, value, reference))
        return self.norm3(x + self.ffn(x))


def _branch(c: int, n: int, relu: bool, out: nn.Module) -> nn.Sequential:
    """Upstream's fc_coord_branch (Linear, ReLU)×n + Linear, or fc_sigma_branch Linear×n +
    Linear (no activation)."""
    layers: list[nn.Module] = []
    for _ in range(n):
        layers += [nn.Linear(c, c), nn.ReLU()] if relu else [nn.Linear(c, c)]
    return nn.Sequential(*layers, out)


@dataclass
class PoseurOutput:
    """Coordinates are normalised to the crop (x / width, y / height)."""

    proposal: torch.Tensor  # (B, K, 2) the coarse FC proposal (upstream's enc pred_jts)
    proposal_sigma: torch.Tensor  # (B, K, 2)
    coords: torch.Tensor  # (L, B, K, 2) each decoder layer's refined coordinates
    sigma: torch.Tensor  # (L, B, K, 2)
    scores: torch.Tensor  # (B, K) 1 - mean(sigma of the last layer)

    @property
    def keypoints(self) -> torch.Tensor:
        return self.coords[-1]


class PoseurNet(nn.Module):
    """(B, 3, H, W) normalised crops → `PoseurOutput`."""

    def __init__(self, arch: PoseurArch) -> None:
        super().__init__()
        c, k = arch.embed_dims, NUM_JOINTS
        self.arch = arch
        self.backbone = Backbone(arch)
        self.neck = ChannelMapper(arch)
        self.level_embeds = nn.Parameter(torch.empty(arch.num_levels, c))
        self.fc_coord = NormLinear(c, k * 2)  # the coarse proposal
        self.fc_sigma = nn.Linear(c, k * 2)
        self.pos_trans = nn.Linear(2 * c, c)  # keypoint query from the proposal's embedding
        self.pos_trans_norm = nn.LayerNorm(c)
        self.joint_embed = nn.Embedding(k, c)  # upstream's pos_embed: one per joint
        self.layers = nn.ModuleList(DecoderLayer(arch) for _ in range(arch.num_layers))
        self.coord_branches = nn.ModuleList(
            _branch(c, arch.num_reg_fcs, True, nn.Linear(c, 2)) for _ in range(arch.num_layers))
        self.coord_output_branches = nn.ModuleList(
            _branch(c, arch.num_reg_fcs, True, nn.Linear(c, 2)) for _ in range(arch.num_layers))
        self.sigma_branches = nn.ModuleList(
            _branch(c, arch.num_reg_fcs, False, nn.Linear(c, 2)) for _ in range(arch.num_layers))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Upstream's init_weights, roughly (random and tiny variants only)."""
        nn.init.normal_(self.level_embeds)
        for m in (self.fc_coord, self.fc_sigma, self.pos_trans):
            nn.init.xavier_uniform_(m.weight, gain=0.01 if m is not self.pos_trans else 1.0)
        for branches in (self.coord_branches, self.coord_output_branches):
            for sub in branches.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.xavier_uniform_(sub.weight, gain=0.01)

    def forward(self, images: torch.Tensor) -> PoseurOutput:
        feats = self.neck(self.backbone(images))
        c = self.arch.embed_dims
        # The zero-layer encoder: memory = features + sine position + level embedding.
        value = [f + sine_embed_2d(f.shape[2], f.shape[3], c // 2, f.device).to(f.dtype)
                 + self.level_embeds[lvl].view(1, -1, 1, 1) for lvl, f in enumerate(feats)]
        pooled = feats[-1].mean(dim=(2, 3))  # proposal_feature 'backbone_s'
        b = pooled.shape[0]
        proposal = self.fc_coord(pooled).view(b, NUM_JOINTS, 2)
        proposal_sigma = self.fc_sigma(pooled).view(b, NUM_JOINTS, 2).sigmoid()
        reference = proposal.detach()  # the decoder samples at the unclipped proposal
        clipped = reference.clip(0, 1)
        query = self.pos_trans_norm(self.pos_trans(torch.cat(
            [proposal_pos_embed(reference, c), proposal_pos_embed(clipped, c)], dim=2)))
        pos = self.joint_embed.weight[None].expand(b, -1, -1)
        coords, sigmas = [], []
        for layer, coord_branch, out_branch, sigma_branch in zip(
                self.layers, self.coord_branches, self.coord_output_branches,
                self.sigma_branches, strict=True):
            query = layer(query, pos, value, reference)
            # The decoder's refined reference; the head adds a second, un-squashed delta.
            reference = (coord_branch(query) + inverse_sigmoid(reference)).sigmoid()
            coords.append(reference + out_branch(query))
            sigmas.append(sigma_branch(query).sigmoid())
        sigma = torch.stack(sigmas)
        return PoseurOutput(proposal, proposal_sigma, torch.stack(coords), sigma,
                            (1 - sigma[-1]).mean(-1))
