"""The cache the parallel workers share, and its clients: every worker consults it before it evaluates, so a
policy scored by one worker is not scored again by another (see :mod:`hwsearch.parallel`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hwsearch.evaluate import Evaluator
from hwsearch.records import EvalResult

__all__ = ["DictCache", "CacheStore", "RayCache", "SharedCacheEvaluator"]


class DictCache:
    """Cache client over a dict-like store (a multiprocessing manager proxy, or a plain dict in one process)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def get(self, key: tuple) -> EvalResult | None:
        return self.store.get(key)

    def put(self, key: tuple, value: EvalResult) -> None:
        self.store[key] = value

    def items(self) -> list[tuple[tuple, EvalResult]]:
        return list(self.store.items())


class CacheStore:
    """Body of the Ray cache actor: one dict every worker consults before evaluating."""

    def __init__(self, initial: Mapping[tuple, EvalResult]) -> None:
        self.data = dict(initial)

    def get(self, key: tuple) -> EvalResult | None:
        return self.data.get(key)

    def put(self, key: tuple, value: EvalResult) -> None:
        self.data[key] = value

    def items(self) -> list[tuple[tuple, EvalResult]]:
        return list(self.data.items())


class RayCache:
    """Cache client over the Ray cache actor; ``put`` does not wait (calls from one worker stay ordered)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def get(self, key: tuple) -> EvalResult | None:
        import ray

        return ray.get(self.handle.get.remote(key))

    def put(self, key: tuple, value: EvalResult) -> None:
        self.handle.put.remote(key, value)

    def items(self) -> list[tuple[tuple, EvalResult]]:
        import ray

        return ray.get(self.handle.items.remote())


class SharedCacheEvaluator:
    """Wraps a worker's evaluator: the shared cache first, the worker's own evaluation on a miss.

    Two workers that reach the same unseen policy in the same step both evaluate it (no locking); results are
    deterministic, so whichever lands last in the cache is the same figure.
    """

    def __init__(self, inner: Any, cache: Any) -> None:
        self.inner = inner
        self.cache_client = cache

    def evaluate(self, policy: Any) -> EvalResult:
        key = policy.key()
        hit = self.cache_client.get(key)
        if hit is not None:
            if isinstance(self.inner, Evaluator):
                self.inner.count_hit()
            return hit
        result = self.inner.evaluate(policy)
        self.cache_client.put(key, result)
        return result

    def __getattr__(self, name: str) -> Any:  # the inner evaluator's timings, cache, attacks, ...
        if name in ("inner", "cache_client"):
            raise AttributeError(name)
        return getattr(self.inner, name)
