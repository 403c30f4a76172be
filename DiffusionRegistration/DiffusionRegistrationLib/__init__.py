"""DiffusionRegistration backend."""
