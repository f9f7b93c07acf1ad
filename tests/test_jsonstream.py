"""An annotation file read a chunk at a time gives exactly what `json.loads` of it gives,
wherever the chunks cut it (a number cut after `12` of `12.5`, a string, an escape), and fails
where `json.loads` fails."""

from __future__ import annotations

import io
import json

import pytest

import distill.jsonstream
from distill.jsonstream import NOT_AN_OBJECT, top_level_arrays

DOCS = [
    b'{"images":[1,2.5,"x",{"a":[1,2]},null,true,-3e5],"x":{"y":[1]},"annotations":[] }',
    b' { "info" : 1 , "annotations" : [ {"caption":"a\\u00e9\\ud800b\\n"} , '
    b'12345678901234567890 ] , "images" : {"k":1} } ',
    '{"images":["h\u00e9llo w\u00f6rld \u2713"],"annotations":[1e10, -0.0]}'.encode(),
    '{"images":[1],"annotations":[2]}'.encode("utf-16"),
    b'\xef\xbb\xbf{"images":[3],"annotations":[]}',
    b'{}',
]


def _read(data: bytes) -> object:
    """The document as top_level_arrays reports it: {key: list or value} or NOT_AN_OBJECT."""
    out: dict[str, object] = {}
    for key, index, value in top_level_arrays(io.BytesIO(data), ("images", "annotations")):
        if key is None:
            return value
        if index < 0:
            out[key] = value
        else:
            out[key].append(value)  # type: ignore[attr-defined]
    return out


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 1 << 22])
def test_entries_are_json_loads_own_values_wherever_the_chunks_cut(monkeypatch, chunk):
    monkeypatch.setattr(distill.jsonstream, "CHUNK", chunk)
    for data in DOCS:
        want = json.loads(data)
        got = _read(data)
        assert isinstance(got, dict)
        for key in ("images", "annotations"):
            assert (key in got) == (key in want)
            if key in want:
                assert repr(got[key]) == repr(want[key]), (chunk, data)
    assert _read(b' [1, 2] ') is NOT_AN_OBJECT
    assert _read(b'"text"') is NOT_AN_OBJECT


@pytest.mark.parametrize("chunk", [1, 5, 1 << 22])
@pytest.mark.parametrize("data", [
    b'{"images":[1,2', b'{"images":[1 2]}', b'{"images":[1],}', b'{"a":1} x', b'',
    b'{"images":["abc]}', b'{"a":tru}', b'{"images":[1.]}', b'[1] 2',
    b'{"images":[1],"images":[2]}',  # json.loads keeps the last: never silently half-read
])
def test_what_json_loads_refuses_is_refused(monkeypatch, chunk, data):
    monkeypatch.setattr(distill.jsonstream, "CHUNK", chunk)
    with pytest.raises(ValueError, match=r"char \d+"):
        _read(data)
