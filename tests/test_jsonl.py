"""The package's one JSONL reader (ahn_jax/jsonl.py): lines end at "\n" only, each line is UTF-8
on its own."""

import json

import pytest

from ahn_jax import jsonl


def test_line_separators_inside_json_text_do_not_split_a_record(tmp_path):
    """U+2028, U+2029 and U+0085 are legal unescaped in JSON strings, and json.dumps with
    ensure_ascii=False writes them so (the evaluation's predictions do): `str.splitlines` cut
    such a record in two, and a resumed evaluation then failed on its own file."""
    records = [{"pred": "a\u2028b"}, {"pred": "c\u2029d\u0085e"}, {"pred": "plain"}]
    path = tmp_path / "p.jsonl"
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    assert list(jsonl.read_jsonl(path)) == list(enumerate(records, start=1))


def test_a_line_that_is_not_utf8_is_an_invalid_line_with_its_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"a": 1}\r\n\n{"b": "caf\xe9"}\n{"c": 3}')  # CRLF, blank, Latin-1, no "\n"
    with pytest.raises(jsonl.InvalidJsonError, match=r"d\.jsonl:3: invalid JSON \(not UTF-8"):
        list(jsonl.read_jsonl(path))
    skipped = []
    assert list(jsonl.read_jsonl(path, on_invalid=skipped.append)) == [(1, {"a": 1}), (4, {"c": 3})]
    assert [e.number for e in skipped] == [3]
    assert jsonl.file_lines(path)[-1] == b'{"c": 3}'  # a last line without "\n" is a line
