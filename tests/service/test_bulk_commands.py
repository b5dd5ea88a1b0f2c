"""``faceserve enroll-dir`` and ``identify-dir`` against a real server, on real photos.

A folder of a few LFW people (one folder each) plus the awkward cases a real folder has: a
photo without a face, a group photo, a blurred photo, a file that is not an image, a photo
outside any person's folder. enroll-dir is killed (SIGKILL, as a crash) part-way through,
then run again: the gallery must hold each photo once, and the CSV one row per photo with its
outcome. identify-dir then names the people in their other photos.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faceserve_client as fc
import pytest
from PIL import Image, ImageFilter

from service.cli import main
from tests.service.liveserver import LiveServer, live_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PEOPLE = 5  # LFW people with three or more photos: two enrolled, the third a probe


@pytest.fixture(scope="module")
def server(face_pipeline: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(face_pipeline, tmp_path_factory.mktemp("bulk")) as s:
        yield s


def lfw_picks(lfw: Path) -> tuple[list[tuple[str, list[Path], Path]], Path]:
    """(name, enrolled photos, probe) of the first people with 3+ photos; a stranger."""
    picks, stranger = [], None
    for person in sorted(p for p in lfw.iterdir() if p.is_dir()):
        photos = sorted(person.glob("*.jpg"))
        if len(photos) >= 3 and len(picks) < PEOPLE:
            picks.append((person.name, photos[:2], photos[2]))
        elif len(photos) == 1 and stranger is None:
            stranger = photos[0]
        if len(picks) == PEOPLE and stranger is not None:
            return picks, stranger
    pytest.skip("not enough LFW people")


def save_jpeg(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert("RGB").save(path, format="JPEG", quality=95)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory, lfw: Path, people: Path) -> Path:
    root = tmp_path_factory.mktemp("photos")
    picks, _ = lfw_picks(lfw)
    for name, photos, _ in picks:
        (root / name).mkdir()
        for photo in photos:
            (root / name / photo.name).symlink_to(photo)
    save_jpeg(Image.new("RGB", (200, 200), (120, 130, 140)), root / "blank_wall" / "wall.jpg")
    (root / "group").mkdir()
    (root / "group" / "obama_and_biden.jpg").symlink_to(people / "test/obama_and_biden.jpg")
    blurred = Image.open(people / "train/obama/obama2.jpg").filter(ImageFilter.GaussianBlur(12))
    save_jpeg(blurred, root / "obama" / "blurred.jpg")
    (root / "obama" / "notes.png").write_bytes(b"this is not a picture")
    save_jpeg(Image.open(people / "train/biden/biden.jpg"), root / "loose_photo.jpg")
    (root / "readme.txt").write_text("not a photo: ignored")
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def data_rows(path: Path) -> int:
    return max(0, len(path.read_text(encoding="utf-8").splitlines()) - 1) if path.exists() else 0


def test_enroll_dir_resumes_after_a_crash_without_duplicates(
    server: LiveServer, photo_dir: Path, tmp_path: Path, lfw: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "outcomes.csv"
    args = ["enroll-dir", str(photo_dir), "--url", server.url, "--csv", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", *args, "--concurrency", "1", "--no-progress"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while data_rows(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
        proc.send_signal(signal.SIGKILL)  # a crash: no clean-up of any kind
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    interrupted = read_csv(out)
    photos = 2 * PEOPLE + 5
    assert 3 <= len(interrupted) < photos

    assert main([*args, "--concurrency", "3", "--no-progress"]) == 1  # two photos are errors
    printed = capsys.readouterr().out
    rows = read_csv(out)
    assert [r["file"] for r in rows] == sorted(r["file"] for r in rows)  # one row per photo
    assert len(rows) == photos
    by_file = {r["file"]: r for r in rows}
    assert by_file["blank_wall/wall.jpg"]["outcome"] == "no_face"
    assert by_file["group/obama_and_biden.jpg"]["outcome"] == "several_faces"
    assert by_file["obama/blurred.jpg"]["outcome"] == "poor_quality"
    assert by_file["obama/notes.png"]["outcome"] == "error"
    assert by_file["obama/notes.png"]["code"] == "not_an_image"
    assert by_file["loose_photo.jpg"]["outcome"] == "error"
    assert by_file["loose_photo.jpg"]["code"] == "no_subject"
    picks, _ = lfw_picks(lfw)
    for name, enrolled, _ in picks:
        for photo in enrolled:
            row = by_file[f"{name}/{photo.name}"]
            assert row["subject_id"] == name
            assert row["outcome"] in ("enrolled", "already_enrolled", "several_faces"), row
        assert any(by_file[f"{name}/{p.name}"]["face_id"] for p in enrolled), name
    counts = Counter(r["outcome"] for r in rows)
    for outcome, n in counts.items():
        assert any(line.split() == [outcome, str(n)] for line in printed.splitlines()), printed

    # The gallery: exactly the photos the CSV says are enrolled, each once.
    with fc.Client(server.url, timeout=120) as c:
        stored = {f.face_id: f for f in c.faces()}
    enrolled_rows = [r for r in rows if r["face_id"]]
    assert sorted(stored) == sorted(r["face_id"] for r in enrolled_rows)
    shas = [(f.subject_id, f.image_sha256) for f in stored.values()]
    assert len(shas) == len(set(shas))
    for r in enrolled_rows:
        assert stored[r["face_id"]].subject_id == r["subject_id"]
        assert stored[r["face_id"]].image_sha256 == r["sha256"]

    # A third run tries the two errors again (one is a request); nothing else changes.
    assert main([*args, "--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert "1 sent in" in printed and f"{photos - 2} done by an earlier run" in printed
    assert read_csv(out) == rows
    with fc.Client(server.url, timeout=120) as c:
        assert sorted(f.face_id for f in c.faces()) == sorted(stored)


def test_enroll_dir_takes_subjects_from_file_names(
    server: LiveServer, lfw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    picks, _ = lfw_picks(lfw)
    name, photos, _ = picks[-1]
    for photo in photos:
        (flat / photo.name).symlink_to(photo)  # e.g. Aaron_Peirsol_0001.jpg
    out = tmp_path / "flat.csv"
    code = main(["enroll-dir", str(flat), "--url", server.url, "--csv", str(out),
                 "--subject-from", r"^(?P<subject>.+)_\d{4}\.jpg$", "--on-multiple", "primary",
                 "--no-progress"])
    assert code == 0, capsys.readouterr()
    rows = read_csv(out)
    assert {r["subject_id"] for r in rows} == {name}
    assert {r["outcome"] for r in rows} <= {"enrolled", "already_enrolled"}


def test_identify_dir_names_every_face(
    server: LiveServer, photo_dir: Path, lfw: Path, people: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    picks, stranger = lfw_picks(lfw)
    probes = tmp_path / "probes"
    probes.mkdir()
    for _name, _, probe in picks:
        (probes / probe.name).symlink_to(probe)
    (probes / "stranger.jpg").symlink_to(stranger)
    (probes / "kit_with_rose.jpg").symlink_to(people / "test/kit_with_rose.jpg")
    save_jpeg(Image.new("RGB", (160, 160), (30, 30, 30)), probes / "dark.jpg")
    (probes / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    # The gallery: the people's folders (enrolled here unless an earlier test did).
    main(["enroll-dir", str(photo_dir), "--url", server.url, "--csv",
          str(tmp_path / "enrolled.csv"), "--no-progress"])
    capsys.readouterr()

    out = tmp_path / "who.csv"
    assert main(["identify-dir", str(probes), "--url", server.url, "--out", str(out),
                 "--concurrency", "3", "--no-progress"]) == 1  # broken.jpg is an error
    rows = read_csv(out)
    files = [r["file"] for r in rows]
    assert files == sorted(files)
    by_file: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_file.setdefault(row["file"], []).append(row)
    for name, _, probe in picks:
        central = min(by_file[probe.name], key=lambda r: abs(
            (int(r["left"]) + int(r["right"])) / 2 - 125) + abs(
            (int(r["top"]) + int(r["bottom"])) / 2 - 125))
        assert central["decision"] == "match" and central["subject_id"] == name, central
        assert float(central["similarity"]) >= float(central["threshold"])
    for row in by_file["stranger.jpg"] + by_file["kit_with_rose.jpg"]:
        assert row["decision"] == "unknown" and row["subject_id"] == ""
        assert row["best_subject_id"] and float(row["best_similarity"]) < float(row["threshold"])
    assert len(by_file["kit_with_rose.jpg"]) == 2
    assert [r["decision"] for r in by_file["dark.jpg"]] == ["no_face"]
    [broken] = by_file["broken.jpg"]
    assert broken["decision"] == "error" and "image" in broken["error"]

    # The same as JSON lines, to standard output.
    assert main(["identify-dir", str(probes), "--url", server.url, "--format", "jsonl",
                 "--no-progress"]) == 1
    lines = [json.loads(line) for line in io.StringIO(capsys.readouterr().out)]
    assert [(r["file"], r["decision"], r["subject_id"]) for r in lines] == [
        (r["file"], r["decision"], r["subject_id"] or None) for r in rows]
    assert all(isinstance(r["left"], int) for r in lines if r["decision"] == "match")


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("enroll-dir", "identify-dir"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        for option in ("--url", "--api-key", "--concurrency", "--timeout", "--retries"):
            assert option in text
    with pytest.raises(SystemExit):
        main(["enroll-dir", "--help"])
    assert "--subject-from" in capsys.readouterr().out


def test_a_bad_key_stops_the_run_and_a_good_one_is_used(
    face_pipeline: Any, photo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With API keys: a key that cannot enroll stops enroll-dir at once (every photo would
    fail alike) with exit status 2; --api-key is sent."""
    with live_server(face_pipeline, tmp_path / "g", rate_limit_per_s=0) as keyed:
        reader = keyed.create_key("reader", ("recognize",))
        out = tmp_path / "x.csv"
        base = ["enroll-dir", str(photo_dir), "--url", keyed.url, "--csv", str(out),
                "--no-progress"]
        assert main([*base, "--api-key", "not-a-key"]) == 2
        assert "invalid_api_key" in capsys.readouterr().err
        assert main([*base, "--api-key", reader]) == 2
        assert "insufficient_scope" in capsys.readouterr().err
        probes = tmp_path / "one"
        probes.mkdir()
        (probes / "wall.jpg").symlink_to(photo_dir / "blank_wall" / "wall.jpg")
        assert main(["identify-dir", str(probes), "--url", keyed.url, "--api-key", reader,
                     "--no-progress"]) == 0
        assert "wall.jpg" in capsys.readouterr().out


