"""Identify decisions hold a target FPIR for the gallery as it is (``identify_fpir``)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.fpir import cohort_stats
from service.api.routes.common import encode_embedding
from service.gallery.gallery import Gallery
from service.security.keys import Namespace, namespace_of
from tests.service.conftest import AppFactory, fake_embedding, fake_photo
from tests.service.test_api_recognition import b64, enroll


def identify_point(client: TestClient, **params: object) -> dict:
    r = client.get("/identify", params={"embedding": encode_embedding(fake_embedding(999)),
                                        **params})
    assert r.status_code == 200, r.text
    return r.json()["operating_point"]


def test_identify_reports_the_fpir_threshold_for_this_gallery(client: TestClient) -> None:
    for person in range(1, 6):
        enroll(client, f"p{person}", fake_photo(person))
    point = identify_point(client)
    assert point["source"] == "fpir"
    assert point["fpir"] == 0.01 and point["gallery_faces"] == 5
    assert point["impostor_subjects"] == 5
    # the fake model ships no reference: the threshold is the gallery's own impostor mean
    # and std at the Gaussian quantile of the per-comparison rate
    vectors = np.stack([fake_embedding(p) for p in range(1, 6)])
    stats = cohort_stats(vectors, np.arange(5))
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - point["far"])
    assert point["threshold"] == pytest.approx(stats.mean + stats.std * z, abs=1e-5)
    assert 1 - (1 - point["far"]) ** 5 == pytest.approx(0.01)


def test_verify_keeps_its_per_comparison_threshold(client: TestClient) -> None:
    enroll(client, "a", fake_photo(1))
    enroll(client, "b", fake_photo(2))
    r = client.post("/verify", json={"image_a": b64(fake_photo(1)), "image_b": b64(fake_photo(1))})
    assert r.json()["operating_point"]["source"] == "setting"


def test_a_stricter_target_or_a_bigger_gallery_raises_the_threshold(client: TestClient) -> None:
    for person in range(1, 11):
        enroll(client, f"p{person}", fake_photo(person))
    loose = identify_point(client, identify_fpir=0.1)["threshold"]
    default = identify_point(client)["threshold"]
    strict = identify_point(client, identify_fpir=0.001)["threshold"]
    assert loose < default < strict
    for person in range(11, 41):
        enroll(client, f"p{person}", fake_photo(person))
    grown = identify_point(client)
    assert grown["gallery_faces"] == 40
    # more comparisons per stranger: each may match less often
    assert grown["far"] < 0.01 / 10


def test_a_request_threshold_still_wins(client: TestClient) -> None:
    enroll(client, "a", fake_photo(1))
    enroll(client, "b", fake_photo(2))
    point = identify_point(client, threshold=0.5, identify_fpir=0.1)
    assert point == {**point, "source": "request", "threshold": 0.5}
    r = client.post("/identify", json={"image": b64(fake_photo(1)), "identify_fpir": 0.2})
    assert r.json()["operating_point"]["fpir"] == 0.2


@pytest.mark.parametrize("value", [0, 1, -0.1, 1.5])
def test_identify_fpir_outside_zero_one_is_a_clear_422(client: TestClient, value: float) -> None:
    r = client.post("/identify", json={"image": b64(fake_photo(1)), "identify_fpir": value})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_field"
    r = client.post("/identify", files={"image": ("p.png", fake_photo(1), "image/png")},
                    data={"identify_fpir": str(value)})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_field"
    r = client.get("/identify", params={"embedding": encode_embedding(fake_embedding(1)),
                                        "identify_fpir": value})
    assert r.status_code == 422


def test_identify_fpir_off_uses_the_configured_threshold(make_client: AppFactory) -> None:
    client = make_client(identify_fpir="off", threshold=0.42)
    enroll(client, "a", fake_photo(1))
    enroll(client, "b", fake_photo(2))
    point = identify_point(client)
    assert point["source"] == "setting" and point["threshold"] == 0.42


def test_a_gallery_without_impostor_pairs_falls_back_to_the_model_point(
    client: TestClient,
) -> None:
    enroll(client, "only", fake_photo(1))  # one subject, no reference for the fake model
    assert identify_point(client)["source"] == "setting"


def test_tenants_have_their_own_counts_and_samples(tmp_path) -> None:
    gallery = Gallery.open(tmp_path / "g", "fake-v1", partition=namespace_of)
    acme, other = Namespace("acme"), Namespace("other")
    lm = np.zeros((5, 2))
    for person in range(1, 4):
        gallery.enroll(acme.internal(f"p{person}"), fake_embedding(person), bbox=(0, 0, 9, 9),
                       landmarks=lm, detection_confidence=1.0, image_sha256=f"a{person}")
    gallery.enroll(other.internal("x"), fake_embedding(7), bbox=(0, 0, 9, 9), landmarks=lm,
                   detection_confidence=1.0, image_sha256="o1")
    gallery.enroll("plain", fake_embedding(8), bbox=(0, 0, 9, 9), landmarks=lm,
                   detection_confidence=1.0, image_sha256="d1")
    assert gallery.view(acme.prefix).faces == 3
    assert gallery.view(acme.prefix).impostors.pairs == 3
    assert gallery.view(other.prefix).faces == 1 and gallery.view("").faces == 1
    before = gallery.view(acme.prefix)
    gallery.close()
    for _ in range(2):  # from the snapshot, then rebuilt from the store
        reopened = Gallery.open(tmp_path / "g", "fake-v1", partition=namespace_of)
        again = reopened.view(acme.prefix)
        assert (again.faces, again.impostors.pairs, again.impostors.subjects) == (
            before.faces, before.impostors.pairs, before.impostors.subjects)
        assert again.impostors.mean == pytest.approx(before.impostors.mean, abs=1e-9)
        reopened.delete_subject(acme.internal("p1"))
        assert reopened.view(acme.prefix).faces == 2
        assert reopened.view(acme.prefix).impostors.pairs == 1
        reopened.close()
        (tmp_path / "g" / "index.faiss").unlink(missing_ok=True)
        gallery = Gallery.open(tmp_path / "g", "fake-v1", partition=namespace_of)
        gallery.enroll(acme.internal("p1"), fake_embedding(1), bbox=(0, 0, 9, 9), landmarks=lm,
                       detection_confidence=1.0, image_sha256="a1")
        gallery.close()
