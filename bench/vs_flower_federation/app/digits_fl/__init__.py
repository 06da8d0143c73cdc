"""foedus's federation benchmark job as a Flower App (see ../pyproject.toml)."""