def test_photos_are_listed_through_folder_links_once(tmp_path: Path) -> None:
    from service.bulk_commands import list_photos, subject_of

    real = tmp_path / "elsewhere" / "ann"
    real.mkdir(parents=True)
    for name in ("b.JPG", "a.png", ".hidden.jpg", "notes.txt"):
        (real / name).write_bytes(b"x")
    root = tmp_path / "photos"
    root.mkdir()
    (root / "ann").symlink_to(real, target_is_directory=True)
    (real / "loop").symlink_to(root, target_is_directory=True)  # a cycle back to the top
    listed = [p.relative_to(root).as_posix() for p in list_photos(root)]
    assert listed == ["ann/a.png", "ann/b.JPG"]
    assert [subject_of(rel, None) for rel in listed] == ["ann", "ann"]


def test_the_output_files_are_owner_only(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """identify-dir's rows and enroll-dir's outcomes link photos to people: created 0600, and
    an existing file open to others is tightened before anything is written to it. A server
    that cannot be reached makes every photo an error row, enough to write both files."""
    def mode(path: Path) -> int:
        return path.stat().st_mode & 0o777

    photos = tmp_path / "photos"
    (photos / "ann").mkdir(parents=True)
    (photos / "ann" / "a.jpg").write_bytes(b"x")
    unreachable = ["--url", "http://127.0.0.1:1", "--retries", "0", "--no-progress"]
    who = tmp_path / "who.csv"
    assert main(["identify-dir", str(photos), "--out", str(who), *unreachable]) == 1
    assert mode(who) == 0o600 and "ann/a.jpg" in who.read_text()
    old = tmp_path / "old.jsonl"
    old.write_text("rows of an earlier run\n")
    old.chmod(0o644)
    assert main(["identify-dir", str(photos), "--out", str(old), *unreachable]) == 1
    assert mode(old) == 0o600 and "earlier" not in old.read_text()
    outcomes = tmp_path / "outcomes.csv"
    assert main(["enroll-dir", str(photos), "--csv", str(outcomes), *unreachable]) == 1
    assert mode(outcomes) == 0o600 and "ann/a.jpg" in outcomes.read_text()
    outcomes.chmod(0o640)  # a resumed run appends: the file is tightened first
    assert main(["enroll-dir", str(photos), "--csv", str(outcomes), *unreachable]) == 1
    assert mode(outcomes) == 0o600
    capsys.readouterr()
