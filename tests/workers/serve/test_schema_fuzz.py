"""schemathesis fuzzes every operation of the live /openapi.json (valid and invalid requests,
undeclared methods): no 5xx, and every answer conforms to the schema it declares."""

import subprocess
import sys
from pathlib import Path


def test_fuzzing_the_openapi_schema_finds_no_server_error(server, tmp_path):
    schemathesis = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [str(schemathesis), "run", f"{server.url}/openapi.json", "--max-examples", "20",
         "--seed", "1", "--workers", "2", "--checks", "all",
         "--header", f"Authorization: Bearer {server.key}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "5xx" not in result.stdout.split("SUMMARY")[-1]
