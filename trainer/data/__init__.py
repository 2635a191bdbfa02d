"""Datasets: ``dataset.py`` (discovery, splits, the dataset a config names), ``images.py``
(decoding and checks), ``builtin.py`` (digits), ``scan.py`` (the images' native size, the fact
``auto`` values depend on), ``packed.py`` (the packed format and its stream), ``shard_window.py``
(the bounded window of shards fetched ahead), ``pipeline.py`` (tf.data), ``packer.py``
(``python -m trainer data pack``), ``push.py`` (``python -m trainer data push``).
Imports ``core``, ``storage`` and ``config`` only.
"""
