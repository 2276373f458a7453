"""The result cache on its own: sizes, keys, the budget and the eviction order."""

from __future__ import annotations

import sys

from engine.cache import ResultCache, make_key, sizeof


class _Sized:
    def __init__(self, n: int) -> None:
        self.n = n

    def __loom_cache_size__(self) -> int:
        return self.n


class _TensorLike:
    def element_size(self) -> int:
        return 4

    def nelement(self) -> int:
        return 1000


class _ArrayLike:
    nbytes = 12345


def test_sizeof() -> None:
    assert sizeof(bytearray(10_000)) >= 10_000
    assert sizeof(b"x" * 5000) == sys.getsizeof(b"x" * 5000)
    assert sizeof(_Sized(777)) == 777
    assert sizeof(_TensorLike()) == 4000
    assert sizeof(_ArrayLike()) == 12345
    assert sizeof({"a": _Sized(100), "b": [_Sized(50), _Sized(50)]}) >= 200


def test_make_key_is_stable_and_order_independent() -> None:
    assert make_key({"a": 1, "b": [1, 2]}) == make_key({"b": [1, 2], "a": 1})
    assert make_key({"a": 1}) != make_key({"a": 1.0}) != make_key({"a": "1"})
    assert len(make_key({"x": float("nan")})) == 64


D = sys.getsizeof({"v": 0})  # the outputs dict itself counts too (and the empty ui dict)
E = sys.getsizeof({})


def _size(n: int) -> int:
    return D + n + E


def test_eviction_order_is_lowest_compute_time_per_byte_first() -> None:
    budget = _size(300) * 3 + _size(100)
    cache = ResultCache(budget_bytes=budget - 1)
    # compute seconds per byte: b lowest, then d, then a; c (same time, fewer bytes) highest
    cache.put("a", {"v": _Sized(300)}, {}, compute_s=1.0)
    cache.put("b", {"v": _Sized(300)}, {}, compute_s=0.01)
    cache.put("c", {"v": _Sized(100)}, {}, compute_s=1.0)
    assert cache.total_bytes == 2 * _size(300) + _size(100) and cache.evictions == 0
    cache.put("d", {"v": _Sized(300)}, {}, compute_s=0.3)  # one byte over budget: b goes
    assert set(cache._entries) == {"a", "c", "d"}
    assert cache.evictions == 1 and cache.total_bytes == 2 * _size(300) + _size(100)
    cache.set_budget(_size(100) + _size(300) - 1)  # d goes next, then a
    assert set(cache._entries) == {"c"} and cache.evictions == 3
    assert cache.total_bytes == _size(100)
    stats = cache.stats()
    assert stats == {"entries": 1, "bytes": _size(100), "hits": 0, "misses": 0,
                     "evictions": 3}


def test_least_recently_used_goes_first_among_equals() -> None:
    cache = ResultCache(budget_bytes=3 * _size(3000))
    for k in "xyz":
        cache.put(k, {"v": _Sized(3000)}, {}, compute_s=0.1)
    assert cache.get("x") is not None  # x is now the most recently used
    cache.put("w", {"v": _Sized(3000)}, {}, compute_s=0.1)
    assert set(cache._entries) == {"x", "z", "w"}


def test_hits_misses_replace_and_clear() -> None:
    cache = ResultCache(budget_bytes=10_000)
    assert cache.get("k") is None
    cache.put("k", {"v": 1}, {"text": "t"}, 0.1)
    entry = cache.get("k")
    assert entry.outputs == {"v": 1} and entry.ui == {"text": "t"}
    assert (cache.hits, cache.misses) == (1, 1)
    before = cache.total_bytes
    cache.put("k", {"v": _Sized(500)}, {}, 0.1)  # replacing counts the new size only
    assert len(cache) == 1 and cache.total_bytes == cache._entries["k"].size != before
    cache.put("big", {"v": _Sized(20_000)}, {}, 1.0)  # bigger than the budget: not kept
    assert "big" not in cache and len(cache) == 1
    cache.clear()
    assert (len(cache), cache.total_bytes) == (0, 0) and cache.get("k") is None
