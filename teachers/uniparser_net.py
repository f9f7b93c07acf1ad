"""UniParser's network (Chu et al., multi-human parsing; code `cjm-sfw/Uniparser` on mmdet 2.x) in
plain PyTorch: ResNet + FPN, the center locator, the instance and category feature spaces.

Upstream names, for the reader (cjm-sfw/Uniparser @ 147a8b8):
- the model: `configs/repparsing/CHIP_r101_fpn_half_gpu_6x_repparsing_DCN_fusion_metrics_noneg_cluster_light.py`
  (CIHP, 20 classes) and `MHP_r{50,101}_fpn_half_gpu_3x_repparsing_DCN_fusion_metrics*.py`
  (MHPv2, 59): `SingleStageInsParsingDetector` (`mmdet/models/detectors/single_stage_parsing.py`),
  mmdet's `ResNet` with DCNv2 in stages 2-4 (`stage_with_dcn=(False, True, True, True)`), mmdet's
  `FPN` (256 channels, 5 outputs), and `Repparsing_Head`
  (`mmdet/models/dense_heads/parsing_repparsing.py`).
- `Repparsing_Head.forward` with the released flags (`enable_last_res`, `enable_light_convert`):
  only the finest FPN level (P2, stride 4) feeds the head (`x[:, :in_channels]` of
  `concate_feats`); `dekr_convs` and `segment_converts` are 1×1 convolutions with padding 1 (so
  their maps are 2 pixels wider and taller than P2, as upstream); CoordConv channels
  (`generate_coordinate`) are appended; the center tower runs on the map resized to
  `num_grid`² (`forward_center`, bilinear, align_corners=True) and ends in the 1-channel
  `center_heatmap`; the instance tower (`forward_instance`, sharing `dekr_convs`) and the
  semantic tower (`forward_semantic`) keep the P2 resolution. Each tower is `stacked_convs`
  3×3 conv + GroupNorm(32) + ReLU (mmcv `ConvModule`). `seg_kernels` (classes - 1, 128) are the
  fixed category kernels; `ins_coord_conv` is trained-only (unused at test time, kept so that
  checkpoints load strictly).

DCNv2 is mmcv's `ModulatedDeformConv2dPack` (`conv_offset` → two offset halves and a sigmoid
mask) run by `torchvision.ops.deform_conv2d`, which has a CPU kernel and mmcv's offset layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.ops import deform_conv2d

__all__ = ["ARCHS", "LABEL_SETS", "ModulatedDeformConv", "UniParserArch", "UniParserNet",
           "UniParserOutput", "points_nms"]

LABEL_SETS = {"cihp": 20, "mhp": 59}  # classes including background (upstream `num_classes`)
_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


@dataclass(frozen=True)
class UniParserArch:
    """One configuration: upstream's repparsing configs, or the tiny one for tests."""

    blocks: tuple[int, int, int, int]
    num_classes: int = 20  # with background; CIHP 20, MHPv2 59
    width_per_group: int = 64  # torchvision's bottleneck width (64 = ResNet-50/101)
    dcn_stages: tuple[bool, bool, bool, bool] = (False, True, True, True)
    fpn_channels: int = 256
    seg_feat_channels: int = 128
    stacked_convs: int = 4
    num_grid: int = 40

    @property
    def label_set(self) -> str:
        return next((k for k, v in LABEL_SETS.items() if v == self.num_classes), "custom")


ARCHS: dict[str, UniParserArch] = {
    "r50": UniParserArch(_BLOCKS[50]),
    "r101": UniParserArch(_BLOCKS[101]),
    "r50-mhp": UniParserArch(_BLOCKS[50], num_classes=59),
    "r101-mhp": UniParserArch(_BLOCKS[101], num_classes=59),
    # random weights for tests: one bottleneck per stage, narrow towers (upstream's head
    # hard-codes GroupNorm(32): they stay 32 wide); upstream's 40² grid, which no key records
    "tiny": UniParserArch((1, 1, 1, 1), width_per_group=8, fpn_channels=32, seg_feat_channels=32,
                          stacked_convs=2),
}


