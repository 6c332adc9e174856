"""exact(): equalities become $eq (the index-friendly spelling), operators stay as they are."""

from factura.common.mongo import exact


def test_plain_values_become_eq_and_operator_expressions_stay() -> None:
    query = {"tenant_id": "acme", "seq": {"$gt": 3}, "n": 4, "$or": [{"a": 1}], "x": None}
    assert exact(query) == {
        "tenant_id": {"$eq": "acme"},
        "seq": {"$gt": 3},
        "n": {"$eq": 4},
        "$or": [{"a": 1}],
        "x": {"$eq": None},
    }
