"""The curate stage: raw episodes -> D+, D± and Dpref training rows, split by item, with statistics and a card.

Modules: `rows` (the pure rules: which reflections are kept, the rows of each set, the item split, the
statistics), `stage` (the curate stage's work: stream the shards, judge the Dpref pairs, write every set
atomically, stats.json, the data card and the metrics).
"""
