import contextlib

import pytest
import torch

from model.config import get_preset
from model.tokenizer import Tokenizer
from workers.data.sources import python_docs_corpus


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(python_docs_corpus(), vocab_size=512)


@pytest.fixture
def tiny_cfg():
    return get_preset("tiny")


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One local Ray for the whole session (start-up costs seconds): 2 cores + 1 logical CPU for
    Ray Data beside two training workers, as the embedded default starts it."""
    import ray

    from infra.ray_runtime import ensure_ray
    from infra.settings import Settings

    ensure_ray(Settings(home=tmp_path_factory.mktemp("longmix-home"), ray_num_cpus=3))
    yield ray
    ray.shutdown()


# moto's own server answers each request in a thread and checks a conditional put (If-None-Match)
# apart from the write; one request at a time makes that put atomic, as S3's is
SERIAL_MOTO = ("import sys; from werkzeug.serving import run_simple; from moto.server import "
               "DomainDispatcherApplication, MotoRequestHandler, create_backend_app; "
               "run_simple(sys.argv[1], int(sys.argv[2]), DomainDispatcherApplication("
               "create_backend_app), threaded=False, request_handler=MotoRequestHandler)")


@contextlib.contextmanager
def moto_server(serial: bool = False):
    """A local S3-compatible server (moto in server mode) on loopback, with a bucket; the AWS
    environment points at it until it stops."""
    import os
    import shutil
    import socket
    import subprocess
    import sys
    import time

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = ([sys.executable, "-c", SERIAL_MOTO, "127.0.0.1", str(port)] if serial else
               [shutil.which("moto_server", path=os.path.dirname(sys.executable)),
                "-H", "127.0.0.1", "-p", str(port)])
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "MLFLOW_S3_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="longmix")
        yield {"endpoint": endpoint, "bucket": "longmix", "client": client}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def s3_server():
    with moto_server() as server:
        yield server


@pytest.fixture
def serial_s3_server():
    """An S3 server whose conditional puts are atomic (SERIAL_MOTO), for races."""
    with moto_server(serial=True) as server:
        yield server
