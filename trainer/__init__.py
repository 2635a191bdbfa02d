"""kubetrain's trainer: ``python -m trainer`` trains one image classifier, end to end.

Layers, each importing only the layers below it (``tests/unit/test_import_layers.py`` checks
this from the source, function-level imports included)::

    __main__.py                  the CLI: parse, load the config, run, exit code
    run.py                       one run: data -> devices -> fit -> evaluate -> report -> export
    promote.py                   copy model/ and report/ to promote_to when the model is better
    training/ report/ promotions.py   the loop, checkpoints, evaluation, progress | the report |
                                 one promotion at a time to a target, and its history
    runtime/  data/  model/      cluster and devices | datasets and tf.data | networks and weights
    config/                      the one typed config and its ``auto`` rules
    storage/                     local paths and gs:// behind one interface
    core/                        exit codes, quoting, schema, the stop request, env contract

TensorFlow, matplotlib, scikit-learn, scipy and the cloud client are imported inside the
functions that need them, so ``jobs/``, ``--help`` and a run's start-up stay light.
"""
