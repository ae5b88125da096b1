"""powersync-django: serve the PowerSync sync protocol from your Django models."""

__version__ = "0.1.0"
