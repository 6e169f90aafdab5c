"""Potluck's shared engine: model runner, KV pages, fair scheduler, tenants and quotas.

``Engine`` (in ``engine.py``) is the one Python API over all of it.
"""

__version__ = "0.1.0"
