"""`distill show`: the contact sheet of one shard row has every panel where `sheet_layout` says,
each panel draws something, a missing modality says so, `compare` adds the student's row, and a
row past the end of the shard fails naming the row count."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.coco import Person
from distill.errors import DistillError, ShardError
from distill.labels.depth import quantize_unit
from distill.labels.groups import NUM_GROUPS, GroupTable, encode_group_mask
from distill.labels.keypoints import JOINT_NAMES, render_heatmaps, render_pafs
from distill.labels.normals import encode_normals8, normals_from_unit
from distill.layers.depth import depth_colormap
from distill.layers.form import LabelledImage, from_sample
from distill.layers.groups import CLASS_GROUPS, class_planes
from distill.runfolder import shard_name
from distill.shards import Sample, ShardWriter, make_metadata
from distill.viz import COMPARE_PREFIX, contact_sheet, save_sheet, sheet_for_row, sheet_layout

W, H = 120, 90
_J = {name: i for i, name in enumerate(JOINT_NAMES)}


def stick_figure(cx: float, top: float, scale: float = 1.0) -> np.ndarray:
    """(17, 3) COCO keypoints of a standing person, all visible."""
    s = scale
    pts = {
        "nose": (0, 4), "left_eye": (2, 2), "right_eye": (-2, 2), "left_ear": (4, 3),
        "right_ear": (-4, 3), "left_shoulder": (8, 14), "right_shoulder": (-8, 14),
        "left_elbow": (11, 26), "right_elbow": (-11, 26), "left_wrist": (12, 37),
        "right_wrist": (-12, 37), "left_hip": (5, 38), "right_hip": (-5, 38),
        "left_knee": (6, 54), "right_knee": (-6, 54), "left_ankle": (7, 68),
        "right_ankle": (-7, 68),
    }  # fmt: skip
    kp = np.zeros((17, 3), np.float32)
    for name, (dx, dy) in pts.items():
        kp[_J[name]] = (cx + dx * s, top + dy * s, 2)
    return kp


def make_labelled_sample(image_id: int, w: int = W, h: int = H, *, depth: bool = True,
                         groups: bool = True, text: bool = True, caption: bool = True,
                         people: int = 1, caption_text: str = "a person standing by a car",
                         tokens: list[str] | None = None, void_sign: bool = False) -> Sample:
    """A row with every teacher's labels: a gradient image with a 'car' and a 'person', depth
    nearer towards the bottom, normals from it, groups (Nature sky, Building road, Vehicles car,
    Persons person, Text sign; the sign is in no class group with `void_sign`), a text sign, a
    caption, tokens and `people` COCO people."""
    rng = np.random.default_rng(image_id)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([90 + 100 * yy / h, 120 + 60 * xx / w, 200 - 80 * yy / h], -1)
    img += rng.normal(0, 6, img.shape)
    car = (slice(h * 5 // 9, h * 8 // 9), slice(w // 10, w * 4 // 10))
    img[car] = (200, 40, 40)
    person = (slice(h // 6, h * 17 // 18), slice(w * 6 // 10, w * 7 // 10))
    img[person] = (60, 60, 150)
    sign = (slice(h // 10, h // 4), slice(w // 8, w * 4 // 10))
    img[sign] = (240, 240, 240)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=92)
    sample = Sample(image_id=image_id, file_name=f"{image_id:012d}.jpg", split="val2017",
                    width=w, height=h, image=buf.getvalue(), coco_captions=["A COCO caption."])
    if depth:
        unit = np.clip(yy / h + 0.3 * np.exp(-((xx - w * 0.65) ** 2 + (yy - h * 0.5) ** 2)
                                               / (0.02 * w * w)), 0, None)
        unit = (unit - unit.min()) / (unit.max() - unit.min())
        sample.depth16 = quantize_unit(unit)
        sample.depth_min, sample.depth_max = 1.5 + image_id, 30.0 + image_id
        sample.normals = encode_normals8(normals_from_unit(unit))
    class_map = np.full((h, w), 187, np.uint8)  # sky
    class_map[h * 2 // 3:] = 149  # road
    class_map[car] = 3  # car
    class_map[person] = 1  # person
    if void_sign:
        class_map[sign] = 255  # void: the sign's pixels are Text only
    text_mask = np.zeros((h, w), bool)
    text_mask[sign] = True
    if groups:
        sample.panoptic = class_map
        sample.groups = encode_group_mask(GroupTable.load(), class_map,
                                          text_mask if text else None)
    if text:
        sample.text_mask = text_mask
        sample.text_regions = []
    if caption:
        sample.teacher_captions = [caption_text]
        sample.tokens = (tokens if tokens is not None
                         else [t for t in caption_text.split() if len(t) > 2])
    sample.persons = [
        Person(stick_figure(w * 0.65 + 12 * k, h * 0.1, scale=h / 90), (0, 0, 10, 10), 100.0,
               False, 17)
        for k in range(people)
    ]
    return sample


def write_shard(path: Path, samples: list[Sample], row_group_size: int = 2) -> Path:
    with ShardWriter(path, make_metadata("f" * 16, {}), row_group_size=row_group_size) as w:
        for s in samples:
            w.write(s)
    return path


def student_of(labels: LabelledImage, raw: bool = True) -> LabelledImage:
    """A plausible student prediction of the same image: blurred maps, heatmaps, decoded people
    shifted a little, words."""
    h, w = labels.height, labels.width
    assert labels.depth is not None and labels.groups is not None and labels.text is not None
    people = labels.people.copy()
    people[..., :2] += 2.0
    people[..., 2] = np.where(people[..., 2] > 0, 0.8, 0.0)
    return LabelledImage(
        source="student", width=w, height=h,
        depth=np.clip(labels.depth * 0.9 + 0.05, 0, 1),
        normals=labels.normals,
        text=labels.text * 0.7,
        groups=labels.groups * 0.8,
        joints=render_heatmaps(labels.people, h, w) * 0.9,
        pafs=render_pafs(labels.people, h, w) * 0.7,
        people=people,
        tokens=["person", "car", "street"],
        depth_raw=np.clip(labels.depth * 0.8, 0, 1) if raw else None,
    )


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("viz")
    samples = [
        make_labelled_sample(1, people=2),
        make_labelled_sample(2, depth=False, text=False, caption=False, people=0),
        make_labelled_sample(3, w=64, h=128),
    ]
    return write_shard(folder / shard_name("val2017", 0), samples)


def reopen(sheet: Image.Image, path: Path) -> np.ndarray:
    save_sheet(sheet, path)
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def region(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    left, top, right, bottom = box
    return pixels[top:bottom, left:right].astype(np.float32)


def assert_drawn(pixels: np.ndarray, boxes: dict[str, tuple[int, int, int, int]]) -> None:
    for key, box in boxes.items():
        part = region(pixels, box)
        assert part.size, key
        assert part.std() > 3.0, f"panel {key} is one flat colour"


def test_sheet_has_the_grid_size_and_every_panel_draws(shard, tmp_path):
    from distill.shards import decode_row, read_shard

    table = read_shard(shard)
    assert table.num_rows == 3
    sheet = sheet_for_row(shard, 0)
    pixels = reopen(sheet, tmp_path / "row0.png")
    labels = from_sample(decode_row(table.slice(0, 1).to_pylist()[0]))
    layout = sheet_layout(labels)
    assert pixels.shape[1::-1] == layout.size == sheet.size
    assert [p.key for p in layout.panels] == [
        "image", "depth", "normals", "text", "people", "groups", "legend", "words"]
    # 4 columns of 320 px plus margins and gaps; dense panels keep the 4:3 aspect
    left, top, right, bottom = layout.boxes["depth"]
    assert (right - left, bottom - top) == (320, 240)
    assert layout.size[0] > 4 * 320
    assert_drawn(pixels, layout.boxes)
    # panels in one grid row are top-aligned and do not overlap
    boxes = layout.boxes
    assert boxes["image"][1] == boxes["depth"][1] == boxes["normals"][1] == boxes["text"][1]
    assert boxes["image"][2] <= boxes["depth"][0] <= boxes["depth"][2] <= boxes["normals"][0]
    assert boxes["image"][3] < boxes["people"][1]
    for box in boxes.values():
        assert 0 <= box[0] < box[2] <= layout.size[0] and 0 <= box[1] < box[3] <= layout.size[1]


def test_panels_show_their_labels(shard, tmp_path):
    """The image panel is the image; depth uses the colour map (near = bright); the groups
    panel has the Persons and Vehicles colours; the legend lists only groups present."""
    from distill.images import decode_image
    from distill.layers.groups import GROUP_COLORS, plane_shares
    from distill.shards import decode_row, read_shard

    sample = decode_row(read_shard(shard).slice(0, 1).to_pylist()[0])
    labels = from_sample(sample)
    image = decode_image(sample.image)
    sheet = contact_sheet(image, labels, title="t")
    pixels = np.asarray(sheet)
    boxes = sheet_layout(labels).boxes
    shown = region(pixels, boxes["image"])
    expect = np.asarray(Image.fromarray(image).resize((320, 240), Image.Resampling.LANCZOS))
    assert np.abs(shown - expect).mean() < 2.0
    depth = region(pixels, boxes["depth"])
    # the far top is dark, the near bottom bright (skip the colour bar in the bottom-left)
    assert depth[:40, 100:].mean() < 60 < 180 < depth[-60:-30, 100:].mean()
    groups = region(pixels, boxes["groups"]).reshape(-1, 3)
    for name in ("Persons", "Vehicles", "Nature", "Building"):
        color = np.array(GROUP_COLORS[CLASS_GROUPS.index(name)], np.float32)
        blended = color * 0.65  # over a dimmed grey backdrop
        near = np.abs(groups - blended).max(axis=1) < 60
        assert near.mean() > 0.01, name
    # legend: present groups have their swatch colour exactly; absent ones do not appear
    legend = region(pixels, boxes["legend"]).reshape(-1, 3)
    shares = plane_shares(class_planes(labels.groups))
    for k, share in enumerate(shares):
        has = (legend == np.array(GROUP_COLORS[k], np.float32)).all(axis=1).sum()
        assert (has > 20) == (share > 0), CLASS_GROUPS[k]
    assert {CLASS_GROUPS[k] for k, s in enumerate(shares) if s > 0} == {
        "Persons", "Vehicles", "Building", "Nature"}


def test_missing_modalities_draw_a_no_label_panel(shard, tmp_path):
    """Row 1 has no depth, normals, text or caption: those panels are hatched 'no … label'
    panels in the same places (stable layout), not blank and not missing."""
    from distill.images import decode_image
    from distill.paint import Painter
    from distill.shards import decode_row, read_shard

    sample = decode_row(read_shard(shard).slice(1, 1).to_pylist()[0])
    labels = from_sample(sample)
    assert labels.depth is None and labels.text is None and not labels.captions
    sheet = sheet_for_row(shard, 1)
    pixels = reopen(sheet, tmp_path / "row1.png")
    layout = sheet_layout(labels)
    assert [p.key for p in layout.panels] == [p.key for p in sheet_layout(
        from_sample(decode_row(read_shard(shard).slice(0, 1).to_pylist()[0]))).panels]
    assert_drawn(pixels, layout.boxes)
    # the missing panels are exactly what the painter draws for "no <modality> label"
    reference = Painter(decode_image(sample.image), layout)
    by_key = {p.key: p for p in layout.panels}
    for key, message in [("depth", "no depth label"), ("normals", "no normals label"),
                         ("text", "no text label")]:
        reference.missing(by_key[key], message)
        want = region(np.asarray(reference.canvas), by_key[key].box)
        assert np.array_equal(region(pixels, by_key[key].box), want), key
    # ... and they differ from what a different message would draw
    reference.missing(by_key["depth"], "no normals label")
    assert not np.array_equal(region(np.asarray(reference.canvas), by_key["depth"].box),
                              region(pixels, by_key["depth"].box))
    # a present modality is not a "no label" panel
    reference.missing(by_key["groups"], "no groups label")
    assert not np.array_equal(region(np.asarray(reference.canvas), by_key["groups"].box),
                              region(pixels, by_key["groups"].box))


def test_compare_adds_the_student_row(shard, tmp_path):
    from distill.images import decode_image
    from distill.shards import decode_row, read_shard

    sample = decode_row(read_shard(shard).slice(0, 1).to_pylist()[0])
    labels = from_sample(sample)
    student = student_of(labels)
    single = sheet_layout(labels)
    layout = sheet_layout(labels, compare=student)
    sheet = sheet_for_row(shard, 0, compare=student)
    pixels = reopen(sheet, tmp_path / "compare.png")
    assert pixels.shape[1::-1] == layout.size
    assert layout.size[0] > single.size[0] and layout.size[1] > single.size[1]
    boxes = layout.boxes
    for name in ("depth", "normals", "groups", "text", "people", "legend", "words"):
        assert COMPARE_PREFIX + name in boxes
    assert COMPARE_PREFIX + "depth_raw" in boxes
    for name in ("depth", "normals", "groups", "text", "people"):
        top, low = boxes[name], boxes[COMPARE_PREFIX + name]
        assert low[0] == top[0] and low[1] >= top[3], f"student {name} is not below teachers"
    # the refined and raw depth are drawn and differ
    raw, refined = (region(pixels, boxes[COMPARE_PREFIX + k]) for k in ("depth_raw", "depth"))
    assert np.abs(raw - refined).mean() > 2.0
    assert_drawn(pixels, boxes)
    # the student's caption bars have their own colour (labelled rows)
    cap = {p.key: p.caption_box for p in layout.panels}
    teacher_bar = region(pixels, cap["depth"])[2, 2]
    student_bar = region(pixels, cap[COMPARE_PREFIX + "depth"])[2, 2]
    assert not np.array_equal(teacher_bar, student_bar)
    # without a raw depth the first student panel is the image again
    plain = student_of(labels, raw=False)
    keys = sheet_layout(labels, compare=plain).boxes
    assert COMPARE_PREFIX + "image" in keys and COMPARE_PREFIX + "depth_raw" not in keys
    img = contact_sheet(decode_image(sample.image), labels, compare=plain)
    assert img.size == sheet_layout(labels, compare=plain).size


def test_portrait_image_keeps_its_aspect(shard, tmp_path):
    from distill.shards import decode_row, read_shard

    labels = from_sample(decode_row(read_shard(shard).slice(2, 1).to_pylist()[0]))
    layout = sheet_layout(labels, panel_width=200)
    left, top, right, bottom = layout.boxes["image"]
    assert (right - left, bottom - top) == (200, 400)
    pixels = reopen(sheet_for_row(shard, 2, panel_width=200), tmp_path / "tall.png")
    assert pixels.shape[1::-1] == layout.size
    assert_drawn(pixels, layout.boxes)


def test_row_out_of_range_names_the_row_count(shard):
    with pytest.raises(ShardError, match=r"row 3 is out of range.*has 3 rows"):
        sheet_for_row(shard, 3)
    with pytest.raises(DistillError, match="out of range"):
        sheet_for_row(shard, -1)
    with pytest.raises(ShardError, match="does not exist"):
        sheet_for_row(shard.with_name("nope.parquet"), 0)


def test_mismatched_image_size_is_refused(shard):
    from distill.errors import LabelError
    from distill.shards import decode_row, read_shard

    labels = from_sample(decode_row(read_shard(shard).slice(0, 1).to_pylist()[0]))
    with pytest.raises(LabelError, match="original size"):
        contact_sheet(np.zeros((10, 10, 3), np.uint8), labels)


def test_depth_colormap_is_monotone_in_brightness():
    ramp = depth_colormap(np.linspace(0, 1, 64, dtype=np.float32)[None, :])[0]
    luma = ramp.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert luma[0] < 10 and luma[-1] > 230
    assert np.all(np.diff(luma) > -1.0)


def _provenance(variant: str, weights: dict[str, str] | None = None) -> dict[str, object]:
    return {"backend": "x", "variant": variant, "checkpoint": "" if variant != "pretrained"
            else "org/model", "revision": "main", "weights_sha256": weights or {}}


def _red(pixels: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """Share of a region's pixels that are the warning banner's red."""
    part = region(pixels, box)
    red = (part[..., 0] > 150) & (part[..., 1] < 60) & (part[..., 2] < 60)
    return float(red.mean())


def test_random_weight_teachers_put_a_red_banner_on_the_sheet(tmp_path):
    """A shard labelled by a tiny (random-weight) teacher draws a red banner naming it under
    the title; a shard of pretrained teachers draws none, and its sheet is the plain size."""
    from distill.viz import row_warning

    samples = [make_labelled_sample(1)]
    random_meta = {"depth": _provenance("tiny"), "text": _provenance("pretrained", {"w": "ab"})}
    real_meta = {"depth": _provenance("pretrained", {"w": "cd"})}
    tiny = tmp_path / "tiny" / shard_name("val2017", 0)
    real = tmp_path / "real" / shard_name("val2017", 0)
    for path, prov in ((tiny, random_meta), (real, real_meta)):
        path.parent.mkdir()
        with ShardWriter(path, make_metadata("f" * 16, prov)) as w:
            for s in samples:
                w.write(s)
    warning = row_warning(tiny, 0)
    assert "depth teacher was not pretrained" in warning and "plumbing tests only" in warning
    assert "text" not in warning
    assert row_warning(real, 0) == ""

    marked = reopen(sheet_for_row(tiny, 0), tmp_path / "tiny.png")
    plain = reopen(sheet_for_row(real, 0), tmp_path / "real.png")
    labels = from_sample(samples[0])
    layout = sheet_layout(labels, banner=True)
    assert layout.banner_box is not None and sheet_layout(labels).banner_box is None
    assert marked.shape[1::-1] == layout.size
    assert plain.shape[1::-1] == sheet_layout(labels).size
    assert marked.shape[0] > plain.shape[0]  # the banner is extra room, not over a panel
    assert _red(marked, layout.banner_box) > 0.6
    assert _red(plain, (0, 0, plain.shape[1], plain.shape[0])) < 0.01
    # the panels below moved down by the banner and still draw
    assert_drawn(marked, layout.boxes)
    assert layout.boxes["image"][1] >= layout.banner_box[3]


def test_people_of_a_shard_are_captioned_coco_ground_truth(shard, tmp_path, monkeypatch):
    """The people panel of a shard row is COCO's annotations: its caption says so (and is not
    the teachers' blue), the student's people panel stays the student's."""
    from distill.layers.persons import GROUND_TRUTH
    from distill.paint import Painter

    captions: list[tuple[str, str, str, bool]] = []
    original = Painter.caption

    def record(self, panel, text, source, prefix):
        captions.append((panel.key, text, source, prefix))
        original(self, panel, text, source, prefix)

    from distill.shards import decode_row, read_shard

    labels = from_sample(decode_row(read_shard(shard).slice(0, 1).to_pylist()[0]))
    image = np.full((labels.height, labels.width, 3), 90, np.uint8)
    monkeypatch.setattr(Painter, "caption", record)
    sheet = contact_sheet(image, labels, compare=student_of(labels))
    by_key = {k: (t, s, p) for k, t, s, p in captions}
    assert by_key["people"] == ("people", GROUND_TRUTH, True)
    assert by_key[COMPARE_PREFIX + "people"][1] == "student"
    assert by_key["depth"][1] == "teachers"
    pixels = reopen(sheet, tmp_path / "gt.png")
    layout = sheet_layout(labels, compare=student_of(labels))
    cap = {p.key: p.caption_box for p in layout.panels}
    gt_bg = region(pixels, cap["people"])[2:4, 2:4].mean(axis=(0, 1))
    teacher_bg = region(pixels, cap["depth"])[2:4, 2:4].mean(axis=(0, 1))
    assert not np.allclose(gt_bg, teacher_bg, atol=4)


