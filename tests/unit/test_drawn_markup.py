"""Fields and table lines drawn in Python write what the macros wrote, byte for byte, and escape every value."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from flask import Flask
from markupsafe import Markup
from werkzeug.datastructures import MultiDict
from wtforms import widgets

from portal import forms
from portal.views.settings import _partner_lines
from portal.widgets import labelled_field

# Quotes, <, & and control characters: what a partner could type into a name or a setting.
HOSTILE = 'say "hi" & <b>bye</b> \'single\' \x01\x1f\x7f'

# A supplier's partner line as partners.html wrote it.
OLD_PARTNER_LINE = """{% for name, state_name, state_label, tested, problem_since in rows %}
    <tr data-partner="{{ name }}">
      <th scope="row">{{ name }}</th>
      <td><span class="badge badge-{{ state_name }}" data-state="{{ state_label }}">{{ state_label }}</span></td>
      <td>{% if tested %}{{ tested }}{% else %}<span class="muted">Not tested</span>{% endif %}</td>
      <td>{{ problem_since }}</td>
    </tr>
  {% endfor %}"""

TEMPLATES = Path(__file__).resolve().parents[2] / "portal" / "templates"
BEFORE = Path(__file__).resolve().parents[1] / "fixtures" / "markup"


@pytest.fixture
def app():
    """A bare app on the portal's templates (autoescaped as the portal's), without CSRF, in a request."""
    flask_app = Flask(__name__, template_folder=str(TEMPLATES))
    flask_app.config.update(SECRET_KEY="unit", WTF_CSRF_ENABLED=False, RENDERED_CACHE_SIZE=256,
                            RENDERED_CACHE_BYTES=16_000_000)
    with flask_app.test_request_context():
        yield flask_app


def _old_field(app):
    """The old macro, callable as the templates called it."""
    return app.jinja_env.from_string((BEFORE / "field_macro_before.html").read_text()).module.field


FORMS = [forms.GeneralForm, forms.ConnectionForm, forms.UsageForm, forms.AdvancedForm, forms.TokenForm,
         forms.DistributeForm, forms.ContactListForm, forms.LoginForm]
ATTRS = [None, {}, {"autocomplete": "off", "maxlength": 320}, {"min": 0, "max": 100, "step": 1, "inputmode": "numeric"},
         {"hx-post": "/settings/crm/1/validate?field=org_url&x=<y>", "hx-trigger": "keyup changed delay:500ms, change",
          "data-validate-once": "", "title": HOSTILE}]
HELPS = [None, "", "0 to 100; optional.", HOSTILE, Markup("Already <em>safe</em> &amp; kept")]


def _fields(form):
    """The fields the settings draw with the macro: every one but lists of options and the CSRF token."""
    return [f for f in form if f.type != "CSRFTokenField" and not isinstance(f.widget, widgets.ListWidget)]


def _form(form_class, posted: bool):
    """A clean form, or one posted with hostile values and validated, each field with a hostile error added."""
    if not posted:
        return form_class(formdata=None)
    data = MultiDict({name: HOSTILE for name, _ in form_class._unbound_fields})
    form = form_class(formdata=data)
    form.validate()
    for field in form:
        field.errors = [*field.errors, HOSTILE]
    return form


@pytest.mark.parametrize("form_class", FORMS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("posted", [False, True], ids=["clean", "errors"])
def test_labelled_field_writes_what_the_macro_wrote(app, form_class, posted):
    old = _old_field(app)
    form = _form(form_class, posted)
    fields = _fields(form)
    assert fields
    if posted:
        assert any(f.errors for f in fields), "a posted hostile form has errors to draw"
    for f in fields:
        for help_text in HELPS:
            for attrs in ATTRS:
                expected = old(f, help_text, attrs) if attrs is not None else old(f, help_text)
                assert labelled_field(f, help_text, attrs) == str(expected), (f.name, help_text, attrs)


def test_labelled_field_escapes_errors_help_and_label(app):
    form = forms.UsageForm(formdata=MultiDict({"ma_score_threshold": "x"}))
    form.validate()
    field = form.ma_score_threshold
    field.errors.append(HOSTILE)
    field.label.text = HOSTILE
    drawn = labelled_field(field, HOSTILE)
    assert isinstance(drawn, Markup)
    assert "<b>" not in drawn and "\"hi\"" not in drawn and "& <" not in drawn
    escaped = "say &#34;hi&#34; &amp; &lt;b&gt;bye&lt;/b&gt; &#39;single&#39; \x01\x1f\x7f"
    assert drawn.count(escaped) == 3  # the label, the help and the error
    n = len(field.errors)
    errors = " ".join(f"ma_score_threshold-error-{i}" for i in range(1, n + 1))
    assert f'aria-describedby="ma_score_threshold-help {errors}"' in drawn
    assert 'aria-invalid="true" data-focus=""' in drawn
    assert f'<small id="ma_score_threshold-error-{n}" class="field-error" data-error-for="ma_score_threshold">' in drawn


def _partner(name, state="on", ok=True, tested=None, error_at=None):
    """A partner's values, as the supplier's query writes them in its line's text (a JSON array, UTC wall times)."""
    return (name, state, ok, tested, error_at)


