"""The README's shard-reading snippet runs as written on a real shard."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from distill.shards import ShardWriter, make_metadata
from tests.test_shards import make_sample

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_snippet_reads_a_shard(tmp_path):
    text = README.read_text()
    section = text[text.index("## Reading a shard"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    path = tmp_path / "val2017-00000-of-00001.parquet"
    with ShardWriter(path, make_metadata("f00d", {})) as w:
        w.write(make_sample(4))
    script = tmp_path / "snippet.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script), str(path)], capture_output=True,
                         text=True, check=True).stdout
    assert "fingerprint f00d" in out
    assert out.strip().endswith("(24, 32, 3) ['A cat.', 'A small cat on a mat.'] ['cat', 'sitting', 'mat']")


@pytest.mark.slow
def test_readme_python_api_runs_as_written(tmp_path, ray_address, monkeypatch):
    """The "Python API" section's code blocks, run in order in one namespace in this process
    (the session's Ray is used, as in a notebook that called ray.init) on a 7-image COCO folder
    in place of demo-data/coco: the labelling and training block, then every other command's
    function on its run and student."""
    from tests.conftest import make_coco7

    text = README.read_text()
    section = text[text.index("## Python API"):text.index("## Reading a shard")]
    first, commands = re.findall(r"```python\n(.*?)```", section, re.S)
    make_coco7(tmp_path / "demo-data" / "coco")
    monkeypatch.chdir(tmp_path)  # the section's relative paths, as a user in their folder
    printed: list[str] = []
    namespace = {"print": lambda *a, **k: printed.append(" ".join(map(str, a)))}
    exec(compile(first, "README.md#python-api", "exec"), namespace)
    assert printed[0].startswith("{'planned': 7, 'written': 7, 'quarantined': 0")
    rows = [line for line in printed[1:] if re.match(r"\d+ \(\d+, \d+, 3\) float32", line)]
    assert len(rows) == 7  # one line per image of the run
    assert (tmp_path / "demo-data" / "run" / "manifest.json").is_file()
    assert (tmp_path / "demo-data" / "api-student" / "checkpoints" / "last").is_dir()
    # the epoch (0-based, as in metrics.jsonl) and the prediction's depth, at the last image's size
    assert re.fullmatch(r"0 \(60, 80\) \[.*\]", printed[-1]), printed[-1]

    printed.clear()
    exec(compile(commands, "README.md#python-api-commands", "exec"), namespace)
    assert printed[0] == "['demo', 'paper'] # preset: demo"
    assert printed[1] == "7 7 []"
    assert printed[2] == "[('depth-anything-v2', True)]"
    assert re.fullmatch(r"7 7 \(\d+, \d+\)", printed[3]), printed[3]
    assert re.fullmatch(r"7 7 \[\] [0-9.e-]+", printed[4]), printed[4]
    demo = tmp_path / "demo-data"
    for written in ("row0.png", "run/audit.json", "api-student/evaluation.json",
                    "pred/predictions.json", "student.onnx"):
        assert (demo / written).is_file(), written


def test_readme_group_comments_name_the_bits_in_order():
    """The snippet's list of group bits is distill's group table, in order, and the two masks
    it picks out are the groups its comments name."""
    from distill.labels.groups import GROUP_NAMES

    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index("## Reading a shard"):], re.S)[1]
    listed = re.findall(r"(\d+) ([A-Z][a-z]+)", code.split("bits = ")[0].split("group k")[1])
    assert [(int(k), name) for k, name in listed] == list(enumerate(GROUP_NAMES))
    for shift, name in re.findall(r"\(bits >> (\d+)\) & 1 +# group \d+: (\w+)", code):
        assert GROUP_NAMES[int(shift)] == name


def test_iter_samples_gives_what_the_readme_says(tmp_path):
    """`iter_samples`: the image stays its encoded bytes, depth16 the uint16 levels, normals
    uint8, groups uint16 bits, the text mask bool — as the README's paragraph says."""
    import numpy as np

    from distill.shards import iter_samples, read_shard

    text = README.read_text()
    assert "`image` stays the\nencoded file bytes" in text and "`depth16` stays the uint16" in text
    path = tmp_path / "val2017-00000-of-00001.parquet"
    with ShardWriter(path, make_metadata("f00d", {})) as w:
        w.write(make_sample(4))
    (sample,) = iter_samples(path)
    assert sample.image == read_shard(path).column("image")[0].as_py()
    assert sample.depth16.dtype == np.uint16 and sample.normals.dtype == np.uint8
    assert sample.groups.dtype == np.uint16 and sample.text_mask.dtype == bool
    assert sample.depth16.shape == (sample.height, sample.width)
