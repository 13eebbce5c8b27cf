"""The `gati` command: dispatch (main.py) and the leaves that sit above the services."""
