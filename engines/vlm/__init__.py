"""The scene-describing vision-language model: ViT encoder, projector, GPT-style decoder.

One file per part (vit.py, projector.py, decoder.py), the model and its registry of variants
(model.py), the word tokenizer, checkpoints, and the Describer the pipeline calls.
"""
