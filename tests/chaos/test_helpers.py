"""The chaos helpers' own behaviour, where a mistake would make the fault tests flaky."""

from __future__ import annotations

from pathlib import Path

from tests.chaos.helpers import records


def test_records_leaves_a_half_written_last_line_for_later(tmp_path: Path) -> None:
    # Caught mid-write by a poll (seen in test_node_loss: JSONDecodeError on the last line).
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1}\n{"iteration": 2}\n{"iteration": 3, "env_st')
    assert [r["iteration"] for r in records(tmp_path)] == [1, 2]
    path.write_text('{"iteration": 1}\n{"iteration": 2}\n{"iteration": 3, "env_steps": 9}\n')
    assert [r["iteration"] for r in records(tmp_path)] == [1, 2, 3]
    path.unlink()
    assert records(tmp_path) == []
