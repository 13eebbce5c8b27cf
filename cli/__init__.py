"""Library-level `gati` subcommands (each: add_arguments, run)."""
