"""deploy/kubernetes/shared-spool/: the Deployment variant for a shared PostgreSQL
spool stays what docs/scaling.md says (several replicas, no volume, the URL from a
Secret), and its copies of the single-spool manifests stay equal to them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sidecar.config import parse_config

KUBE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
VARIANT = KUBE / "shared-spool"


@pytest.mark.parametrize("name", ["certificate.yaml", "secrets.yaml", "service.yaml"])
def test_shared_manifests_are_copies(name: str) -> None:
    assert (VARIANT / name).read_text() == (KUBE / name).read_text()


def test_every_file_is_in_the_kustomization() -> None:
    listed = yaml.safe_load((VARIANT / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in VARIANT.glob("*.yaml")
                                    if p.name != "kustomization.yaml")


def test_a_stateless_deployment_of_several_replicas() -> None:
    deployment = yaml.safe_load((VARIANT / "deployment.yaml").read_text())
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    pod = spec["template"]["spec"]
    assert not any("emptyDir" in v and v["name"] == "spool" or "persistentVolumeClaim" in v
                   for v in pod["volumes"])
    (sidecar,) = [c for c in pod["containers"] if c["name"] == "sidecar"]
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    secret = {v["name"]: v for v in pod["volumes"]}["spool-url"]["secret"]
    assert secret["secretName"] == "whatsapp-sidecar-spool-url"
    config = yaml.safe_load(yaml.safe_load((VARIANT / "configmap.yaml").read_text())
                            ["data"]["sidecar.yaml"])
    assert config["delivery"]["spool_url_file"].startswith(mounts["spool-url"] + "/")
    assert "spool_path" not in config["delivery"]


def test_the_variants_config_parses(tmp_path: Path) -> None:
    config = yaml.safe_load(yaml.safe_load((VARIANT / "configmap.yaml").read_text())
                            ["data"]["sidecar.yaml"])
    url = tmp_path / "spool-url"
    url.write_text("postgresql://sidecar:pw@db.internal:5432/sidecar?sslmode=verify-full\n")
    config["delivery"]["spool_url_file"] = str(url)
    for key in ("app_secrets_files", "verify_token_file"):
        config["meta"].pop(key)
    config["meta"].update(app_secrets=["s"], verify_token="t")
    config["upstream"].pop("signing_secret_file")
    parsed = parse_config(config, base_dir=tmp_path, env={})
    assert parsed.delivery.spool_url is not None
