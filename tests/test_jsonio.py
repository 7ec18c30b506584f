import pytest

from reflectevo.errors import ReflectEvoError
from reflectevo.jsonio import Journal, atomic_open, read_jsonl, write_jsonl


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2\n{"a": 3}\n')
    with pytest.raises(ReflectEvoError, match=r"x\.jsonl:3: malformed JSON line"):
        read_jsonl(p)


def test_non_object_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('[1, 2]\n')
    with pytest.raises(ReflectEvoError, match=r"x\.jsonl:1: expected a JSON object"):
        read_jsonl(p)


def test_torn_tail_is_dropped_only_when_tolerated(tmp_path):
    p = tmp_path / "j.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert read_jsonl(p, tolerate_torn_tail=True) == [{"a": 1}, {"a": 2}]
    with pytest.raises(ReflectEvoError, match=":3:"):
        read_jsonl(p)


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.jsonl"
    write_jsonl(target, [{"old": True}])
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("partial")
            raise RuntimeError("crash")
    assert read_jsonl(target) == [{"old": True}]
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_journal_cuts_a_torn_tail_before_appending(tmp_path):
    p = tmp_path / "journal.jsonl"
    p.write_text('{"a": 1}\n{"a": ')
    with Journal(p) as j:
        j.append_batch([{"a": 2}])
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]
