"""The whole gati topology on one machine as processes: broker, Redis, three services."""
