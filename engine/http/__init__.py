"""The engine's HTTP API, one module per resource.

Each module (``status``, ``me``, ``generate``, ``contexts``, ``runs``,
``admin``, ``openai``, ``completions``, ``responses``, ``metrics``) ends with ``default_handlers``: its
``(path, handler)`` pairs, paths relative to the service's base URL.
``service.py`` joins them into the routes. ``base.py`` is what every handler
shares (admission, JSON errors, the body); ``streams.py`` how one generation
is run for a request (shared by ``generate`` and ``openai``).

Handlers parse, check fields, call one ``Engine`` (or run manager) method and
write JSON; they never orchestrate engine work.
"""
