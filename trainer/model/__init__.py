"""Networks and what trains them: ``build.py`` (the from-scratch models, and the entry point
for every model), ``backbones.py`` (keras.applications backbones), ``weights.py`` (initial
weights), ``schedule.py`` (head and fine-tune phases, learning rate), ``optimizer.py``
(optimizer and loss), ``export.py`` (the exported model). Imports ``core``, ``storage`` and
``config`` only.
"""
