"""Command-line tools: the tiny-model kit (``make_tiny_model``) and the end-to-end demo (``demo``)."""
