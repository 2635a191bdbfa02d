"""Training a model on a dataset: ``loop.py`` (the custom training loop), ``checkpoint.py`` (every
checkpoint and resume rule, the only reader of the checkpoint marker), ``best.py`` (the best
epoch's weights), ``evaluation.py`` (predictions on every replica), ``pacing.py`` (steps per
call into the graph), ``observer.py`` (what the loop reports: ``progress.py`` writes
progress.json, ``events.py`` TensorBoard events). Imports ``runtime``, ``data``, ``model`` and
the layers below them.
"""
