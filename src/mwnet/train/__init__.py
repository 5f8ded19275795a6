"""Training runs: configuration and presets, the experiment, the loop and its run directory."""
