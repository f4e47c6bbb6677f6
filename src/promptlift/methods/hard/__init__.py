"""Token prompts: found with gradients (PEZ, AutoPrompt, projection of soft prompts) or with scores only (BBT)."""
