"""What the cache service runs: probe variants, features, selectors, the runtime, bundle loading."""
