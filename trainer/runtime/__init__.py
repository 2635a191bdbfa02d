"""Where the run executes: ``multiworker.py`` (the cluster of workers, rendezvous, a lost peer),
``devices.py`` (strategy and replicas), ``precision.py`` (precision and XLA per machine),
``runlog.py`` (the run's own log file), ``stopwatch.py`` (wall-clock time per phase of a run).
Imports ``core``, ``storage`` and ``config`` only.
"""
