"""Run the gati topology on one machine: which processes, flags and ports; start, wait, stop."""
