"""
The monitoring part: what an operator reads about a running proxy, apart from the plugin glue
that registers it (``builtin/metrics.py``, ``builtin/health.py``, ``builtin/alerts.py``): the
health snapshot, rolling request figures, alert rules, the reactor-lag probe, and the merge of
several workers' metrics. Like the other parts it imports only the foundation and other parts.
"""
