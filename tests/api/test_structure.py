"""The API's layering: routes hold no SQL and no NumPy; the API process reads the analytics version without
importing SciPy."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import api.routes

ROUTES = Path(api.routes.__file__).parent
SQL = re.compile(r"\b(SELECT|INSERT INTO|UPDATE|DELETE FROM|WHERE)\b")


def test_routes_hold_no_sql_and_no_numpy() -> None:
    modules = sorted(ROUTES.glob("*.py"))
    assert len(modules) >= 9
    for path in modules:
        tree = ast.parse(path.read_text())
        nodes = list(ast.walk(tree))
        imported = {a.name for n in nodes if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in nodes if isinstance(n, ast.ImportFrom)}
        assert not {m for m in imported if m.split(".")[0] in ("numpy", "scipy")}, path
        assert not {m for m in imported if m.startswith("psycopg.sql") or m == "psycopg.rows"}, path
        calls = {n.func.attr for n in nodes if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        assert not calls & {"execute", "executemany", "cursor", "copy"}, path
        strings = [n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        assert not [s for s in strings if SQL.search(s)], path


def test_the_api_process_does_not_import_scipy() -> None:
    code = (
        "import sys\n"
        "from api.main import create_app\n"
        "from vitalab.settings import load_settings\n"
        "app = create_app(load_settings(database_url=None, mqtt_url=None), 'postgresql://unused')\n"
        "app.openapi()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout
