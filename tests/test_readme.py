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


# ---------------------------------------------------------------------------------------------
# "Reading a run with pandas, DuckDB, Hugging Face `datasets` or Ray Data": each recipe as written

def _recipe(library: str) -> str:
    """The section's code block that imports `library`."""
    text = README.read_text()
    start = text.index("## Reading a run with pandas")
    section = text[start:text.index("\n## ", start + 1)]
    (code,) = [c for c in re.findall(r"```python\n(.*?)```", section, re.S)
               if re.search(rf"^(import|from) {library}\b", c, re.M)]
    return code


@pytest.fixture
def readme_run(tmp_path):
    """`demo-data/run` as the recipes name it: two committed shards (3 images), the run's JSON
    files beside shards/, and a shard still being written (a hidden temp) inside it."""
    run = tmp_path / "demo-data" / "run"
    (run / "shards").mkdir(parents=True)
    for name, ids in (("val2017-00000.parquet", (1, 2)), ("val2017-00001.parquet", (3,))):
        with ShardWriter(run / "shards" / name, make_metadata("f00d", {})) as w:
            for i in ids:
                w.write(make_sample(i))
    (run / "shards" / ".val2017-00002.parquet.tmp-1-0123abcd").write_bytes(b"PAR1 half-written")
    for name in ("manifest.json", "audit.json"):
        (run / name).write_text("{}")
    return tmp_path


def _run_recipe(code: str, cwd: Path, **env: str) -> str:
    import os

    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_readme_pandas_recipe_reads_a_runs_shards(readme_run):
    assert _run_recipe(_recipe("pandas"), readme_run) == (
        "3 ['image_id', 'file_name', 'split', 'width', 'height', 'image']")


def test_readme_duckdb_recipe_reads_a_runs_shards(readme_run):
    pytest.importorskip("duckdb", reason="duckdb is in the dev extra: `make setup` installs it")
    assert _run_recipe(_recipe("duckdb"), readme_run) == "[('val2017', 3, 6)]"


@pytest.mark.slow
def test_readme_datasets_recipe_gives_image_features(readme_run):
    """Hugging Face `datasets` loads the shards with `image` an `Image` feature: decoded PIL
    images at the shard's width and height (offline, its cache under the test's folder)."""
    pytest.importorskip("datasets", reason="datasets is in the dev extra: `make setup` installs it")
    out = _run_recipe(_recipe("datasets"), readme_run, HF_HUB_OFFLINE="1",
                      HF_DATASETS_CACHE=str(readme_run / "hf-cache"))
    assert out == "3 Image(mode=None, decode=True) (32, 24)"


@pytest.mark.slow
def test_readme_ray_data_recipe_reads_a_runs_shards(readme_run, ray_address, monkeypatch):
    """Ray Data's `read_parquet` on the session's Ray (as a notebook that called ray.init)."""
    monkeypatch.chdir(readme_run)
    printed: list[str] = []
    namespace = {"print": lambda *a, **k: printed.append(" ".join(map(str, a)))}
    exec(compile(_recipe("ray"), "README.md#ray-data", "exec"), namespace)
    assert printed == ["3 ['coco_captions', 'image', 'image_id']"]
