"""Django's SQLite backend, which also makes the database's folder when it first opens it.

Settings import creates no folders (issue 7), and SQLite cannot create a file in a folder
that does not exist: `manage.py migrate` on a fresh clone, a worker started with a new
VAR_DIR, and the test run all open the database before anything else writes there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.db.backends.sqlite3 import base


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        database = str(conn_params["database"])
        # In-memory databases and URIs ("file:...?mode=memory") have no folder to make.
        if database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        return super().get_new_connection(conn_params)
