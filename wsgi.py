"""The WSGI entry point: ``waitress-serve wsgi:app`` or ``flask --app wsgi …``."""

from portal import create_app

app = create_app()
