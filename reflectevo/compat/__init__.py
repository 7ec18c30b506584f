"""Convert between the published ReflectEvo formats and ours (see docs/compat.md for the field map).

Kinds:

- ``raw``   their ``run/run.py`` output (and ``example_Reflection_raw.jsonl``, which uses the older
            names ``reasoning``/``trial``/``reasoning_prompt`` and is pretty-printed JSON objects
            one after another, not JSONL) <-> our episode records (``data/raw/episodes-*`` shards);
- ``dplus`` their D+  <-> our D+ rows (``dplus_*.jsonl``);
- ``dpm``   their D±  <-> our D± rows (``dpm_*.jsonl``, ``chosen``/``rejected`` sub-objects);
- ``dpref`` their Dpref (the D± schema) <-> our Dpref rows (the D± row shape plus ``judge``, null on
            import).

Principles:

- every field with a counterpart is mapped; the rest of theirs goes under ``meta.reflectevo`` on
  import, together with the original key order and names, so export(import(x)) reproduces x;
- ours without a counterpart (token counts, scores, sampling, demand ids, hashes, ``judge``...) are
  left out on export;
- their trial reasoning ends in the verdict ("\\nObservation: Answer is INCORRECT"): it is split off
  into ``meta`` on import (our completions are model text only) and put back (or synthesised from
  the correctness flag) on export;
- prompts rebuilt *after* generation (their raw ``reason_prompt``/``reflection_prompt`` and the D+
  ``reason_prompt[1]``, which hold the model's own trajectory between ``(BEGIN)`` and ``(END)``) are
  never used as our pre-generation prompts: they are kept under ``meta`` with a note;
- MC gold letters are lowercase in theirs, upper-case in ours;
- text is never altered (the Dpref example's mojibake "鈥檚" is kept and only flagged in ``meta``).

Readers accept JSONL and concatenated (pretty-printed) JSON objects alike; every error is a single
``ReflectEvoError`` line naming the file and line (and byte offset) or the missing field.

Modules: `jsonstream` (JSONL and concatenated JSON objects, streamed), `fields` (shared field rules: ids,
task names, options, verdict lines), `raw` (their raw records <-> our episodes, and importing a file for
`generate.import_path`), `curated` (their D+ / D± / Dpref <-> our rows), `convert` (a whole file, either
way), `results` (Acc@t1, Acc@t2 and their count.py from either format's results).
"""
