"""The served model's files come from outside the run and are checked before use (#22):
model_info.json / evaluation.json that are binary, deep, huge, not an object or of a foreign
shape give a reason (not promoted, or compared without the record), never a traceback."""

from __future__ import annotations

import json

import pytest

from trainer.promote import _record_problem, served_json


@pytest.mark.parametrize("content, problem", [
    pytest.param(bytes(range(256)), "is not UTF-8 text", id="binary"),
    pytest.param(b"[" * 5000 + b"]" * 5000, "is nested too deeply", id="deep"),
    pytest.param(b"[1, 2]", "is not a JSON object", id="list"),
    pytest.param(b"{not json", "is not JSON", id="not-json"),
])
def test_a_bad_served_file_is_a_reason(tmp_path, content, problem):
    path = tmp_path / "model_info.json"
    path.write_bytes(content)
    value, why = served_json(path, 1 << 20)
    assert value is None and why.startswith(problem)


def test_a_huge_served_file_is_not_read(tmp_path):
    path = tmp_path / "evaluation.json"
    path.write_bytes(b'{"a": "' + b"x" * 2000 + b'"}')
    assert served_json(path, 1000) == (None, "is larger than 0 MiB")
    assert served_json(path, 1 << 20)[0] == {"a": "x" * 2000}


@pytest.mark.parametrize("record, problem", [
    ({"test_keys": "a/b.png"}, "'test_keys'"),
    ({"test_keys": [1, 2]}, "'test_keys'"),
    ({"split_rule": [1]}, "'split_rule'"),
    ({"split_rule": {"seed": "7"}}, "'split_rule.seed'"),
    ({"split_rule": {"val_fraction": True}}, "'split_rule.val_fraction'"),
])
def test_a_foreign_evaluation_record_is_named(record, problem):
    assert problem in _record_problem(record)
    assert _record_problem({"test_keys": ["a/b.png"], "split_rule": {"seed": 7}}) == ""
    json.dumps(record)
