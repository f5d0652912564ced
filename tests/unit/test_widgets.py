"""The portal's forms draw their inputs from prepared attributes: WTForms' markup, WTForms itself untouched."""

from __future__ import annotations

from decimal import Decimal

import pytest
from flask import Flask
from markupsafe import Markup
from werkzeug.datastructures import MultiDict
from wtforms import widgets
from wtforms.widgets.core import clean_key

from portal import forms
from portal.widgets import _PREPARED, _prepared

HOSTILE = 'say "hi" & <b>bye</b> \'single\' \x01\x1f\x7f'

ATTRIBUTE_SETS = [
    {},
    {"class_": "text", "data_focus": "", "aria_invalid": "true"},
    {"aria-describedby": "a-help a-error-1", "role": "switch", "autocomplete": "off"},
    {"placeholder": "•••• saved — type a new one", "readonly": True, "disabled": False},
    {"hx-post": "/settings/crm/1/validate?field=org_url&x=<y>", "hx-trigger": "change, keyup changed delay:700ms"},
    {"title": HOSTILE, "data-note": Markup('already "safe" <i>markup</i>')},
    {"min": 0, "max": 100, "step": 1, "inputmode": "numeric"},
    {"value": HOSTILE},
    {"checked": False},
    {"checked": True, "id": "chosen"},
]

@pytest.fixture(autouse=True)
def app_context():
    """Flask-WTF forms read their configuration from an app: a bare one, without CSRF."""
    app = Flask(__name__)
    app.config.update(SECRET_KEY="unit", WTF_CSRF_ENABLED=False)
    with app.test_request_context():
        yield


SETTINGS_FORMS = [forms.GeneralForm, forms.ConnectionForm, forms.UsageForm, forms.AdvancedForm, forms.LoginForm,
                  forms.TokenForm, forms.DistributeForm, forms.ToggleForm]


def _posted(form_class) -> MultiDict:
    """Every field of the form posted with a hostile value (checkboxes on, the first choice chosen)."""
    data = MultiDict()
    for name, unbound in form_class._unbound_fields:
        choices = unbound.kwargs.get("choices")
        if choices:
            data.add(name, choices[0].value if hasattr(choices[0], "value") else choices[0][0])
        else:
            data.add(name, HOSTILE)
    return data


def _inputs(form):
    """Every field of a form, and every option of the fields that have options."""
    for field in form:
        if isinstance(field.widget, widgets.ListWidget) or field.type == "RadioField":
            yield from field
        elif field.type != "SelectField":
            yield field


@pytest.mark.parametrize("form_class", SETTINGS_FORMS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("posted", [False, True], ids=["saved", "posted"])
def test_same_markup_as_wtforms(form_class, posted):
    """Each input, blank or holding quotes, <, & and control characters, drawn exactly as WTForms' widget draws it."""
    form = form_class(formdata=_posted(form_class) if posted else None, meta={"csrf": False})
    before = _prepared.cache_info()
    prepared = 0
    for field in _inputs(form):
        for attrs in ATTRIBUTE_SETS:
            theirs = field.widget(field, **{clean_key(k): v for k, v in attrs.items()})
            for _ in range(2):  # the second draw comes from the prepared attributes
                ours = field(**attrs)
                assert isinstance(ours, Markup)
                assert str(ours) == str(theirs), (field.name, attrs)
            prepared += type(field.widget) in _PREPARED
    after = _prepared.cache_info()
    assert prepared > 0
    # The inputs really were drawn here, and their attributes reused: not handed back to WTForms.
    assert after.hits - before.hits >= prepared


def test_what_the_user_typed_never_keys_the_prepared_attributes():
    """A value, or the value a field was last checked for, comes with each request: drawn per call, never kept, so
    posting ever new values grows nothing (only the page's fixed attributes are prepared once)."""
    form = forms.ConnectionForm(formdata=None, prefix="connection", meta={"csrf": False})
    form.org_url(**{"data-validated": "first", "hx-post": "/x"})
    before = _prepared.cache_info().currsize
    for n in range(50):
        typed = f"https://crm{n}.example/Org/XRMServices/2011/Organization.svc/web"
        drawn = str(form.org_url(value=typed, **{"data-validated": typed, "hx-post": "/x"}))
        assert f'value="{typed}"' in drawn and f'data-validated="{typed}"' in drawn
    assert _prepared.cache_info().currsize == before


def test_values_are_escaped():
    """A value with quotes, <, > and & cannot leave its attribute; control characters stay inside the quotes."""
    form = forms.TokenForm(formdata=MultiDict({"name": HOSTILE}), meta={"csrf": False})
    for _ in range(2):
        markup = str(form.name(**{"data-x": HOSTILE}))
        assert 'value="say &#34;hi&#34; &amp; &lt;b&gt;bye&lt;/b&gt; &#39;single&#39; \x01\x1f\x7f"' in markup
        assert 'data-x="say &#34;hi&#34; &amp; &lt;b&gt;bye&lt;/b&gt; &#39;single&#39; \x01\x1f\x7f"' in markup
        assert markup.count('"') == 2 * markup.count('="')
        assert "<b>" not in markup


def test_markup_quotes_are_escaped():
    """A Markup value keeps its tags escaped by its author, and its quotes are escaped so the attribute holds."""
    form = forms.TokenForm(formdata=None, meta={"csrf": False})
    markup = str(form.name(title=Markup('a "b" <i>c</i>')))
    assert 'title="a &quot;b&quot; <i>c</i>"' in markup


def test_wtforms_is_not_patched():
    """WTForms' html_params is its own, at every place its widgets look it up."""
    from wtforms.widgets import core

    assert core.html_params.__module__ == "wtforms.widgets.core"
    assert widgets.html_params is core.html_params
    assert core.Input.html_params is core.html_params
    assert core.Button.html_params is core.html_params


def test_a_value_that_cannot_be_a_key():
    """An attribute value that cannot key the prepared attributes (a list) is still drawn as WTForms draws it."""
    form = forms.TokenForm(formdata=MultiDict({"name": HOSTILE}), meta={"csrf": False})
    attrs = {"data_items": ["a", '"<b>"']}
    assert str(form.name(**attrs)) == str(form.name.widget(form.name, **{clean_key(k): v for k, v in attrs.items()}))


def test_equal_values_of_other_types_are_not_confused():
    """Markup and a plain string with the same text (or True and 1) are drawn each as its type says, in any order."""
    form = forms.TokenForm(formdata=None, meta={"csrf": False})
    for first, second in ((Markup("<i>x</i>"), "<i>x</i>"), ("<i>y</i>", Markup("<i>y</i>")), (True, 1), (1, True)):
        for value in (first, second):
            assert str(form.name(title=value)) == str(form.name.widget(form.name, title=value)), repr(value)
    assert 'title="&lt;i&gt;x&lt;/i&gt;"' in str(form.name(title="<i>x</i>"))


@pytest.mark.parametrize(("first", "second"), [
    (0.0, -0.0), (Decimal("1.0"), Decimal("1.00")), ((1,), (True,)), (frozenset({1}), frozenset({True})),
])
def test_equal_values_drawn_apart_are_not_served_from_each_other(first, second):
    """Values equal to each other (and of one type) that draw differently: each call draws its own value."""
    form = forms.TokenForm(formdata=None, meta={"csrf": False})
    for value in (first, second, first):
        assert str(form.name(title=value)) == str(form.name.widget(form.name, title=value)), repr(value)
