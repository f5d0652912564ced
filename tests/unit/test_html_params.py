"""The portal's html_params draws exactly what WTForms' own does, and every widget uses it."""

from __future__ import annotations

import pytest
from markupsafe import Markup
from wtforms import widgets

from portal import forms

CASES = [
    {},
    {"name": "text1", "id": "f", "class_": "text"},
    {"checked": True, "readonly": False, "name": "text1", "abc": "hello"},
    {"data_attr": "user.name", "aria_labeledby": "name", "aria_describedby": "a-help a-error-1"},
    {"value": 'say "hi" & <b>bye</b>', "placeholder": "•••• saved — type a new one"},
    {"value": Markup('already "safe" <i>markup</i>'), "min": 0, "max": 100, "step": 1},
    {"hx_post": "/settings/crm/1/validate?field=org_url", "hx-trigger": "change, keyup changed delay:700ms"},
    {"value": None, "data-focus": "", "aria-invalid": "true", "role": "switch", "for_": "x"},
    {"<odd key>": "v", "value": "'single' quotes"},
]


@pytest.mark.parametrize("kwargs", CASES)
def test_same_markup_as_wtforms(kwargs):
    """Character for character the markup of WTForms' html_params, and Markup like it."""
    ours = forms.html_params(**kwargs)
    theirs = forms._WTFORMS_HTML_PARAMS(**kwargs)
    assert isinstance(ours, Markup)
    assert str(ours) == str(theirs)


def test_every_widget_uses_it():
    """The module function and the widget classes' attribute both are the portal's."""
    assert widgets.core.html_params is forms.html_params
    assert widgets.html_params is forms.html_params
    assert widgets.core.Input.html_params is forms.html_params
    assert widgets.core.Button.html_params is forms.html_params
    assert forms._WTFORMS_HTML_PARAMS is not forms.html_params
