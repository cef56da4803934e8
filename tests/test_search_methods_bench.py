"""The search-methods benchmark judges the issue's criteria from its records, not by hand."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from benchmarks.search_methods import (
    METHODS,
    Problem,
    checks,
    describe_runs,
    different_problem,
    kept_ilp,
    kept_runs,
    load_results,
    markdown,
    merge_results,
    plan_runs,
    stop_workers,
)


def _rec(
    method: str, seed: int, best: float, episode: int, warm: float | None, last: float, curve: list[float]
) -> dict[str, Any]:
    return {
        "model": "m",
        "objective": "robust",
        "budget": 0.5,
        "method": method,
        "seed": seed,
        "episodes": len(curve),
        "evaluations": len(curve),
        "best_reward": best,
        "best_episode": episode,
        "warmup_mean": warm,
        "last20_mean": last,
        "val_accuracy": 0.9,
        "test_accuracy": 0.9,
        "test_robust": 0.5,
        "relative_latency": 0.5,
        "wall_s": 1.0,
        "best_so_far": curve,
    }


def test_checks_follow_the_records() -> None:
    fast = [0.0, 0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    slow = [0.0] * 8 + [1.0]
    records = [
        _rec("ddpg", 0, 2.0, 5, 0.1, 0.5, fast),
        _rec("ddpg", 1, 2.1, 6, 0.1, 0.6, fast),
        _rec("random", 0, 1.0, 8, 0.1, 0.1, slow),
        _rec("random", 1, 1.05, 8, 0.1, 0.1, slow),
        _rec("ilp", 0, 1.5, 0, None, 1.5, [1.5]),
        _rec("ilp", 1, 1.5, 0, None, 1.5, [1.5]),
    ]
    found = {c["check"]: c["ok"] for c in checks(records, warmup=3)}
    assert found["DDPG's best episode after warm-up, every seed"]
    assert found["DDPG's last-20% mean > its warm-up mean, every seed"]
    assert found["DDPG's median best beats random's by more than the larger seed spread"]
    assert found["DDPG reaches random's final median best within a third of the episodes"]
    assert found["ddpg better than the ILP (median best reward)"]
    records[0]["best_episode"] = 1  # one seed's best inside the warm-up fails the criterion
    records[4]["best_reward"] = records[5]["best_reward"] = 3.0
    found = {c["check"]: c["ok"] for c in checks(records, warmup=3)}
    assert not found["DDPG's best episode after warm-up, every seed"]
    assert not found["ddpg better than the ILP (median best reward)"]
    text = markdown(records, checks(records, warmup=3))
    assert "| m | robust | 0.50x | ddpg | 2 |" in text and "| NO |" in text


def _done(method: str, seed: int) -> dict[str, Any]:
    return {"record": {"method": method, "seed": seed}, "policy_file": f"{method}-{seed}.json"}


@pytest.mark.parametrize("objective", ["clean", "robust"])
def test_each_warm_start_waits_for_the_ilp_it_starts_from(objective: str) -> None:
    first, follow = plan_runs(objective, list(METHODS), [0, 1, 2])
    names = [(m, s) for m, s, _ in first]
    assert names[0][0] == "ilp" and not any(m == "ddpg+ilp" for m, _ in names)  # the ILP first, warm starts later
    ilps = [s for m, s in names if m == "ilp"]
    uniform = [s for m, s in names if m == "uniform"]
    assert ilps == uniform == ([0] if objective == "clean" else [0, 1, 2])  # seed-free on clean: once
    assert sorted(s for m, s in names if m == "ddpg") == [0, 1, 2]
    queued = {s: [(m, q, ilp["policy_file"]) for m, q, ilp in follow(_done("ilp", s))] for s in ilps}
    if objective == "clean":  # every seed starts from the one ILP
        assert queued[0] == [("ddpg+ilp", q, "ilp-0.json") for q in (0, 1, 2)]
    else:  # each seed from its own
        assert all(queued[s] == [("ddpg+ilp", s, f"ilp-{s}.json")] for s in ilps)
    assert follow(_done("ddpg", 0)) == []


def test_merge_keeps_other_models_with_their_provenance(tmp_path: Path) -> None:
    first = {"commit": "a" * 40, "date": "2026-01-01"}
    second = {"commit": "b" * 40, "date": "2026-01-02"}
    rec = lambda model: {**_rec("ddpg", 0, 1.0, 5, 0.1, 0.5, [1.0]), "model": model}  # noqa: E731
    path = tmp_path / "search_methods.json"
    assert kept_runs(path, ["x"]) == ([], [], {})
    doc = {
        "schema": 1,
        "meta": second,
        "settings": {"episodes": 9},
        "budgets": {"m": {"budget": 0.5}, "k": {"budget": 0.7}, "x": {"budget": 0.6}},
        "records": [rec("m"), rec("k"), rec("x")],
        "earlier": [{"models": ["k"], "meta": first, "settings": {"episodes": 5}}],  # the older form
    }
    path.write_text(json.dumps(doc), encoding="utf-8")
    earlier, records, budgets = kept_runs(path, ["x"])
    assert [r["model"] for r in records] == ["m", "k"] and set(budgets) == {"m", "k"}
    assert {tuple(e["runs"]): e["meta"]["commit"][0] for e in earlier} == {("k",): "a", ("m",): "b"}
    assert all(e["runs"] == {m: ["ddpg"]} for e in earlier for m in e["runs"])
    earlier, records, _ = kept_runs(path, ["m", "k"])  # remeasuring every kept model leaves no earlier run
    assert [r["model"] for r in records] == ["x"] and [list(e["runs"]) for e in earlier] == [["x"]]
    path.write_text(json.dumps({**doc, "schema": 2}), encoding="utf-8")
    with pytest.raises(SystemExit, match="schema 2"):
        kept_runs(path, ["x"])


def test_merge_keeps_the_methods_a_run_does_not_remeasure(tmp_path: Path) -> None:
    """Rerunning DDPG on a model keeps that model's other methods, each with the provenance of the run that measured
    it, and the budget of the model is then the one this run picks (not kept)."""
    old_meta, new_meta = {"commit": "a" * 40, "date": "2026-01-01"}, {"commit": "b" * 40, "date": "2026-01-02"}
    recs = [_rec(m, 0, 1.0, 5, 0.1, 0.5, [1.0]) for m in ("uniform", "random", "ilp", "ddpg", "ddpg+ilp")]
    path = tmp_path / "search_methods.json"
    doc = {"schema": 1, "meta": new_meta, "settings": {}, "budgets": {"m": {"budget": 0.5}}, "records": recs}
    doc["earlier"] = [{"runs": {"m": ["ilp", "random"]}, "meta": old_meta, "settings": {}}]
    path.write_text(json.dumps(doc), encoding="utf-8")
    earlier, records, budgets = kept_runs(path, ["m"], ["ddpg", "ddpg+ilp"])
    assert [r["method"] for r in records] == ["uniform", "random", "ilp"]
    assert budgets == {"m": {"budget": 0.5}}  # kept, so that this run's own budget is checked against it
    assert [(e["runs"], e["meta"]["commit"][0]) for e in earlier] == [
        ({"m": ["random", "ilp"]}, "a"),
        ({"m": ["uniform"]}, "b"),
    ]
    assert describe_runs(earlier[0]["runs"]) == "m (random, ilp)"
    assert describe_runs({"m": list(METHODS)}) == "m"


def test_merge_from_replaces_the_pairs_it_measured_and_refuses_another_checkpoint() -> None:
    """Two runs in parallel (other models or methods, other --out) become one results file; records measured on
    another checkpoint (a uniform policy scores differently) never sit beside each other."""
    uniform = [{"policy": "W8A8", "relative_latency": 1.0, "val_accuracy": 0.97}]
    problem = {"target": "t", "budget": 0.5, "fp32_val_accuracy": 0.98, "uniform": uniform}
    old_meta, new_meta = {"commit": "a" * 40, "date": "2026-01-01"}, {"commit": "b" * 40, "date": "2026-01-02"}
    base = {
        "schema": 1,
        "meta": old_meta,
        "settings": {"warmup": 3},
        "budgets": {"m": problem},
        "records": [_rec(m, 0, 1.0, 5, 0.1, 0.5, [1.0]) for m in ("random", "ddpg")],
    }
    new = {**base, "meta": new_meta, "records": [_rec("ddpg", 0, 2.0, 6, 0.1, 0.9, [2.0])]}
    doc, dropped = merge_results(base, new)
    assert sorted((r["method"], r["best_reward"]) for r in doc["records"]) == [("ddpg", 2.0), ("random", 1.0)]
    assert doc["meta"] == new_meta and [(e["runs"], e["meta"]) for e in doc["earlier"]] == [
        ({"m": ["random"]}, old_meta)
    ]
    assert dropped == []
    assert different_problem(problem, problem) is None
    other = {**problem, "uniform": [{**uniform[0], "val_accuracy": 0.96}]}
    assert "another checkpoint" in (different_problem(problem, other) or "")
    assert "budget" in (different_problem(problem, {**problem, "budget": 0.6}) or "")
    doc, dropped = merge_results(base, {**new, "budgets": {"m": other}})  # another checkpoint: m's old records go
    assert (
        [(r["method"], r["best_reward"]) for r in doc["records"]] == [("ddpg", 2.0)]
        and "earlier" not in doc
        or not doc["earlier"]
    )
    assert len(dropped) == 1 and "random dropped" in dropped[0] and "another checkpoint" in dropped[0]
    assert doc["budgets"]["m"] == other
    assert merge_results(base, new, models=["k"]) == (base, [])  # only the asked models' records are taken


def test_merge_from_touches_only_the_pairs_it_holds_and_the_stale_models() -> None:
    """Two models, one of them retrained (another checkpoint): the retrained one is replaced whole, the other keeps
    every record the new file does not hold (a file from a partial run holds only some pairs)."""
    uniform = [{"policy": "W8A8", "relative_latency": 1.0, "val_accuracy": 0.97}]
    problem = {"target": "t", "budget": 0.5, "fp32_val_accuracy": 0.98, "uniform": uniform}
    retrained = {**problem, "fp32_val_accuracy": 0.97}
    meta = {"commit": "a" * 40, "date": "2026-01-01"}
    rec = lambda model, method: {**_rec(method, 0, 1.0, 5, 0.1, 0.5, [1.0]), "model": model}  # noqa: E731
    methods = ("uniform", "random", "ilp", "ddpg")
    base = {
        "schema": 1,
        "meta": meta,
        "settings": {"warmup": 3},
        "budgets": {"r": problem, "v": problem},
        "records": [rec(m, meth) for m in ("r", "v") for meth in methods],
    }
    new = {**base, "meta": {**meta, "commit": "b" * 40}, "budgets": {"r": retrained, "v": problem}}
    new["records"] = [rec("r", "ilp"), rec("v", "ddpg")]
    doc, dropped = merge_results(base, new)
    held = sorted((r["model"], r["method"]) for r in doc["records"])
    assert held == [
        ("r", "ilp"),
        ("v", "ddpg"),
        ("v", "ilp"),
        ("v", "random"),
        ("v", "uniform"),
    ]
    assert dropped == ["r: uniform, random, ddpg dropped (fp32_val_accuracy 0.98 vs 0.97)"]
    assert [(e["runs"], e["meta"]["commit"][0]) for e in doc["earlier"]] == [({"v": ["uniform", "random", "ilp"]}, "a")]
    assert doc["budgets"] == {"r": retrained, "v": problem}


def test_an_older_results_file_reads_its_earlier_runs_per_method(tmp_path: Path) -> None:
    doc = {
        "schema": 1,
        "meta": {},
        "settings": {},
        "records": [_rec("ddpg", 0, 1.0, 5, 0.1, 0.5, [1.0]), _rec("ilp", 0, 1.0, 0, None, 1.0, [1.0])],
        "earlier": [{"models": ["m"], "meta": {}, "settings": {}}],
    }
    path = tmp_path / "search_methods.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    assert load_results(path)["earlier"][0]["runs"] == {"m": ["ilp", "ddpg"]}
    with pytest.raises(SystemExit, match="cannot read"):
        load_results(tmp_path / "missing.json")


def test_a_kept_ilp_answer_starts_the_warm_starts_at_once(tmp_path: Path) -> None:
    """Without ilp in --methods, ddpg+ilp starts from the kept ILP run whose answer is still on disk (same budget):
    nothing waits, and no ILP is measured again; a seed without one still measures its own."""
    ilp = {**_rec("ilp", 0, 1.5, 0, None, 1.5, [1.5]), "objective": "clean"}
    folder = tmp_path / "m" / "clean" / "ilp" / "seed0"
    problem = Problem("m", "clean", "t", 0.5, tmp_path / "m.pt")
    assert kept_ilp([ilp], problem, tmp_path) == []  # its answer is gone
    (folder / "config").mkdir(parents=True)
    (folder / "policy.json").write_text("{}", encoding="utf-8")
    job = {"fields": {"checkpoint": str(tmp_path / "m.pt"), "target": "t", "budget": "latency=0.5x"}}
    (folder / "config" / "job.json").write_text(json.dumps(job), encoding="utf-8")
    assert kept_ilp([ilp], replace(problem, budget=0.6), tmp_path) == []  # another budget
    assert kept_ilp([ilp], replace(problem, checkpoint=tmp_path / "other.pt"), tmp_path) == []  # another model file
    known = kept_ilp([ilp], problem, tmp_path)
    first, _ = plan_runs("clean", ["ddpg", "ddpg+ilp"], [0, 1, 2], known)
    assert [(m, s) for m, s, _ in first] == [("ddpg+ilp", 0), ("ddpg+ilp", 1), ("ddpg+ilp", 2)] + [
        ("ddpg", s) for s in (0, 1, 2)
    ]
    assert all(done["policy_file"] == str(folder / "policy.json") for m, _, done in first if m == "ddpg+ilp")
    robust = [{**k, "record": {**k["record"], "objective": "robust"}} for k in known]
    first, _ = plan_runs("robust", ["ddpg+ilp"], [0, 1], robust)
    assert [(m, s) for m, s, _ in first] == [("ddpg+ilp", 0), ("ilp", 1)]
    first, _ = plan_runs("clean", ["ilp", "ddpg+ilp"], [0], known)  # --resume keeps the ILP record: reused
    assert [(m, s) for m, s, _ in first] == [("ddpg+ilp", 0)]


def test_resume_runs_only_what_the_results_lack() -> None:
    """A benchmark stopped midway (or started by older code) goes on: recorded (method, seed) runs are not run again,
    and a recorded warm start is not queued again when its ILP is kept."""
    done = {("uniform", 0), ("random", 0), ("random", 1), ("ilp", 0), ("ddpg+ilp", 1)}
    known = [{"record": {"method": "ilp", "seed": 0}, "policy_file": "ilp.json"}]
    first, follow = plan_runs("clean", list(METHODS[:5]), [0, 1, 2], known, done)
    assert sorted((m, s) for m, s, _ in first) == [
        ("ddpg", 0),
        ("ddpg", 1),
        ("ddpg", 2),
        ("ddpg+ilp", 0),
        ("ddpg+ilp", 2),
        ("random", 2),
    ]


def _deaf_sleep(seconds: float) -> None:
    """A run whose code caught SIGTERM (as a search with its own handler would): only SIGKILL ends it."""
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)


def test_stopping_the_pool_ends_the_runs_in_its_workers() -> None:
    """A killed or failed benchmark must not leave workers running their searches on (orphans burn cores)."""
    import multiprocessing as mp
    import time
    from concurrent.futures import ProcessPoolExecutor

    def gone(pid: int) -> bool:  # the executor's own thread may reap the child first: ask the kernel, not is_alive()
        stat = Path(f"/proc/{pid}/stat")
        try:
            return stat.read_text().split()[2] in ("Z", "X")
        except OSError:
            return True

    pool = ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("fork"))
    futures = [pool.submit(_deaf_sleep, 60), pool.submit(time.sleep, 60), pool.submit(time.sleep, 60)]
    deadline = time.monotonic() + 10
    while sum(f.running() for f in futures) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = [p.pid for p in pool._processes.values()]
    assert len(pids) == 2 and not any(gone(pid) for pid in pids)
    stop_workers(pool, grace_s=2.0)
    deadline = time.monotonic() + 15
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(gone(pid) for pid in pids)
    assert all(f.cancelled() or f.exception(timeout=10) is not None for f in futures)  # none ran its minute out


def test_each_run_names_the_reward_baseline_its_ddpg_used() -> None:
    from benchmarks.search_methods import _baseline

    assert _baseline({"reward_baseline": "none"}, {}) == "none"
    assert _baseline({}, {"commit": "not-a-commit"}) == "unknown"  # never guessed


def test_a_recorded_ilp_policy_warm_starts_without_its_run_folder(tmp_path: Path) -> None:
    """Records carry their best policy, so --resume on a fresh checkout (no run folders) need not measure the ILP
    again for ddpg+ilp."""
    from hwsearch.policy import Policy, uniform_policy

    answer = uniform_policy(["a", "b"], 4, 8)
    ilp = {**_rec("ilp", 0, 1.5, 0, None, 1.5, [1.5]), "objective": "clean", "policy": answer.to_dict()}
    known = kept_ilp([ilp], Problem("m", "clean", "t", 0.5, tmp_path / "m.pt"), tmp_path)
    assert len(known) == 1
    assert Policy.from_json(Path(known[0]["policy_file"]).read_text(encoding="utf-8")) == answer
