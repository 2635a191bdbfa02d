"""The launcher: a YAML job spec becomes a Kubernetes Job or CronJob (``python -m jobs``).

spec.py (validate) -> render.py (pure manifests) -> submit.py / follow.py (+ logs.py, describe.py)
-> cluster.py (the only module that talks to the API).
"""

__version__ = "0.1.0"  # = pyproject.toml's version (a unit test keeps them equal)
