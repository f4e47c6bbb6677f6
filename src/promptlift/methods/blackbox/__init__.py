"""Black-box methods: continuous or discrete prompts found from the target's scores alone (no gradients through it):
BBT and BBTv2 (CMA-ES in a random subspace), BDPL (policy gradient over tokens), RLPrompt (a trained prompt policy)."""
