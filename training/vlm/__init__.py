"""Training data, tasks, training loop and evaluation of the scene-describing VLM."""