def test_legend_says_when_overlapping_group_shares_pass_100_percent(monkeypatch):
    """Multi-label groups: when the shares add up past 100 % the legend prints the sum and
    that a pixel can be in several groups; one-group-per-pixel labels print no such note."""
    from PIL import ImageDraw

    texts: list[str] = []

    original = ImageDraw.ImageDraw.text

    def record(self, xy, text, *args, **kwargs):
        texts.append(str(text))
        return original(self, xy, text, *args, **kwargs)

    h, w = 40, 50
    overlapping = np.zeros((NUM_GROUPS, h, w), np.float32)
    overlapping[:3] = 1.0  # every pixel in three groups: 300 %
    single = np.zeros_like(overlapping)
    single[0, :20] = 1.0
    single[1, 20:] = 1.0  # 40 % + 60 %
    image = np.full((h, w, 3), 90, np.uint8)
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    contact_sheet(image, LabelledImage("student", w, h, groups=overlapping))
    many = list(texts)
    texts.clear()
    contact_sheet(image, LabelledImage("student", w, h, groups=single))
    one = list(texts)
    note = " ".join(t for t in many if "sum" in t or "several" in t)
    assert "sum 300 %" in note and "several groups" in note
    assert not any("several groups" in t for t in one)


def test_file_names_with_newlines_or_any_unicode_draw(tmp_path):
    """A COCO file name is anything a file system allows: a newline (which Pillow refuses to
    measure), control characters, scripts and emoji the font lacks. `distill show` draws the
    sheet, the name on one line with the control characters as escapes."""
    from typer.testing import CliRunner

    from distill.cli import app

    names = ["line one\nline two.jpg", "写真 📷 \u202e\x07\ttab.jpg", "crlf\r\n\u2028.jpg"]
    samples = []
    for k, name in enumerate(names):
        sample = make_labelled_sample(k + 1, caption_text=f"a caption\nwith {name}")
        sample.file_name = name
        samples.append(sample)
    shard = write_shard(tmp_path / shard_name("val2017", 0), samples)
    for row in range(len(names)):
        out = tmp_path / f"row{row}.png"
        res = CliRunner().invoke(app, ["show", str(shard), "--row", str(row), "--out", str(out)])
        assert res.exit_code == 0, res.output
        title = sheet_layout(from_sample(samples[row])).title_box
        with Image.open(out) as img:
            assert region(np.asarray(img.convert("RGB")), title).std() > 3.0
    from distill.paint import one_line

    assert one_line(names[0]) == "line one\\nline two.jpg"
    assert one_line(names[1]) == "写真 📷 \u202e\\x07\\ttab.jpg"
    assert one_line("bad\udcffbyte") == "bad\\udcffbyte"  # an undecodable byte of a file name


