"""What `gati probes fit` and the trainer run: collect, train, calibrate, plan, package."""
