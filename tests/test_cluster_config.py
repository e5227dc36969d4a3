"""cluster.yaml, the on-prem variant in docs/cluster.md, and every job in jobs/ are valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from llray.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _onprem_yaml() -> dict:
    text = (ROOT / "docs" / "cluster.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    [block] = [b for b in blocks if "type: local" in b]
    return yaml.safe_load(block)


@pytest.mark.parametrize("name", ["cluster.yaml", "docs/cluster.md (on-prem)"])
def test_cluster_configs_pass_the_launchers_schema(name):
    raw = yaml.safe_load((ROOT / name).read_text()) if name.endswith(".yaml") else _onprem_yaml()
    cfg = prepare_config(raw)
    validate_config(cfg)  # raises on any field the launcher does not know
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
              if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert "~/.ray/auth_token" in cfg["file_mounts"]
    assert any("pip install" in c and "~/llray" in c for c in cfg["setup_commands"])


def test_cluster_yaml_has_a_cpu_head_and_autoscaling_gpu_workers():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))
    gpu = [t for t in types.values() if t["node_config"]["InstanceType"].startswith("g")]
    assert gpu and all(t["min_workers"] == 0 < t["max_workers"] for t in gpu)


@pytest.mark.parametrize("job", sorted(p.name for p in (ROOT / "jobs").glob("*.yaml")))
def test_every_job_spec_loads(job):
    cfg = load_config(ROOT / "jobs" / job)
    assert cfg.runs()
