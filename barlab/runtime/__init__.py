"""A run's lifecycle, below the Lightning wiring: what survives a restart and what spans processes.

- ``run_state``: the run folder's own record (settings, attempts, finished stages), so a restarted job
  continues its run; stream seeds; waiting for files another rank writes.
- ``checkpoint_checks``: a Lightning checkpoint must fit the run that resumes from it.
- ``checkpoint_io``: atomic checkpoint writes (never a half-written ``last.ckpt``).
- ``distributed``: how a job's ranks are started, sized and cleaned up; the global batch split.
- ``tokenizer_cache``: a content-addressed cache of trained tokenizers and their token shards, shared
  by sweep jobs and ranks under a file lock.
- ``slurm``: the preflight of ``hydra/launcher=slurm`` (a client, a controller, a known partition).
"""
