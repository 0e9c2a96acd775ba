"""What ``python -m barlab.train`` runs, from a composed config to results.json.

- ``run``: the stages (``tokenizer``, ``generator``, ``all``, ``classifier``), reuse of finished stages,
  and the results.json of every run, finished or not.
- ``preflight``: checks of the whole config before anything is built or trained.
- ``tokenizer_stage``, ``generator_stage``: train, evaluate and export one model each.
- ``trainer``: the Lightning Trainer, callbacks, loggers and optimiser factories of a stage.
- ``results``: results.json's schema, its one writer, and a job's outcome from what stopped it.
"""
