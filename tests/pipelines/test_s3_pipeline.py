"""The pipeline (its first two stages, then eval, gate, approval and deploy) with every storage
path on S3 (a local S3-compatible server): the datasets, the training checkpoints, MLflow's
artifacts, the audit log and the deployment records; only the settings differ from the embedded
default."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from infra.services import free_port
from tests.pipelines.test_pipeline_e2e import _env


def _keys(s3_server, prefix: str) -> list[str]:
    listing = s3_server["client"].list_objects_v2(Bucket=s3_server["bucket"], Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def test_the_tiny_pipeline_with_all_storage_on_s3(s3_server, tmp_path):
    home = tmp_path / "home"
    bucket = s3_server["bucket"]
    env = _env(home, LONGMIX_STORAGE_URI=f"s3://{bucket}/state",
               LONGMIX_MLFLOW_ARTIFACT_ROOT=f"s3://{bucket}/mlartifacts",
               LONGMIX_SERVE_PORT=str(free_port()),
               **{k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                             "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                             "MLFLOW_S3_ENDPOINT_URL")})
    longmix = str(Path(sys.executable).with_name("longmix"))
    try:
        # two stages: the second starts from the first's checkpoint on S3; the later stages
        # store nothing another way (the whole chain: test_pipeline_e2e.py)
        result = subprocess.run([longmix, "run", "--profile", "tiny", "--stages",
                                 "pretrain,long_context"], env=env, capture_output=True,
                                text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

        assert "state/datasets/tiny/manifest.json" in _keys(s3_server, "state/datasets/tiny/")
        checkpoints = _keys(s3_server, "state/train/")  # Ray Train's, with its training state
        for name in ("digest.json", "checkpoint/model.safetensors",
                     "training_state/optimizer.safetensors"):
            assert any(k.endswith(name) for k in checkpoints), name
        assert any(k.endswith("model.safetensors") for k in _keys(s3_server, "mlartifacts/"))
        assert len(_keys(s3_server, "state/audit/")) >= 4  # gate, review, approval, deploy
        current = json.loads(s3_server["client"].get_object(
            Bucket=bucket, Key="state/deployments/longmix/current.json")["Body"].read())
        for local in ("datasets", "audit", "deployments", "mlartifacts", "train"):
            assert not (home / local).exists(), f"{local} written locally"

        key = (home / "serve" / "api_key").read_text().strip()
        reply = httpx.post(f"{current['endpoint']}/v1/completions", timeout=60,
                           headers={"Authorization": f"Bearer {key}"},
                           json={"model": "longmix", "prompt": "def f(", "max_tokens": 4})
        assert reply.status_code == 200, reply.text
        verify = subprocess.run([longmix, "audit", "verify"], env=env, capture_output=True,
                                text=True, timeout=120)
        assert verify.returncode == 0 and "chain intact" in verify.stdout, verify.stdout
    finally:
        subprocess.run([longmix, "down"], env=env, capture_output=True, timeout=120)
