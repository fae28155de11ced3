"""Serve settings: keys from settings and a secret file, replicas fixed or autoscaling."""

import pytest
from pydantic import SecretStr

from infra.settings import Settings
from workers.serve.app import deployment_options
from workers.serve.request_guard import RequestGuard, load_api_keys


def test_keys_come_from_settings_and_a_secret_file(tmp_path):
    secret = tmp_path / "keys"
    secret.write_text("from-file-1\n\n  from-file-2  \n")
    keys = load_api_keys([SecretStr("from-env")], secret)
    assert keys == ["from-env", "from-file-1", "from-file-2"]
    assert "from-env" not in repr(Settings(serve_api_keys=[SecretStr("from-env")]))
    with pytest.raises(ValueError, match="at least one API key"):
        RequestGuard(app=None, api_keys=[], max_body_bytes=1024)


def test_replicas_are_fixed_or_autoscale_between_the_bounds():
    fixed = deployment_options(Settings(serve_num_replicas=2, serve_max_batch_size=4))
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed
    assert fixed["max_ongoing_requests"] == 16 and fixed["ray_actor_options"] == {"num_cpus": 1.0}
    scaling = deployment_options(Settings(serve_num_replicas=1, serve_autoscale_max_replicas=4,
                                          serve_target_ongoing_requests=2))
    assert scaling["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4,
                                             "target_ongoing_requests": 2.0}
    assert "num_replicas" not in scaling
    with pytest.raises(ValueError, match="below serve_num_replicas"):
        Settings(serve_num_replicas=3, serve_autoscale_max_replicas=2)
