"""Generation backends behind one interface (`reflectevo.sampling.Backend`): transformers, vllm, openai,
scripted, built by name with `reflectevo.backends.registry.make_backend`.

A backend renders chat messages with the model's own chat template (`render`) and generates
completions for already-rendered prompts (`generate`), so records store prompts exactly as sent.
"""
