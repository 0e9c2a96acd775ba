"""Lightning wiring: LightningModules, callbacks and checkpoint I/O.

Everything under ``barlab/tokenizer`` (and later ``barlab/generator``) is a plain ``nn.Module``;
this package is the only place that knows about Lightning.
"""
