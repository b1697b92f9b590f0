"""INT8 engines from representative frames, refused when they segment worse than float."""