def test_each_panel_is_drawn_by_its_label_layer(shard, monkeypatch):
    """The sheet's panels are the registered layers' (`sheet_panels`, in rank order after the
    image; a `when_present` one only where the row has its field: this row has no pose teacher
    people) and each is drawn by its layer's `draw_panel`: viz only lays them out (issue 27)."""
    from distill.layers.registry import get_layer, layers
    from distill.shards import decode_row, read_shard

    labels = from_sample(decode_row(read_shard(shard).slice(0, 1).to_pylist()[0]))
    declared = sorted((s for layer in layers() for s in layer.sheet_panels()
                       if not s.student_first and not s.when_present), key=lambda s: s.rank)
    layout = sheet_layout(labels)
    assert [p.key for p in layout.panels] == ["image", *(s.key for s in declared)]

    text = type(get_layer("text"))

    def red(self, key, painter, panel, labelled):
        painter.paste(panel, np.full((*painter.content_size(panel)[::-1], 3), (255, 0, 0),
                                     np.uint8))

    monkeypatch.setattr(text, "draw_panel", red)
    assert labels.image is not None
    pixels = np.asarray(contact_sheet(labels.image, labels))
    part = region(pixels, layout.boxes["text"])
    assert (part == (255, 0, 0)).all(axis=-1).mean() > 0.9
    assert not (region(pixels, layout.boxes["depth"]) == (255, 0, 0)).all(axis=-1).any()


