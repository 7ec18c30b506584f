"""Episodes: the record the generate stage writes for one train item (trial 1, its reflections and retries),
its one schema (`record`), and how episodes are stored (`shards`: a few large Parquet files plus the
journal of a run in progress)."""
