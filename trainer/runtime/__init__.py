"""Where the run executes: ``workers.py`` (who the workers are, from the environment),
``multiworker.py`` (joining them, rendezvous, a lost peer),
``devices.py`` (strategy and replicas), ``precision.py`` (precision and XLA per machine),
``runlog.py`` (the run's own log file), ``stopwatch.py`` (wall-clock laps of a run).
Imports ``core``, ``storage`` and ``config`` only.
"""
