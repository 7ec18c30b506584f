"""The generate stage: ReflectEvo episodes on the train items, computed in chunks, journaled, reused by key.

An episode is one train item: trial 1 (greedy, verified); if wrong (oracle protocol; every item under the
intrinsic one), `k` reflections sampled under demand instructions, each followed by a trial 2 (verified),
through `reflectevo.protocol.rounds`. Every prompt is stored exactly as sent; the record's schema is
`reflectevo.episodes.record`.

Modules: `keys` (what determines an episode: its content key and sample seeds), `episodes` (one chunk of
items -> episode records), `run` (the resumable run: reuse by key, journal, shards), `summary` (counts and
cost), `backends` (one backend per phase, for a trained setting's adapters), `devices` (which GPU each
worker sees), `ray` (the same episodes through a Ray Data pipeline), `stage` (the generate stage's work).
"""
