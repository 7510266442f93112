"""The store's file: read-only commands change nothing, a foreign SQLite file is refused and left
as it was, failed creations leave nothing behind, and `verify` takes anchors."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from apollo_es import EventStore
from apollo_es.cli import cli
from apollo_es.errors import StoreError
from conftest import make_events

READ_ONLY = (["runs"], ["log", "run-1"], ["show", "run-1", "1"], ["verify"], ["stats"], ["tree", "run-1"], ["audit", "run-1"],
             ["watch", "run-1", "--no-follow"])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture()
def foreign(tmp_path) -> Path:
    path = tmp_path / "other_app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
    return path


@pytest.mark.parametrize("args", [*READ_ONLY, ["append", "run-1", "RunFinished", '{"status": "finished"}'], ["init"]])
def test_a_foreign_database_is_refused_and_left_as_it_was(foreign, args):
    before = digest(foreign)
    result = invoke(*args, "--db", str(foreign))
    assert result.exit_code == 1 and result.output.startswith("Error:"), result.output
    assert "not an apollo-es store" in result.output
    assert digest(foreign) == before and not Path(f"{foreign}-wal").exists()
    with sqlite3.connect(foreign) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


@pytest.mark.parametrize("args", READ_ONLY)
def test_read_only_commands_do_not_upgrade_an_older_store(tmp_path, args):
    path = tmp_path / "apollo.db"
    with EventStore(path) as store:
        store.append("run-1", make_events(3))
        store.connection.execute("DROP TABLE leases")  # as a store from before leases
    before = digest(path)
    result = invoke(*args, "--db", str(path))
    assert result.exit_code == 0, result.output
    assert digest(path) == before
    with sqlite3.connect(path) as conn:
        assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'leases'").fetchone()


def test_a_store_that_cannot_be_set_up_is_not_left_behind(tmp_path, monkeypatch):
    def full_disk(self):
        raise StoreError("database or disk is full")

    monkeypatch.setattr(EventStore, "_create_schema", full_disk)
    with pytest.raises(StoreError, match="disk is full"):
        EventStore(tmp_path / "new.db")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_import_creates_no_store(tmp_path):
    bad = tmp_path / "bad.traj"
    bad.write_text("{not json")
    result = invoke("import", "swe-agent", str(bad), "--db", str(tmp_path / "new.db"))
    assert result.exit_code == 1 and result.output.startswith("Error:")
    assert not (tmp_path / "new.db").exists()


def test_verify_with_anchors_from_stats(tmp_path):
    path = tmp_path / "apollo.db"
    with EventStore(path) as store:
        store.append("run-1", make_events(5))
    db = str(path)
    anchor = json.loads(invoke("stats", "--json", "--db", db).output)["anchor"]
    assert anchor in invoke("stats", "--db", db).output
    (tmp_path / "anchors.txt").write_text(f"# kept in git\n{anchor}\n")
    ok = invoke("verify", "--anchor", anchor, "--anchors", str(tmp_path / "anchors.txt"), "--db", db)
    assert ok.exit_code == 0 and "2 anchor(s) still extended" in ok.output
    wrong = invoke("verify", "--anchor", "0" * 64 + "@3", "--db", db)
    assert wrong.exit_code == 1 and "another hash (the log was rewritten)" in wrong.output
    beyond = invoke("verify", "--anchor", anchor.split("@")[0] + "@9", "--db", db)
    assert beyond.exit_code == 1 and "no longer reaches position 9" in beyond.output
    malformed = invoke("verify", "--anchor", "abc", "--db", db)
    assert malformed.exit_code == 1 and "write HASH@POSITION" in malformed.output
