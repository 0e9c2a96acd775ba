"""``python -m barlab.bench``: timing, memory and throughput benchmarks of barlab's parts.

One module per benchmark, each with ``run(ctx) -> dict`` (``rows`` for the table, ``ratios``,
``notes``, or ``skipped``) and ``plot(result) -> Figure | None``; :data:`BENCHMARKS` lists them in
the order they run (``data`` reads ``train_loop``'s step rate when both run).
"""

BENCHMARKS = ("heads", "sampling", "train_loop", "data", "tar_reader", "mfu", "gpu", "paper_tokenizer", "sweep_cost",
              "generation_budget")
