"""Tests of the stand-in Dynamics CRM server."""
