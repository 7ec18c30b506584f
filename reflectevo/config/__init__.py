"""Typed, validated views of `params.yaml`; import from the submodule that holds the idea:

- `reflectevo.config.loader`: the strict schema loader (`from_dict`, `to_dict`, the `Schema` base and the
  declared field types: strict scalars, ranges, choices) and how its errors read: one line naming the
  dotted key, the allowed range or the valid choices ("did you mean" for a misspelt key or value).
- `reflectevo.config.presets`: `ModelPreset` (with `LoraConfig`, `ScriptRecipe`), the rules preset names
  follow so DVC can select them, old names (`PRESET_ALIASES`), `load_preset`.
- `reflectevo.config.sections`: the stage sections prepare, generate, curate, evaluate, evolve and demo.
- `reflectevo.config.params`: `read_params`, `load_section`, the section registry.

The train section (`TrainConfig`, `SFTHyper`, `DPOHyper`, `RLHyper`) lives beside the trainers in
`reflectevo.training.config`; `reflectevo.paramsfile` knows every section (`validate_all`). This package
imports nothing above it (tasks, demands and settings only, for the names they register).
"""