def _line(values) -> str:
    """The line's text as the database writes it (models.values_text)."""
    return json.dumps([value.isoformat() if isinstance(value, datetime) else value for value in values])


def test_partner_lines_write_what_the_template_wrote_and_escape_the_name(app):
    moment = datetime(2026, 11, 30, 9, 5, 7)
    rows = [_partner(HOSTILE), _partner("A & B <GmbH>", "error", False, moment, moment),
            _partner("Plain", "off", True, moment), _partner("\"quoted\"", "on", None, None, moment)]
    old_lines = []
    for name, state_name, last_test_ok, last_test_at, error_at in rows:
        tested = (f"{'Passed' if last_test_ok else 'Failed'} · {last_test_at:%Y-%m-%d %H:%M UTC}"
                  if last_test_at else "")
        state = {"on": "On", "off": "Off", "error": "Error"}[state_name]
        problem = f"{error_at:%Y-%m-%d %H:%M UTC}" if error_at else ""
        old_lines.append((name, state_name, state, tested, problem))
    old = app.jinja_env.from_string(OLD_PARTNER_LINE)
    new = app.jinja_env.from_string("{{ lines }}")
    assert old.render(rows=old_lines) == new.render(lines=_partner_lines([_line(row) for row in rows]))
    line = _partner_lines([_line(rows[0])])
    assert "<b>" not in line and "\x01\x1f\x7f" in line
    assert 'data-partner="say &#34;hi&#34; &amp; &lt;b&gt;bye&lt;/b&gt; &#39;single&#39; ' in line


def test_kept_partner_lines_are_keyed_by_every_value_they_show(app):
    """A kept line is never served for another value; the cache keeping them is bounded."""
    from datetime import timedelta

    from portal.page_cache import app_cache

    with app.test_request_context():
        cache = app_cache("partner-lines", scale=16)
        assert 0 < cache.size <= 100_000 and cache.max_chars
        moment = datetime(2026, 11, 30, 9, 5)  # a UTC wall time, as the page's statement reads it
        first = _partner_lines([_line(_partner("Same", "error", True, moment, moment))])
        assert "2026-11-30 09:05 UTC" in first
        for changed in (_partner("Other", "error", True, moment, moment), _partner("Same", "on", True, moment, moment),
                        _partner("Same", "error", False, moment, moment),
                        _partner("Same", "error", None, moment, moment),
                        _partner("Same", "error", True, moment + timedelta(minutes=1), moment),
                        _partner("Same", "error", True, moment, None), _partner("Same", "error", True, None, moment)):
            assert _partner_lines([_line(changed)]) != first, changed
        assert _partner_lines([_line(_partner("Same", "error", True, moment, moment))]) == first
        assert len(cache) == 8
