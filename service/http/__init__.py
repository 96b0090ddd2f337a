"""The HTTP service: the app factory and its routes (``app.py``), request and answer schemas, settings, errors, the
request guard, body codecs, the engine pool that runs requests off the event loop, and the launcher that starts a
service for the clients and benchmarks."""
