"""Learned caches ("probes"): predictors on hidden layers, selectors, calibration, bundles.

Public entry points (imported lazily by callers that need them):
- `gati.probes.bundle`: `Bundle`, `BundleError` (the versioned artifact on the wire)
- `gati.probes.runtime`: `ProbeRuntime`, `RowState` (lookups in the cache service)
- `gati.probes.fit`: `fit_bundle`, `FitConfig` (training, calibration, optimisation)
- `gati.probes.evaluate`: `evaluate_bundle` (hit rate, agreement, expected speedup)
"""
