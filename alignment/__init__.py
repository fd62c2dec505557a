"""alignment: a PaddlePaddle-native framework that aligns language models with human preferences.

Subpackages (see README.md): ``algorithms`` (pure tensor maths, registered by name), ``data``
(raw-dataset registry and tokenized datasets), ``models`` (score model, loading/saving),
``rollout`` (generation and experience), ``parallel`` (the one strategy object over fleet),
``ops`` (custom operators with fallbacks) and one folder per training stage.
"""

__version__ = "0.1.0"
