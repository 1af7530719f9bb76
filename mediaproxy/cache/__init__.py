"""
The result cache and what it is made of: the layered composition (:mod:`.layered`), the key
(:mod:`.keys`), the stored byte format (:mod:`.entrycodec`), the layers (:mod:`.memory`,
:mod:`.redislayer`, the file layer in :mod:`.files`), the Redis client (:mod:`.redis`),
coalescing locks (:mod:`.locks`, chosen by :mod:`.coalescing`) and purging (:mod:`.purge`).
Nothing here imports :mod:`mediaproxy.builtin`: the plugins there wire these parts in.
"""
