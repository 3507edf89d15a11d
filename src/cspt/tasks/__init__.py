"""Tasks: build a model and data from a config, define the step, produce the outputs."""
