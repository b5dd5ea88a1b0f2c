"""``faceserve_client`` stands alone: importable and usable without torch, faiss, numpy, PIL or
anything of ``service``/``models``; and the server answers with the client's own classes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "clients" / "python"

BLOCKED = ("torch", "torchvision", "faiss", "numpy", "PIL", "service", "models", "fastapi",
           "starlette", "uvicorn", "tqdm")

SCRIPT = textwrap.dedent(
    """
    import sys

    BLOCKED = {blocked!r}

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"the client must not import {{name}}")
            return None

    sys.meta_path.insert(0, Refuse())
    import faceserve_client as fc
    from faceserve_client import errors, models

    c = fc.Client("http://127.0.0.1:9", api_key="k", max_retries=0)
    call = fc._core.calls.enroll([b"\\xff\\xd8\\xff", b"\\x89PNG\\r\\n\\x1a\\n"], "alice")
    assert [f[1][2] for f in call.files] == ["image/jpeg", "image/png"]
    assert fc._core.encode_embedding([1.0, 0.0]) == "AACAPwAAAAA"
    try:
        c.health()
    except fc.ConnectionError:
        pass
    else:
        raise SystemExit("expected a connection error")
    c.close()
    models.Candidate(subject_id="a", face_id="f", similarity=0.5)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print("loaded:", loaded)
    raise SystemExit(1 if loaded else 0)
    """
)


def test_the_client_imports_without_the_servers_dependencies() -> None:
    # Only the client's own folder on the path: nothing of the repository root.
    env = {"PYTHONPATH": str(CLIENT), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-I", "-c",
         f"import sys; sys.path.insert(0, {str(CLIENT)!r}); "
         + "exec(" + repr(SCRIPT.format(blocked=BLOCKED)) + ")"],
        capture_output=True, text=True, env=env, cwd=CLIENT, timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_client_distribution_depends_on_httpx_and_pydantic_only() -> None:
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "faceserve-client"
    assert sorted(d.split(">")[0] for d in project["dependencies"]) == ["httpx", "pydantic"]


def test_the_server_answers_with_the_clients_models() -> None:
    """One definition: the server's response classes are the client's, not copies."""
    import faceserve_client.models as client_models

    from service.api import schemas

    for name in client_models.__all__:
        assert getattr(schemas, name) is getattr(client_models, name), name
