"""Local stand-ins for the clouds, used by tests and the demo.

Import-light on purpose: each fake lives in its own module (e.g. ``gcp_server``) and pulls
in nothing heavy, so importing this package costs nothing.
"""
