"""app/cli.py: library errors print as ``error:`` + ``hint:`` lines with exit status 2; a bug keeps its traceback."""

from __future__ import annotations

import argparse

import pytest

from lookalike.app import cli
from lookalike.common.errors import IndexLocked, LookalikeError, WeightsNotFound
from lookalike.indexer import GROUP_MODES, KEEP_RULES


def _run_with(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> int:
    def handler(args: argparse.Namespace) -> int:
        raise exc

    real = cli.build_parser

    def parser() -> argparse.ArgumentParser:
        p = real()
        p.set_defaults(func=handler)
        return p

    monkeypatch.setattr(cli, "build_parser", parser)
    return cli.main([])


def test_library_error_prints_message_and_hint(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    rc = _run_with(monkeypatch, IndexLocked("another process is writing the index /x", hint="wait for it"))
    err = capsys.readouterr().err
    assert rc == 2 and err == "error: another process is writing the index /x\nhint: wait for it\n"


def test_os_error_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    assert _run_with(monkeypatch, PermissionError(13, "Permission denied", "/x/y")) == 2
    assert capsys.readouterr().err == "error: [Errno 13] Permission denied: '/x/y'\n"


@pytest.mark.parametrize("exc", [RuntimeError("a bug"), KeyError("oops"), TypeError("bad call")])
def test_a_bug_is_never_disguised(monkeypatch: pytest.MonkeyPatch, exc: Exception) -> None:
    with pytest.raises(type(exc)):
        _run_with(monkeypatch, exc)


def test_errors_match_their_builtins() -> None:
    e = WeightsNotFound("m", [], ["/cache"], reason="offline")
    assert isinstance(e, FileNotFoundError) and isinstance(e, LookalikeError)
    assert e.message.startswith("weights for metric 'm' not found") and "weights folder" in (e.hint or "")
    assert isinstance(IndexLocked("x"), ValueError)


def test_dedup_flags_offer_the_indexers_choices() -> None:
    sub = cli.build_parser()._subparsers._group_actions[0].choices["dedup"]  # type: ignore[union-attr]
    choices = {a.dest: a.choices for a in sub._actions if a.choices}
    assert tuple(choices["group"]) == GROUP_MODES and tuple(choices["keep"]) == KEEP_RULES
