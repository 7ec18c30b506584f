"""The ReflectEvo protocol, written once: trial 1 -> verify -> reflect -> retry -> verify, rounds, the oracle and
intrinsic variants (`rounds`); where trials, reflections and one-stage outputs end, and the answer step
(`mechanics`); the version hash of everything that decides a generated episode's prompts (`version`).
Generate, evaluate, self-evolution and the RL rollout all run it."""
