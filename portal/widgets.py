"""Form inputs drawn from attribute strings prepared once per field and attribute set (WTForms' markup, cheaper).

WTForms draws every ``<input>`` by listing the field's flags with ``dir()``, sorting the attributes and formatting
each through ``Markup.format``: about a third of Edit Settings' time. The portal's forms draw through
:class:`PreparedMeta` instead (WTForms' own hook for drawing fields, ``Meta.render_field``): the escaped
attributes of a field are prepared once, and each request adds only what changes, the value and ``checked``.
The markup is WTForms' own, character for character (tests/unit/test_widgets.py compares the two).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from markupsafe import Markup, escape
from wtforms import widgets
from wtforms.meta import DefaultMeta
from wtforms.widgets.core import clean_key

# The widgets drawn here: exactly these classes (a subclass may draw differently, so WTForms draws it).
_PREPARED = {
    widgets.TextInput, widgets.PasswordInput, widgets.URLInput, widgets.EmailInput, widgets.NumberInput,
    widgets.HiddenInput, widgets.CheckboxInput, widgets.RadioInput, widgets.TelInput, widgets.SearchInput,
}
_QUOTE = '"'
# Values whose equality means the same drawing, given their type: only these key the prepared attributes. Others
# can be equal yet drawn apart (-0.0 and 0.0, Decimal("1.0") and Decimal("1.00"), (True,) and (1,)): drawn per call.
_KEYABLE = {str, Markup, int, bool, type(None)}
# Attributes that hold what a user typed: each request's own, so never prepared.
_TYPED = ("value", "data-validated")


def attribute(key: str, value: Any) -> str | None:
    """One attribute as WTForms' ``html_params`` draws it (None for False): key and value escaped."""
    if value is True:
        return str(escape(key))
    if value is False:
        return None
    # escape() turns " into &#34;; a Markup value is kept as it is, so its own quotes are escaped here.
    return f'{escape(key)}="{str(escape(value)).replace(_QUOTE, "&quot;")}"'


@lru_cache(maxsize=4096)
def _prepared(static: tuple[tuple[str, type, Any], ...], slots: tuple[str, ...]) -> tuple[str | tuple[str], ...]:
    """The attributes in WTForms' order: a drawn string for a fixed one, ``(key,)`` where a changing one goes.

    Each value comes with its type: Markup("<i>") equals "<i>" and True equals 1, but they are drawn differently.
    Bounded: a field's fixed attributes change with the page (an integration's id in a URL), not per request; what
    a user typed (``_TYPED``) is never among them.
    """
    order = sorted([(key, attribute(key, value)) for key, _type, value in static] + [(key, (key,)) for key in slots])
    return tuple(drawn for _key, drawn in order if drawn is not None)


def draw_input(field: Any, render_kw: dict[str, Any]) -> Markup:
    """What ``field.widget(field, **render_kw)`` draws for an input widget, from its prepared attributes."""
    widget = field.widget
    kwargs = dict(render_kw)
    dynamic: dict[str, Any] = {}
    if isinstance(widget, widgets.PasswordInput) and widget.hide_value:
        kwargs["value"] = ""
    elif isinstance(widget, widgets.CheckboxInput) and "checked" not in kwargs:
        if getattr(field, "checked", field.data):
            dynamic["checked"] = True
    elif isinstance(widget, widgets.RadioInput) and "checked" not in kwargs and field.checked:
        dynamic["checked"] = True
    kwargs.setdefault("id", field.id)
    kwargs.setdefault("type", widget.input_type)
    dynamic["value"] = field._value()
    # What the user typed comes with each request: drawn per call, never a key of the prepared attributes.
    for key in _TYPED:
        if key in kwargs:
            dynamic[key] = kwargs.pop(key)
    for key, value in vars(field.flags).items():
        if key in widget.validation_attrs and key not in kwargs:
            kwargs[key] = value() if callable(value) else value
    kwargs["name"] = field.name
    static, slots = tuple((key, type(value), value) for key, value in kwargs.items()), tuple(dynamic)
    if all(kind in _KEYABLE for _key, kind, _value in static):
        prepared = _prepared(static, slots)
    else:  # a value that cannot key the prepared attributes (a list, a float…): prepared for this call only
        prepared = _prepared.__wrapped__(static, slots)
    parts = []
    for drawn in prepared:
        if type(drawn) is tuple:
            drawn = attribute(drawn[0], dynamic[drawn[0]])
        if drawn is not None:
            parts.append(drawn)
    return Markup(f"<input {' '.join(parts)}>")  # noqa: S704 - every part went through attribute()'s escape()


class PreparedMeta(DefaultMeta):
    """A form ``Meta`` whose inputs are drawn from prepared attributes; other widgets are WTForms' own."""

    def render_field(self, field: Any, render_kw: dict[str, Any]) -> Markup:
        """Draw a field as WTForms does, its ``<input>`` from attributes prepared once."""
        if type(field.widget) not in _PREPARED or getattr(field, "_datalist", None) is not None:
            return super().render_field(field, render_kw)
        render_kw = {clean_key(key): value for key, value in render_kw.items()}
        other_kw = getattr(field, "render_kw", None)
        if other_kw is not None:
            render_kw = dict({clean_key(key): value for key, value in other_kw.items()}, **render_kw)
        return draw_input(field, render_kw)


# The whitespace the settings' field macro wrote between its parts, kept so that pages keep their bytes.
_LEAD = "\n  " * 8


def labelled_field(field: Any, help: str | None = None, attrs: dict[str, Any] | None = None) -> Markup:
    """A settings field with its label, help and errors, in one call: the markup the ``field`` macro wrote.

    The help and every error describe the input (``aria-describedby``), so screen readers read them with it; an
    invalid input says so (``aria-invalid``) and takes the focus after an htmx update (``data-focus``, portal.js).
    A checkbox is a switch (``role="switch"``) inside its label. Edit Settings draws 20 of these per request.
    """
    field_id = escape(field.id)
    errors = field.errors
    kw = dict(attrs) if attrs else {}
    described = [f"{field.id}-help"] if help else []
    described += [f"{field.id}-error-{n}" for n in range(1, len(errors) + 1)]
    if described:
        kw["aria-describedby"] = " ".join(described)
    if errors:
        kw["aria-invalid"] = "true"
        kw["data-focus"] = ""
    label = escape(field.label.text)
    if field.type == "BooleanField":
        kw["role"] = "switch"
        drawn = f'\n    \n    <label for="{field_id}">{field(**kw)} {label}</label>\n  '
    else:
        drawn = f'\n    <label for="{field_id}">{label}</label>\n    {field(**kw)}\n  '
    help_html = f'<small id="{field_id}-help" class="help">{escape(help)}</small>' if help else ""
    name = escape(field.name)
    errors_html = "".join(f'<small id="{field_id}-error-{n}" class="field-error" data-error-for="{name}">{escape(e)}'
                          "</small>" for n, e in enumerate(errors, 1))
    # Every value went through escape() or is WTForms' own Markup.
    return Markup(f"{_LEAD}{drawn}\n  {help_html}\n  {errors_html}")  # noqa: S704
