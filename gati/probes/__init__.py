"""Learned caches ("probes"), in two parts that import one way: fitting -> serving.

- `gati.probes.serving`: what the cache service runs: the bundle format (`bundle.Bundle`),
  predictor variants, features, selectors, the live memory rule, `runtime.ProbeRuntime`.
- `gati.probes.fitting`: what `gati probes fit` and the trainer run: collect activations,
  train and calibrate candidates, choose the plan, package a bundle (`fit.fit_bundle`,
  `fit_config.FitConfig`, `evaluate.evaluate_bundle`).
"""
