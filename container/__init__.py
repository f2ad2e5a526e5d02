"""Files baked into the container image: its entrypoint, health probe and logging configuration."""
