"""The interleaved timing every measured choice and comparison uses (`dinotwins.timing`), on a fake clock."""

from __future__ import annotations

import types

from dinotwins import timing


def fake_clock(monkeypatch, costs):
    """A clock that each candidate call advances by the next of its `costs`; returns the calls' log."""
    now, calls = [0.0], []

    def candidate(key):
        def run():
            calls.append(key)
            now[0] += costs[key].pop(0)
        return run

    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    return candidate, calls


def test_rounds_reverse_the_order_every_other_round_and_warmup_rounds_are_not_kept(monkeypatch):
    candidate, calls = fake_clock(monkeypatch, {"a": [9.0, 1.0, 2.0, 3.0], "b": [9.0, 4.0, 5.0, 6.0]})
    resets = []
    seconds = timing.interleaved_seconds({"a": candidate("a"), "b": candidate("b")}, rounds=3, warmup=1,
                                         before_each=resets.append)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert resets == calls  # each reset comes just before its candidate's call
    assert seconds == {"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0]}


def test_best_seconds_keeps_each_candidates_fastest_round_so_a_loaded_round_does_not_decide(monkeypatch):
    candidate, _ = fake_clock(monkeypatch, {"fast": [5.0, 1.0, 1.0], "slow": [5.0, 5.0, 2.0]})  # round 0 loaded
    best = timing.best_seconds({"fast": candidate("fast"), "slow": candidate("slow")}, rounds=3)
    assert best == {"fast": 1.0, "slow": 2.0}
