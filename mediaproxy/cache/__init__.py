"""
The result cache and what it is made of: the layered composition (:mod:`.layered`), the key
(:mod:`.keys`), the stored byte format (:mod:`.entrycodec`), coalescing locks (:mod:`.locks`),
purging (:mod:`.purge`), the Redis client (:mod:`.redis`) and the layers themselves.
Nothing here imports :mod:`mediaproxy.builtin`: the plugins there wire these parts in.
"""
