"""The README's shard-reading snippet runs as written on a real shard."""

import re
import subprocess
import sys
from pathlib import Path

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
