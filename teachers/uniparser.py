"""UniParser (Chu et al., multi-human parsing; code `cjm-sfw/Uniparser` on mmdet 2.x): the
"uniparser" parts teacher. One stage, no NMS: people are peaks of a center heatmap, each
person's instance map is the cosine similarity of the instance feature space with the feature
at its center pixel, the category maps are cosine similarities with fixed category kernels,
and the two are fused by indexing (a person's parsing = its instance mask × the category maps).

Test-time pipeline, as upstream's configs (`test_pipeline`, cjm-sfw/Uniparser @ 147a8b8):
`Resize_Parsing(img_scale=(1333, 800), keep_ratio=True)` (mmcv `imrescale`: OpenCV bilinear on
uint8, `teachers.resize`), `Normalize` with ImageNet mean/std in RGB, `Pad_Parsing(size_divisor=32)`
with zeros. Post-processing is `Repparsing_Head.get_parsing_single` with `infer_by_pixel=False`
and the config's `test_cfg` (`ctr_score`, `mask_thr`, `cate_score_thr`), in `parse_single`.

The contract's maps (`PartsResult`) are built from upstream's per-person parsings: people in
descending center score get instance ids 1, 2, …; where two people overlap the higher score
wins (upstream keeps overlapping per-person maps; a map holds one label per pixel). A person
left with no pixel is dropped. A person's box is the extent of its pixels in `instance_map`
(x1, y1 exclusive, original pixels).

Variants: "tiny" (random, small), "random" (full size, random init; `checkpoint` may name the
upstream config: r50, r101 (default), r50-mhp, r101-mhp) and "pretrained": an upstream mmdet
checkpoint (`.pth`, read with `torch.load(weights_only=True)`, or safetensors) whose depth and
label set are read from its keys, renamed by `map_upstream_keys`. No weights are published
(upstream's are on a Baidu drive only): nothing here downloads any.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distill.config import TeacherConfig
from teachers import runtime
from teachers.base import PartsPerson, PartsResult, Provenance, Teacher, TeacherError, check_images
from teachers.registry import register
from teachers.resize import resize_bilinear_uint8
from teachers.uniparser_net import ARCHS, UniParserArch, UniParserNet

__all__ = ["TestConfig", "UniParser", "arch_of_checkpoint",
           "map_upstream_keys", "parse_single", "to_parts_result"]

logger = logging.getLogger(__name__)

MEAN = (123.675, 116.28, 103.53)  # img_norm_cfg, RGB
STD = (58.395, 57.12, 57.375)
SIZE_DIVISOR = 32
TINY_INPUT = 64  # the tiny variant's shortest edge (cap max_size_for(64) = 107)
MAX_PERSONS = 255  # uint8 instance ids


@dataclass(frozen=True)
class TestConfig:
    """Upstream's `test_cfg` entries that `get_parsing_single` reads (the CIHP config's; the MHP
    configs use ctr_score 0.2, cate_score_thr 0.3)."""

    ctr_score: float = 0.10
    mask_thr: float = 0.5
    cate_score_thr: float = 0.275


TEST_CFG = {"cihp": TestConfig(), "mhp": TestConfig(ctr_score=0.2, cate_score_thr=0.3)}

# (upstream regex, replacement), first match wins; other keys keep their names.
_RULES: list[tuple[str, str]] = [
    (r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.", r"neck.\1.\2."),
    (r"^mask_head\.", "head."),
]


def map_upstream_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Upstream `SingleStageInsParsingDetector` state-dict names → `UniParserNet`'s: the head
    `mask_head.` → `head.`, the FPN's `ConvModule` `.conv.` dropped. The backbone's names are
    mmdet's ResNet's, which are torchvision's (DCN: `conv2.weight`, `conv2.conv_offset.*`)."""
    return {runtime.rename_key(key, _RULES): value for key, value in state.items()}


def arch_of_checkpoint(state: dict[str, torch.Tensor]) -> UniParserArch | None:
    """The configuration an upstream (or `UniParserNet`) state dict was built with, read from its
    keys and shapes: blocks per stage, bottleneck width, DCN stages (`conv_offset` keys), FPN and
    tower widths, tower depth, classes (`seg_kernels` rows + 1); None when it is not one. The
    center grid is not in the weights: upstream's 40 (every released config)."""
    mapped = map_upstream_keys(state)
    kernels = mapped.get("head.seg_kernels")
    lateral = mapped.get("neck.lateral_convs.0.weight")
    first = mapped.get("backbone.layer1.0.conv1.weight")
    blocks = tuple(len({m[1] for k in mapped if (m := re.match(rf"backbone\.layer{i}\.(\d+)\.", k))})
                   for i in range(1, 5))
    if kernels is None or kernels.dim() != 2 or lateral is None or first is None or 0 in blocks:
        return None
    dcn = tuple(f"backbone.layer{i}.0.conv2.conv_offset.weight" in mapped for i in range(1, 5))
    convs = {m[1] for k in mapped if (m := re.match(r"head\.center_convs\.(\d+)\.", k))}
    return UniParserArch(blocks, num_classes=int(kernels.shape[0]) + 1,  # type: ignore[arg-type]
                         width_per_group=int(first.shape[0]), dcn_stages=dcn,  # type: ignore[arg-type]
                         fpn_channels=int(lateral.shape[0]), seg_feat_channels=int(kernels.shape[1]),
                         stacked_convs=len(convs))


