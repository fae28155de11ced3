"""One real server for the serving tests: `longmix serve --detach` on the session's local Ray,
serving a tiny checkpoint on 127.0.0.1; the tests call it with real clients."""

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import get_preset
from model.tokenizer import Tokenizer
from model.transformer import Transformer


@dataclass
class Server:
    url: str  # base URL; the API is under /v1
    key: str
    model: str  # the served model's id
    checkpoint: Path
    transformer: Transformer  # the same checkpoint, loaded in-process
    tokenizer: Tokenizer

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
def one_thread():
    """Replicas compute on one thread each (one CPU): so do the in-process references they are
    compared with bit for bit (reductions split over two threads round differently)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def served_checkpoint(tmp_path_factory, tokenizer) -> Path:
    torch.manual_seed(1234)
    folder = tmp_path_factory.mktemp("serve") / "tiny-served"
    save_checkpoint(folder, Transformer(get_preset("tiny")), tokenizer)
    return folder


@pytest.fixture(scope="package")  # gone before later packages need the replica's CPU
def server(ray_local, served_checkpoint, tmp_path_factory):
    from ray import serve

    from infra.settings import get_settings
    from pipelines.cli import app

    with pytest.MonkeyPatch.context() as env:
        env.setenv("LONGMIX_HOME", str(tmp_path_factory.mktemp("serve-home")))
        env.setenv("LONGMIX_SERVE_MAX_BODY_BYTES", str(256 * 1024))
        for name in ("LONGMIX_SERVE_API_KEYS", "LONGMIX_SERVE_API_KEY_FILE", "LONGMIX_CONFIG"):
            env.delenv(name, raising=False)
        get_settings.cache_clear()
        result = CliRunner().invoke(app, ["serve", "--model", str(served_checkpoint), "--port", "0",
                                          "--detach", "--unapproved"])  # a folder: development
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    served = re.search(r"serving (\S+) at (http://127\.0\.0\.1:\d+)/v1", result.output)
    key = re.search(r"API key \(made for this run\): (\S+)", result.output)
    assert served and key, result.output
    model, tokenizer = load_checkpoint(served_checkpoint)
    yield Server(served[2], key[1], served[1], served_checkpoint, model.eval(), tokenizer)
    serve.shutdown()
    deadline = time.monotonic() + 30  # the next package's Ray jobs need the replica's CPU back
    while (ray_local.available_resources().get("CPU", 0) < ray_local.cluster_resources()["CPU"]
           and time.monotonic() < deadline):
        time.sleep(0.2)
