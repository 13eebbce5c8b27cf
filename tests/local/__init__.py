"""Tests of `gati up`, `gati status` and `gati down`."""
