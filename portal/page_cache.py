"""Rendered markup kept per process (bounded, least recently used first out), with the CSRF token put in per request.

A page part is cached under a key holding every value it is drawn from; what belongs to a session (its CSRF token)
is never cached: the part is drawn with a placeholder in the token's place, kept as the pieces around it, and
joined with the request's own token when served.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from flask import current_app, g, render_template
from flask_wtf.csrf import generate_csrf
from markupsafe import Markup, escape

# Never shown to anyone and new in each process; each draw adds a random part of its own (csrf_placeholder), made
# after the values it draws were saved, so not even a value holding a placeholder learnt somehow can imitate it.
_PLACEHOLDER = "csrf-" + secrets.token_hex(16)


def chars(value: Any) -> int:
    """The characters of text a key or value holds (its strings, inside tuples and lists): what it costs to keep."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, tuple | list):
        return sum(chars(item) for item in value)
    return 0


class RenderedCache:
    """A bounded LRU mapping of keys to values, safe across threads; a size of 0 keeps nothing.

    Bounded twice: at most ``size`` entries, and at most ``max_chars`` characters of text in keys and values
    together (None: no such bound). A part holds values a tenant's CRM writes (a test's message quotes the CRM
    user's name, as long as the CRM makes it), so a count alone would not bound the memory; an entry larger than
    the whole budget is not kept.
    """

    def __init__(self, size: int, max_chars: int | None = None):
        self.size = size
        self.max_chars = max_chars
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._costs: dict[Hashable, int] = {}
        self._chars = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        """The value kept under ``key`` (now the most recently used), or None."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def get_many(self, keys: Sequence[Hashable]) -> list[Any]:
        """The value kept under each key (None where none is), each now among the most recently used: one lock."""
        with self._lock:
            items = self._items
            found = [items.get(key) for key in keys]
            for key, value in zip(keys, found, strict=True):
                if value is not None:
                    items.move_to_end(key)
            return found

    def put(self, key: Hashable, value: Any) -> None:
        """Keep ``value`` under ``key``, dropping the least recently used beyond the size or the characters."""
        if self.size <= 0:
            return
        cost = chars(key) + chars(value)
        with self._lock:
            if key in self._items:
                self._drop(key)
            if self.max_chars is not None and cost > self.max_chars:
                return
            self._items[key] = value
            self._costs[key] = cost
            self._chars += cost
            while len(self._items) > self.size or (self.max_chars is not None and self._chars > self.max_chars):
                self._drop(next(iter(self._items)))

    def _drop(self, key: Hashable) -> None:
        """Forget ``key`` (the lock held)."""
        del self._items[key]
        self._chars -= self._costs.pop(key)

    @property
    def kept_chars(self) -> int:
        """The characters of text kept now, keys and values."""
        return self._chars

    def __len__(self) -> int:
        return len(self._items)


def app_cache(name: str, scale: int = 1) -> RenderedCache:
    """The app's cache called ``name``, sized by ``RENDERED_CACHE_SIZE`` (0 turns caching off) times ``scale`` (a
    cache of a page's lines keeps many small parts) and ``RENDERED_CACHE_BYTES`` (the characters of text it keeps).

    Off while templates reload when they change (debug): a kept part would not follow an edited template.
    """
    caches = current_app.extensions.setdefault("rendered_caches", {})
    found = caches.get(name)
    if found is None:
        size = 0 if current_app.jinja_env.auto_reload else current_app.config["RENDERED_CACHE_SIZE"] * scale
        found = caches.setdefault(name, RenderedCache(size, current_app.config["RENDERED_CACHE_BYTES"]))
    return found


@contextmanager
def csrf_placeholder() -> Iterator[str]:
    """Inside the block, forms and ``csrf_token()`` draw a placeholder (the one yielded, new for each block) instead
    of the session's token.

    Flask-WTF keeps the request's token in ``g`` under the token's field name; the real one (if any) is put back.
    """
    name = current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token")
    real = g.pop(name, None)
    placeholder = f"{_PLACEHOLDER}-{secrets.token_hex(8)}"
    setattr(g, name, placeholder)
    try:
        yield placeholder
    finally:
        g.pop(name, None)
        if real is not None:
            setattr(g, name, real)


def split_tokens(markup: str, placeholder: str) -> tuple[str, ...]:
    """The markup drawn inside :func:`csrf_placeholder`, as the pieces around the token's places."""
    return tuple(markup.split(placeholder))


def with_token(pieces: tuple[str, ...]) -> Markup:
    """The pieces joined with this request's CSRF token, as a template would have drawn it."""
    return Markup(str(escape(generate_csrf())).join(pieces))  # noqa: S704 - pieces are rendered, escaped markup


def cached_markup(cache: RenderedCache, read_key: Callable[[], Hashable], draw: Callable[[Any], Any]) -> Any:
    """The value kept under the key ``read_key()`` reads, or what ``draw(key)`` returns.

    What was drawn is kept under that key only when the key, read again once drawn, is the same: a save between the
    first read and the drawing would otherwise keep the new drawing under the old key.
    """
    key = read_key()
    found = cache.get(key)
    if found is None:
        found = draw(key)
        if read_key() == key:
            cache.put(key, found)
    return found


def drawn_pieces(template: str, **context) -> tuple[str, ...]:
    """TEMPLATE drawn with a placeholder for the CSRF token, as the pieces around the token's places (see
    :func:`with_token`)."""
    with csrf_placeholder() as placeholder:
        return split_tokens(render_template(template, **context), placeholder)


def kept_lines(cache: RenderedCache, keys: Sequence[Hashable], draw: Callable[[Any], tuple[str, bool]]) -> list[str]:
    """A page's lines, each under its key (every value the line shows): kept ones from the cache, the others drawn
    by ``draw(key)``, which says too whether the line may be kept (a line that changes with the clock may not)."""
    lines = cache.get_many(keys)
    for index, line in enumerate(lines):
        if line is None:
            line, keep = draw(keys[index])
            lines[index] = line
            if keep:
                cache.put(keys[index], line)
    return lines
