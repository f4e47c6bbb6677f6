"""LLM optimizers: an optimizer model proposes, critiques and rewrites prompts; the shared search loop
(`promptlift.engine.search`) scores, selects, budgets, checkpoints and resumes. One module per method."""
