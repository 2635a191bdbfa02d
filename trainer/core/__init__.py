"""What every layer of the trainer (and the launcher, ``jobs/``) shares; imports nothing else of
the trainer: ``errors.py`` (the exit-code table and the exception vocabulary), ``quoting.py``
(bad values in messages), ``schema.py`` (documented dataclass fields, did-you-mean for unknown
keys), ``preemption.py`` (the stop request a SIGTERM sets, in any stage of a run),
``contract.py`` (the environment variables the launcher sets and the trainer reads),
``digest.py`` (a file's SHA-256: weights, shards, served models).
"""
