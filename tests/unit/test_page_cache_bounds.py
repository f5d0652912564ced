"""portal.page_cache: RenderedCache bounded by entries and by the characters it keeps; cached_markup keeps a drawing
only under the key it was drawn for."""

from portal.page_cache import RenderedCache, cached_markup


def test_the_characters_kept_stay_within_the_budget_least_recently_used_out_first():
    cache = RenderedCache(100, max_chars=30)
    cache.put(("a",), ("x" * 9,))  # 10
    cache.put(("b",), ("x" * 9,))  # 20
    assert cache.get(("a",)) == ("x" * 9,)  # now b is the least recently used
    cache.put(("c",), ("x" * 14,))  # 35 > 30: b goes
    assert cache.get(("b",)) is None and cache.get(("a",)) and cache.get(("c",))
    assert cache.kept_chars == 25


def test_an_entry_over_the_budget_is_not_kept_and_replaces_its_old_value():
    cache = RenderedCache(100, max_chars=30)
    cache.put(("a",), ("small",))
    cache.put(("a",), ("x" * 40,))
    assert cache.get(("a",)) is None and len(cache) == 0 and cache.kept_chars == 0
    cache.put(("a",), ("again",))
    cache.put(("a",), ("again!",))
    assert cache.kept_chars == 7 and len(cache) == 1


def test_a_drawing_is_kept_only_when_its_key_still_holds_once_drawn():
    cache = RenderedCache(100)
    saved = {"value": "old"}

    def draw_while_saved(new: str):
        def draw(_key):
            saved["value"] = new  # a save lands between the key's read and the drawing
            return f"page of {new}"
        return draw

    # The drawing shows the new value, but the key read first was the old one's: nothing is kept under it.
    assert cached_markup(cache, lambda: saved["value"], draw_while_saved("new")) == "page of new"
    assert cache.get("old") is None and len(cache) == 0
    # Nothing changed while drawing: kept, and served from the cache the next time.
    assert cached_markup(cache, lambda: saved["value"], lambda _key: "page of new") == "page of new"
    assert cached_markup(cache, lambda: saved["value"], lambda _key: "drawn again") == "page of new"