class ModulatedDeformConv(nn.Module):
    """mmcv `ModulatedDeformConv2dPack` (`DCNv2`) without a bias, as mmdet's bottleneck builds
    it: `conv_offset` predicts 2·k² offsets and k² mask logits; offsets start at zero
    (`init_offset`)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(cout, cin, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.conv_offset = nn.Conv2d(cin, 27, 3, stride=stride, padding=1)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o1, o2, mask = torch.chunk(self.conv_offset(x), 3, dim=1)
        offset = torch.cat((o1, o2), dim=1)
        return deform_conv2d(x, offset, self.weight, None, stride=self.stride, padding=1,
                             mask=torch.sigmoid(mask))


def _backbone(arch: UniParserArch) -> ResNet:
    """torchvision's ResNet (mmdet's `style='pytorch'`: stride on the 3×3) with DCNv2 3×3
    convolutions in the stages `dcn_stages` marks; its classifier removed."""
    net = ResNet(Bottleneck, list(arch.blocks), width_per_group=arch.width_per_group)
    for stage, dcn in enumerate(arch.dcn_stages, start=1):
        if not dcn:
            continue
        for block in getattr(net, f"layer{stage}"):
            conv = block.conv2
            block.conv2 = ModulatedDeformConv(conv.in_channels, conv.out_channels, conv.stride[0])
    del net.fc
    return net


class FPN(nn.Module):
    """mmdet `FPN` (start_level 0, no extra convs, nearest top-down upsampling to the lower
    level's size). Only P2 feeds the head, so only P2's output conv runs; the others are kept
    so that upstream checkpoints load strictly."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
        return self.fpn_convs[0](laterals[0])


class ConvGN(nn.Module):
    """mmcv `ConvModule` as the head builds it: 3×3 conv without bias, GroupNorm(32) (fixed in
    `Repparsing_Head._init_layers`), ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(32, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.gn(self.conv(x)))


def coordinates(feat: torch.Tensor) -> torch.Tensor:
    """`Repparsing_Head.generate_coordinate`: x and y in [-1, 1] over the map."""
    n, _, h, w = feat.shape
    ys = torch.linspace(-1, 1, h, device=feat.device, dtype=feat.dtype)
    xs = torch.linspace(-1, 1, w, device=feat.device, dtype=feat.dtype)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x, y])[None].expand(n, -1, -1, -1)


def points_nms(heat: torch.Tensor) -> torch.Tensor:
    """Upstream's `points_nms(kernel=2)`: keep a value where it is the max of its 2×2 window."""
    hmax = F.max_pool2d(heat, (2, 2), stride=1, padding=1)
    return heat * (hmax[:, :, :-1, :-1] == heat).float()


@dataclass
class UniParserOutput:
    center: torch.Tensor  # (N, S, S) center probability after `points_nms` (head eval=True)
    instance: torch.Tensor  # (N, C, h, w) instance feature space (P2 size + 2)
    semantic: torch.Tensor  # (N, C, h, w) category feature space


class Head(nn.Module):
    """`Repparsing_Head` at test time with the released flags (see the module docstring)."""

    def __init__(self, arch: UniParserArch) -> None:
        super().__init__()
        c, s = arch.fpn_channels, arch.seg_feat_channels
        self.num_grid = arch.num_grid
        # The towers end in ReLU: signed random kernels sit near cosine 0 and a random model would
        # parse nothing; non-negative ones give random but non-empty part maps (trained kernels
        # come from a checkpoint; upstream initialises N(0, 0.01) and trains them).
        self.seg_kernels = nn.Parameter(torch.randn(arch.num_classes - 1, s).abs())

        def tower() -> nn.ModuleList:
            return nn.ModuleList(ConvGN(c + 2 if i == 0 else s, s)
                                 for i in range(arch.stacked_convs))

        self.center_convs, self.semantic_convs, self.instance_convs = tower(), tower(), tower()
        self.dekr_convs = nn.Conv2d(c, c, 1, padding=1)  # enable_light_convert: 1×1, padding 1
        self.center_heatmap = nn.Conv2d(s, 1, 3, padding=1)
        self.segment_converts = nn.Conv2d(c, c, 1, padding=1)
        self.ins_coord_conv = nn.Conv2d(s, 2, 3, padding=1)  # training only

    @staticmethod
    def _tower(x: torch.Tensor, layers: nn.ModuleList) -> torch.Tensor:
        x = torch.cat([x, coordinates(x)], 1)
        for layer in layers:
            x = layer(x)
        return x

    def forward(self, p2: torch.Tensor) -> UniParserOutput:
        converted = self.dekr_convs(p2)
        center = torch.cat([converted, coordinates(converted)], 1)
        center = F.interpolate(center, size=self.num_grid, mode="bilinear", align_corners=True)
        for layer in self.center_convs:
            center = layer(center)
        heat = points_nms(self.center_heatmap(center).sigmoid())
        instance = self._tower(converted, self.instance_convs)
        semantic = self._tower(self.segment_converts(p2), self.semantic_convs)
        return UniParserOutput(heat[:, 0], instance, semantic)


class UniParserNet(nn.Module):
    """Backbone + FPN + head: a normalised, 32-padded (N, 3, H, W) batch → `UniParserOutput`."""

    def __init__(self, arch: UniParserArch) -> None:
        super().__init__()
        self.arch = arch
        self.backbone = _backbone(arch)
        widths = tuple(getattr(self.backbone, f"layer{i}")[-1].conv3.out_channels
                       for i in range(1, 5))
        self.neck = FPN(widths, arch.fpn_channels)
        self.head = Head(arch)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        feats = []
        for layer in (b.layer1, b.layer2, b.layer3, b.layer4):
            x = layer(x)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> UniParserOutput:
        return self.head(self.neck(self.features(x)))
