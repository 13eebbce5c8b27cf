"""Learned caches ("probes"): predictors on hidden layers, selectors, calibration, bundles.

Public entry points (imported lazily by callers that need them):
- `gati.probes.bundle`: `Bundle`, `BundleError` (the versioned artifact on the wire)
- `gati.probes.runtime`: `ProbeRuntime`, `RowState` (lookups in the cache service)
- `gati.probes.fit`: `fit_bundle` (training, calibration, optimisation)
- `gati.probes.fit_config`: `FitConfig`, `CostConfig` (a fit's settings, shared with the trainer)
- `gati.probes.evaluate`: `evaluate_bundle` (hit rate, agreement, expected speedup)
"""
