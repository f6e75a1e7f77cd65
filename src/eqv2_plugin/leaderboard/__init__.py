"""Open Catalyst leaderboard (EvalAI) files: predictions per split, submission, check, metrics.

``eqv2-plugin predict-splits``   runs ``fairchem --mode predict|run-relaxations`` once per test split;
``eqv2-plugin submission``       assembles the EvalAI ``.npz`` (S2EF, IS2RE, IS2RS; OC20 or OC22);
``eqv2-plugin check-submission`` verifies a submission against the test LMDBs before upload;
``eqv2-plugin evaluate``         scores a submission (or one fairchem results file) on labelled
                                 LMDBs with fairchem's own ``Evaluator``.

The file format is in ``eqv2_plugin.leaderboard.formats``.  Importing this package is cheap:
numpy, ASE and fairchem are imported by the modules that need them, when they run.
"""
