"""Token prompts found with gradients through the model: PEZ, AutoPrompt, projection of a soft prompt, and the probe."""
