"""Every service's HTTP face counts its requests by route template, never by raw path."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from factura.common import metrics
from factura.common.http import Health, create_app
from factura.common.metrics import OTHER_TENANT, tenant_label

router = APIRouter()


@router.get("/v1/invoices/{invoice_id:path}/status")
async def status(invoice_id: str) -> dict[str, str]:
    return {"invoice_id": invoice_id}


@router.get("/v1/boom")
async def boom() -> None:
    raise RuntimeError("a bug")


def count(route: str, method: str, status: str) -> float:
    labels = {"route": route, "method": method, "status": status}
    return REGISTRY.get_sample_value("factura_http_requests_total", labels) or 0.0


def observed(route: str, method: str) -> float:
    labels = {"route": route, "method": method}
    return REGISTRY.get_sample_value("factura_http_request_duration_seconds_count", labels) or 0.0


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app("test", Health(), [router]), raise_server_exceptions=False) as c:
        yield c


def test_a_matched_request_is_counted_under_its_route_template(client: TestClient) -> None:
    route = "/v1/invoices/{invoice_id}/status"
    before, timed = count(route, "GET", "200"), observed(route, "GET")
    assert client.get("/v1/invoices/F-2026/0001/status").status_code == 200
    assert count(route, "GET", "200") == before + 1
    assert observed(route, "GET") == timed + 1
    assert (
        REGISTRY.get_sample_value(
            "factura_http_requests_total",
            {"route": "/v1/invoices/F-2026/0001/status", "method": "GET", "status": "200"},
        )
        is None
    )


def test_no_route_is_unmatched_and_an_invented_method_is_other(client: TestClient) -> None:
    before, other = count("unmatched", "GET", "404"), count("unmatched", "other", "404")
    assert client.get("/wp-admin/setup.php").status_code == 404
    assert client.request("PROPFIND", "/nothing/here").status_code == 404
    assert count("unmatched", "GET", "404") == before + 1
    assert count("unmatched", "other", "404") == other + 1


def test_a_handler_that_raises_counts_as_500_and_a_wrong_method_as_405(client: TestClient) -> None:
    errors, wrong = count("/v1/boom", "GET", "500"), count("/livez", "POST", "405")
    assert client.get("/v1/boom").status_code == 500
    assert client.post("/livez").status_code == 405
    assert count("/v1/boom", "GET", "500") == errors + 1
    assert count("/livez", "POST", "405") == wrong + 1


def test_the_series_are_exposed_on_metrics(client: TestClient) -> None:
    client.get("/livez")
    body = client.get("/metrics").text
    assert 'factura_http_requests_total{method="GET",route="/livez",status="200"}' in body
    assert 'factura_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/livez"}' in body


def test_tenant_label_is_the_tenant_only_when_allow_listed() -> None:
    try:
        assert tenant_label("acme-es") == OTHER_TENANT
        metrics.configure(["acme-es", "harinas-sur"])
        assert tenant_label("acme-es") == "acme-es"
        assert tenant_label("harinas-sur") == "harinas-sur"
        assert tenant_label("someone-else") == OTHER_TENANT
        metrics.configure([])
        assert tenant_label("acme-es") == OTHER_TENANT
    finally:
        metrics.configure([])
