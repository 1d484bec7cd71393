"""Contract test of fedward/split_superlink.py against Flower 1.41's own SuperLink app:
on the public port only the Fleet API answers; on the control port everything does."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from flwr.superlink.main import create_app

from fedward import split_superlink

PUBLIC, CONTROL = 9092, 9093


def post(port: int, path: str) -> httpx.Response:
    gate = split_superlink.fleet_only_on_public(create_app(), CONTROL)

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gate),
                                     base_url=f"http://127.0.0.1:{port}") as client:
            return await client.post(path, content=b"", headers={"content-type": "application/protobuf"})

    return asyncio.run(send())


def test_flower_still_serves_fleet_and_control_under_the_paths_the_gate_knows():
    paths = set(create_app().openapi()["paths"])
    assert any(p.startswith(split_superlink.FLEET_PREFIX) for p in paths)
    assert "/v1/control/list-runs" in paths and "/v1/control/register-node" in paths
    assert not any(p.startswith("/v1/control/") and p.startswith(split_superlink.FLEET_PREFIX) for p in paths)


@pytest.mark.parametrize("path", ["/v1/control/list-runs", "/v1/control/register-node", "/v1/runtime/get-run",
                                  "/docs", "/v1/fleet/../control/list-runs"])
def test_the_public_port_refuses_everything_but_the_fleet_api(path: str):
    response = post(PUBLIC, path)
    assert response.status_code == 404 and b"only the Fleet API" in response.content, (path, response.content)


def test_the_control_port_and_the_fleet_api_reach_flower():
    assert b"only the Fleet API" not in post(CONTROL, "/v1/control/list-runs").content
    assert b"only the Fleet API" not in post(PUBLIC, "/v1/fleet/get-run").content


def test_other_flower_release_is_refused_loudly(monkeypatch):
    monkeypatch.setattr(split_superlink, "version", lambda _name: "1.42.0")
    with pytest.raises(SystemExit, match="written for flwr 1.41.x and found flwr 1.42.0"):
        split_superlink.check_flower_version()
