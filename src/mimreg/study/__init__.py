"""Studies: a grid of recipes x overrides x seeds, run with its evaluations into one folder
(spec: the study file; point: one run; local / array: the executors; ledger: what is done)."""
