"""``faceserve_client``'s subject management (issue 20) against a real uvicorn server with the
fake pipeline: rename, metadata, merge, faces by page (ids with ``/`` from older versions
included, so the encoded slash crosses real HTTP), the chosen face on enroll, verify's
``on_multiple``, explicit metadata replacement; the blocking and the asyncio client alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faceserve_client as fc
import numpy as np
import pytest

from tests.service.conftest import FakePipeline, fake_embedding, fake_photo
from tests.service.liveserver import LiveServer, live_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(FakePipeline(), tmp_path / "data", rate_limit_per_s=0) as s:
        yield s


def legacy(server: LiveServer, subject_id: str, person: int) -> str:
    """A subject an older version enrolled with "/" in its id."""
    record, _ = server.app.state.services.gallery.enroll(
        subject_id, fake_embedding(person), bbox=(0, 0, 9, 9), landmarks=np.zeros((5, 2)),
        detection_confidence=1.0, image_sha256=f"legacy-{person}")
    return str(record.face_id)


def test_the_client_manages_subjects(server: LiveServer) -> None:
    key = server.create_key("subjects")
    old = legacy(server, "org/7", 7)
    with fc.Client(server.url, api_key=key) as c:
        rose = c.enroll(fake_photo(1), "rose", metadata={"desk": 4})
        assert rose.metadata_status == "set"
        again = c.enroll(fake_photo(1), "rose", metadata={"desk": 5})
        assert not again.created and again.metadata_status == "kept"
        assert c.enroll(fake_photo(1), "rose", metadata={"desk": 5},
                        replace_metadata=True).metadata_status == "replaced"
        ids = [rose.face_id] + [c.enroll(fake_photo(1, variant=v), "rose").face_id
                                for v in (1, 2)]
        assert [f.face_id for f in c.faces("rose", page_size=2)] == ids  # two pages
        renamed = c.rename_subject("rose", "rose-tyler")
        assert renamed.renamed_from == "rose" and renamed.faces_moved == 3
        assert c.update_subject("rose-tyler", metadata={"name": "Rose"}).metadata == {
            "name": "Rose"}
        with pytest.raises(fc.APIError) as refused:
            c.rename_subject("rose-tyler", "org/8")
        assert refused.value.status == 422
        # The old id with a slash, through the client's encoded path.
        assert [f.face_id for f in c.faces("org/7")] == [old]
        merged = c.merge_subject("org/7", "rose-tyler")
        assert merged.faces_moved == 1 and merged.face_count == 4
        assert sorted(s.subject_id for s in c.subjects()) == ["rose-tyler"]
        assert len(list(c.faces())) == 4
        # Kit (face 1, the larger, the primary) and Rose (face 0) in one photo.
        both = fake_photo(20, faces=2)
        assert [f.bbox.left for f in c.embed(both).faces] == [10, 110]
        chosen = c.enroll(both, "rose-2", face=0)
        assert chosen.bbox.left == 10 and chosen.face_selection.decided_by == "request"
        boxed = c.enroll(both, "kit", face=[110, 20, 169, 79])
        assert boxed.bbox.left == 110
        r = c.verify(both, subject_id="rose-2", on_multiple="any")
        assert r.match and r.faces[0].face_selection.decided_by == "best_match"
        with pytest.raises(fc.APIError) as crowded:
            c.verify(both, subject_id="rose-2", on_multiple="reject")
        assert crowded.value.code == "multiple_faces"


def test_the_async_client_manages_subjects(server: LiveServer) -> None:
    key = server.create_key("subjects")
    legacy(server, "org/9", 9)

    async def scenario() -> dict[str, Any]:
        async with fc.AsyncClient(server.url, api_key=key) as c:
            await c.enroll(fake_photo(3), "ann")
            await c.enroll(fake_photo(3, variant=1), "ann")
            pages = [f.face_id async for f in c.faces("ann", page_size=1)]
            renamed = await c.update_subject("ann", new_id="ann-b", metadata={"v": 1})
            merged = await c.merge_subject("org/9", "ann-b")
            chosen = await c.enroll(fake_photo(30, faces=2), "cy", face=0)
            verified = await c.verify(fake_photo(30, faces=2), subject_id="cy",
                                      on_multiple="any")
            subjects = [s.subject_id async for s in c.subjects()]
            return {"pages": pages, "renamed": renamed, "merged": merged, "chosen": chosen,
                    "verified": verified, "subjects": subjects}

    got = asyncio.run(scenario())
    assert len(got["pages"]) == 2 and len(set(got["pages"])) == 2
    assert got["renamed"].subject_id == "ann-b" and got["renamed"].metadata == {"v": 1}
    assert got["merged"].merged_subject_id == "org/9" and got["merged"].face_count == 3
    assert got["chosen"].bbox.left == 10
    assert got["verified"].match
    assert sorted(got["subjects"]) == ["ann-b", "cy"]
