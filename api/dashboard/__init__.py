"""The training dashboard: ``mount_dashboard(app)`` serves it at ``/dashboard``."""

from api.dashboard.router import mount_dashboard, router

__all__ = ["mount_dashboard", "router"]
