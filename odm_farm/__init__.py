"""ODM Farm launcher: the `odm-farm` command that runs the roles (api, worker, up)."""

__version__ = "0.1.0"