def test_shares_on_pictures_are_the_layers_statistics(shard):
    """The text share a sheet prints and the legend's group shares are the figures the layers'
    QA statistics give the same row (`distill inspect`, the viewer's sorts): one owner."""
    from distill.labels.groups import GROUP_NAMES
    from distill.layers.groups import plane_shares
    from distill.layers.registry import get_layer, pixel_share
    from distill.shards import decode_row, read_shard

    row = read_shard(shard).slice(0, 1).to_pylist()[0]
    labels = from_sample(decode_row(row))
    assert labels.text is not None and labels.groups is not None
    assert get_layer("text").statistics(row) == {"text_share": pixel_share(labels.text)}
    stats = get_layer("groups").statistics(row)
    assert stats is not None
    assert [stats[f"group:{g}"] for g in GROUP_NAMES] == plane_shares(labels.groups)


def test_the_text_panel_tints_only_the_pixels_its_share_counts(shard):
    """A student's low text probabilities everywhere ("text 0.0 %") draw no tint at all."""
    import dataclasses

    from distill.images import decode_image
    from distill.shards import decode_row, read_shard

    sample = decode_row(read_shard(shard).slice(0, 1).to_pylist()[0])
    labels = from_sample(sample)
    image = decode_image(sample.image)
    box = sheet_layout(labels).boxes["text"]
    low = dataclasses.replace(labels, text=np.full((labels.height, labels.width), 0.3,
                                                   np.float32))
    none = dataclasses.replace(labels, text=np.zeros((labels.height, labels.width), np.float32))
    drawn = [region(np.asarray(contact_sheet(image, lab)), box) for lab in (low, none)]
    assert np.array_equal(drawn[0], drawn[1])


def test_the_words_panel_shows_cocos_captions_beside_the_teachers(shard):
    import dataclasses

    from distill.layers.tokens import LAYER
    from distill.shards import decode_row, read_shard

    labels = dataclasses.replace(
        from_sample(decode_row(read_shard(shard).slice(0, 1).to_pylist()[0])),
        captions=["a teacher's caption"], tokens=["teacher", "caption"],
        coco_captions=["a man rides a horse", "a horse on a beach"])
    drawn: list = []

    class _Painter:
        def text_block(self, panel, blocks):
            drawn.extend(blocks)

    LAYER.draw_panel("words", _Painter(), None, labels)
    assert drawn[0] == ("caption", "a teacher's caption")
    assert drawn[-1] == ("COCO captions (2)", "a man rides a horse\na horse on a beach")
    drawn.clear()  # no caption teacher: said, and COCO's still shown
    LAYER.draw_panel("words", _Painter(), None,
                     dataclasses.replace(labels, captions=None, tokens=None))
    assert drawn == [("caption", "no caption label"),
                     ("COCO captions (2)", "a man rides a horse\na horse on a beach")]
