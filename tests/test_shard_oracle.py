"""The shard oracle (issue 27): frozen teacher outputs through post-processing and the shard
writer give the committed shard byte for byte, so a refactor of the label code cannot change
what a run writes (`tests/oracle/build.py` says how it was made)."""

import hashlib

import numpy as np
import pyarrow.parquet as pq

from tests.oracle.build import OUTPUTS, SHARD, write_shard


def test_frozen_teacher_outputs_give_the_committed_shard_byte_for_byte(tmp_path):
    out = tmp_path / "val2017-00000.parquet"
    write_shard(out, np.load(OUTPUTS))
    # The same rows, column by column, whatever writes the footer...
    assert pq.read_table(out).equals(pq.read_table(SHARD))
    # ...and the same bytes.
    assert hashlib.sha256(out.read_bytes()).hexdigest() == \
        hashlib.sha256(SHARD.read_bytes()).hexdigest()
