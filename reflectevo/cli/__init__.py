"""The `reflectevo` command: inspect tasks and items, check params, list presets, report, serve, publish.

    reflectevo tasks                     # registered tasks with sizes and sources
    reflectevo items rg/chain_sum --split test -n 5
    reflectevo params check [params.yaml]
    reflectevo presets [params.yaml]
    reflectevo report [--metrics metrics/eval.json] [--out report/index.html]   # the HTML report
    reflectevo summary                   # what the last run produced: outputs, results, the report's path
    reflectevo verify rg/chain_sum predictions.jsonl
    reflectevo serve --model tiny-random --port 8000    # OpenAI-compatible server for a preset
    reflectevo convert / metrics ...     # ReflectEvo interoperability (docs/compat.md)
    reflectevo publish models/one_stage --repo-id you/one-stage   # to the Hugging Face Hub (private)
    reflectevo plan [params.yaml] [--recipe paper] [--json]   # what a run costs, offline
    reflectevo recipe list | show NAME | check NAME | run NAME [dvc exp run args]   # configs/recipes/

One module per group of commands; each has `register(app)`, and this package builds the app from them
(the modules never import this package, so nothing imports in a circle).
"""

from __future__ import annotations

import typer

from reflectevo.cli import catalog, compat, plan, publish, report, serve, summary, verify

app = typer.Typer(add_completion=False, no_args_is_help=True, help="ReflectEvo: learn to reflect from self-generated data.")

for _module in (catalog, report, summary, verify, serve, compat, publish, plan):
    _module.register(app)
