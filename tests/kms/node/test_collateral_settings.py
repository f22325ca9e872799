"""``node.toml`` settings of the TCB status floor, the collateral floor and fetch limits."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from kms.app.config import ConfigError, load
from kms.app.setup import _verifier, init_node, make_collateral, write_config


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("settings")
    records = [init_node(base / f"n{i}", index=i) for i in (1, 2)]
    doc = tomllib.loads((base / "n1" / "node.toml").read_text())
    doc["committee"]["genesis"] = [
        {k: r[k] for k in ("index", "identity", "dkg_key", "dkg_key_signature")} for r in records
    ]
    return doc


@pytest.fixture
def node(template: dict[str, Any], tmp_path: Path) -> Any:
    def write(**settings: Any) -> Path:
        doc = copy.deepcopy(template)
        doc["node"].update(settings)
        path = tmp_path / "node.toml"
        write_config(path, doc)
        return path

    return write


def test_defaults_admit_only_patched_platforms_and_bound_fetches(node: Any) -> None:
    cfg = load(node(pccs_url="https://pccs.example"))
    assert _verifier(cfg).allowed_statuses == {"UpToDate", "SWHardeningNeeded"}
    floor = _verifier(cfg).floor
    assert floor.min_tcb_evaluation_data_number == 0 and floor.max_age == 30 * 86400
    provider = make_collateral(cfg)
    assert provider.max_concurrent_fetches == 4 and provider.failure_ttl == 60
    assert provider.client.floor == floor


def test_the_operator_sets_the_floors(node: Any) -> None:
    import datetime

    cfg = load(
        node(
            pccs_url="https://pccs.example",
            allowed_tcb_statuses=["UpToDate", "OutOfDate"],
            min_tcb_evaluation_data_number=18,
            min_collateral_issue_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
            max_collateral_age=0,
            max_concurrent_collateral_fetches=1,
            collateral_failure_ttl=5,
        )
    )
    verifier = _verifier(cfg)
    assert verifier.allowed_statuses == {"UpToDate", "OutOfDate"}
    assert verifier.floor.min_tcb_evaluation_data_number == 18
    assert verifier.floor.min_issue_date == 1767225600 and verifier.floor.max_age is None
    provider = make_collateral(cfg)
    assert provider.max_concurrent_fetches == 1 and provider.failure_ttl == 5


@pytest.mark.parametrize(
    "bad",
    [
        {"allowed_tcb_statuses": ["Revoked"]},
        {"allowed_tcb_statuses": "UpToDate"},
        {"allowed_tcb_statuses": []},
        {"min_tcb_evaluation_data_number": -1},
        {"max_collateral_age": "1d"},
        {"max_concurrent_collateral_fetches": 0},
        {"min_collateral_issue_date": True},
    ],
)
def test_bad_settings_are_refused(node: Any, bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        load(node(**bad))
