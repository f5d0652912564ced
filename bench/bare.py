"""The portal as production serves it, plus one bare signed-in page for the page benchmark to measure against.

``gunicorn bench.bare:app``: the same app (``wsgi.app``) with ``/bench/bare``, a page that needs the same
session, loads the same user and renders the same layout as every Settings page, and shows no data.
"""

from __future__ import annotations

from flask_login import login_required

from wsgi import app

# Compiled once, as Flask compiles a template file once: the page costs what the layout costs.
BARE = app.jinja_env.from_string("""{% extends "base.html" %}{% block title %}Bare page{% endblock %}
{% block content %}<h1>Bare page</h1>{% endblock %}""")


@app.get("/bench/bare")
@login_required
def bare():
    """The layout for the signed-in user, and nothing else."""
    context: dict = {}
    app.update_template_context(context)  # current_user, csrf_token, config… as render_template adds them
    return BARE.render(context)