def _cosine(feats: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """(C, h, w) features and (K, C) kernels → (K, h, w): upstream's `F.conv2d` of the
    L2-normalised features with the L2-normalised kernels."""
    return F.conv2d(F.normalize(feats[None], p=2, dim=1),
                    F.normalize(kernels, p=2, dim=1)[:, :, None, None])[0]


def parse_single(center: torch.Tensor, instance: torch.Tensor, semantic: torch.Tensor,
                 seg_kernels: torch.Tensor, img_shape: tuple[int, int],
                 ori_shape: tuple[int, int], cfg: TestConfig
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`Repparsing_Head.get_parsing_single` (infer_by_pixel=False) for one image: center peaks
    (5×5 max pool) above `ctr_score`, in ascending score order as upstream sorts them; each
    one's instance mask (cosine with its center pixel's instance feature > `mask_thr`) times the
    category maps; categories whose `maskness` is at most `cate_score_thr` zeroed; upsampled ×4
    (bilinear), cropped to the resized image, brought to `ori_shape` (bilinear when shrinking
    before the threshold, nearest on the labels when enlarging, as upstream); argmax + 1 where
    some category exceeds `mask_thr`, else 0.

    Returns (parsings (K, H, W) int64, scores (K,), instance confidences (K, h, w), category
    confidences (classes - 1, h, w)). Only the kept categories are upsampled: a zeroed map is 0
    everywhere, so it never exceeds `mask_thr` nor wins an argmax that matters (the same
    result as upstream's, which upsamples all of them)."""
    h, w = img_shape
    fh, fw = instance.shape[-2:]
    grid = center.shape[-1]
    up = (fh * 4, fw * 4)
    peaks = F.max_pool2d(center[None, None], 5, stride=1, padding=2)[0, 0]
    heat = center * (peaks == center)
    inds = heat > cfg.ctr_score
    scores, order = torch.sort(heat[inds])
    ys, xs = torch.where(inds)
    ys = (ys / grid * fh).int()
    xs = (xs / grid * fw).int()
    index = (ys * fw + xs)[order].long()
    kernels = instance.permute(1, 2, 0).reshape(-1, instance.shape[0])[index]
    ins_conf = _cosine(instance, kernels)
    sem_conf = _cosine(semantic, seg_kernels)
    parsings = []
    for mask in ins_conf > cfg.mask_thr:
        pars = mask * sem_conf
        hit = pars > cfg.mask_thr
        maskness = (pars * hit).sum((1, 2)) / ((pars > 0.1).sum((1, 2)) + 0.00001)
        keep = torch.where(maskness > cfg.cate_score_thr)[0]
        result = torch.zeros(ori_shape, dtype=torch.int64, device=center.device)
        if len(keep):
            kept = F.interpolate(pars[keep][None], size=up, mode="bilinear")[:, :, :h, :w]
            if h * w > ori_shape[0] * ori_shape[1]:
                kept = F.interpolate(kept, size=ori_shape, mode="bilinear")
            positive = (kept > cfg.mask_thr).any(1)
            labels = (keep[kept.argmax(1)] + 1) * positive
            if labels.shape[-2:] != ori_shape:  # h·w < original (or equal, not the same shape)
                labels = F.interpolate(labels[None].float(), size=ori_shape, mode="nearest")[0]
            result = labels[0].long()
        parsings.append(result)
    stack = torch.stack(parsings) if parsings else torch.zeros((0, *ori_shape), dtype=torch.int64)
    return stack, scores, ins_conf, sem_conf


def to_parts_result(parsings: np.ndarray, scores: np.ndarray) -> PartsResult:
    """Per-person parsings (K, H, W) in ascending score order (upstream's) → the contract's
    maps: ids by descending score, the higher score winning overlaps, empty people dropped."""
    h, w = parsings.shape[1:]
    part_map = np.zeros((h, w), np.uint8)
    owner = np.full((h, w), -1, np.int64)
    order = np.argsort(-scores, kind="stable")[:MAX_PERSONS]
    for k in order[::-1]:  # lowest first, so the highest score is painted last
        on = parsings[k] > 0
        part_map[on] = parsings[k][on]
        owner[on] = k
    instance_map = np.zeros((h, w), np.uint8)
    persons: list[PartsPerson] = []
    for k in order:
        on = owner == k
        if not on.any():
            continue
        instance_map[on] = len(persons) + 1
        ys, xs = np.nonzero(on)
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
        persons.append(PartsPerson(box=box, score=float(scores[k])))
    return PartsResult(part_map=part_map, instance_map=instance_map, persons=persons)


def _arch_for(config: TeacherConfig) -> UniParserArch:
    """The tiny config, or the upstream config a random variant's `checkpoint` names (r101 when
    it names none: the default local checkpoint path, for one, is not a config name)."""
    if config.variant == "tiny":
        return ARCHS["tiny"]
    name = config.checkpoint
    if name in ARCHS and name != "tiny":
        return ARCHS[name]
    if re.fullmatch(r"r\d+(-\w+)?", name):
        raise TeacherError(f"teachers.parts.checkpoint = {name!r}: a random uniparser names an "
                           f"upstream config: {', '.join(a for a in ARCHS if a != 'tiny')}")
    logger.info("random uniparser: %r is not a config name; using r101 (CIHP)", name)
    return ARCHS["r101"]


@register
class UniParser(Teacher[PartsResult]):
    """UniParser multi-human parsing: every person's body parts at the original resolution."""

    name = "uniparser"
    role = "parts"

    def __init__(self, config: TeacherConfig) -> None:
        super().__init__(config)
        self.device = runtime.resolve_device(config)
        self.dtype = runtime.resolve_dtype(config, self.device)
        files: list[Path] = []
        state: dict[str, torch.Tensor] | None = None
        if config.variant == "pretrained":
            path = Path(config.checkpoint).expanduser()
            if not path.is_file():
                raise TeacherError(f"teachers.parts.checkpoint {config.checkpoint!r} is not a "
                                   "file; give a local upstream UniParser .pth/.safetensors path")
            files = [path]
            state = runtime.load_state_dict(path)
            found = arch_of_checkpoint(state)
            if found is None:
                raise TeacherError(f"{path} is not a UniParser checkpoint: no ResNet backbone, "
                                   "FPN or mask_head.seg_kernels among its keys "
                                   f"(first keys: {', '.join(list(state)[:4])})")
            arch = found
        else:
            arch = _arch_for(config)
        self.arch = arch
        self.cfg = TEST_CFG.get(arch.label_set, TestConfig())
        shortest = config.input_size or (TINY_INPUT if config.variant == "tiny" else 800)
        self.sizes = (shortest, runtime.max_size_for(shortest))
        with runtime.seeded():
            self.model = UniParserNet(arch)
        if state is not None:
            runtime.load_strict(self.model, map_upstream_keys(state), files[0], "UniParser")
        self.model.to(device=self.device, dtype=self.dtype).eval()
        self._provenance = runtime.make_provenance(
            self.role, self.name, config, self.device, self.dtype,
            input_size={"shortest": self.sizes[0], "max_size": self.sizes[1],
                        "size_divisor": SIZE_DIVISOR}, files=files,
            extra={"blocks": list(arch.blocks), "label_set": arch.label_set,
                   "num_classes": arch.num_classes, "test_cfg": dataclasses.asdict(self.cfg),
                   "weights": "upstream checkpoint" if files else
                   "random init (no UniParser weights are published)"})

    @property
    def provenance(self) -> Provenance:
        return self._provenance

    def predict(self, images: list[np.ndarray]) -> list[PartsResult]:
        check_images(images)
        shortest, longest = self.sizes
        shapes = [runtime.shortest_edge_size(img.shape[0], img.shape[1], shortest, longest)
                  for img in images]
        results: list[PartsResult | None] = [None] * len(images)
        with torch.inference_mode():
            for chunk in runtime.batches_by_size(shapes, self.config.batch_size):
                for i, result in zip(chunk, self._run([images[i] for i in chunk], shapes[chunk[0]]),
                                     strict=True):
                    results[i] = result
        return [r for r in results if r is not None]

    def _run(self, images: list[np.ndarray], size: tuple[int, int]) -> list[PartsResult]:
        mean = torch.tensor(MEAN, device=self.device).view(3, 1, 1)
        std = torch.tensor(STD, device=self.device).view(3, 1, 1)
        ph, pw = runtime.padded_size(*size, SIZE_DIVISOR)
        batch = torch.zeros((len(images), 3, ph, pw), device=self.device)
        for j, img in enumerate(images):
            pixels = torch.from_numpy(img).to(self.device).permute(2, 0, 1)
            resized = resize_bilinear_uint8(pixels, size).float()
            batch[j, :, :size[0], :size[1]] = (resized - mean) / std
        out = self.model(batch.to(self.dtype))
        kernels = self.model.head.seg_kernels.float()
        results = []
        for j, img in enumerate(images):
            parsings, scores, _, _ = parse_single(
                out.center[j].float(), out.instance[j].float(), out.semantic[j].float(), kernels,
                size, img.shape[:2], self.cfg)
            results.append(to_parts_result(parsings.cpu().numpy(), scores.cpu().numpy()))
        return results
