"""``faceserve convert`` and ``faceserve embed`` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from service.cli import build_parser, main


def test_help_lists_commands(capsys):
    parser = build_parser()
    text = parser.format_help()
    for name in ("convert", "embed"):
        assert name in text


def test_convert_writes_cache(tmp_path, capsys):
    assert main(["convert", "--cache-dir", str(tmp_path)]) == 0
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert [f.split("-")[0] for f in files] == ["detector", "embedder", "landmarks"]
    assert "cache:" in capsys.readouterr().out
    # A second run finds the cache and writes nothing new.
    before = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert main(["convert", "--cache-dir", str(tmp_path)]) == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_embed_prints_faces_as_json(astronaut, tmp_path: Path, capsys):
    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(astronaut).save(photo, quality=95)
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    status = main(["embed", "--device", "cpu", str(photo), str(bad)])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert status == 1  # one input failed, and the exit code says so
    ok, err = lines
    assert ok["model"] == "dlib-resnet-v1"
    assert len(ok["faces"]) == 1
    face = ok["faces"][0]
    box = face["bbox"]  # the API's names and shapes
    left, top, right, bottom = box["left"], box["top"], box["right"], box["bottom"]
    assert face["box"] == [left, top, right, bottom]  # the deprecated list, for one release
    assert face["confidence"] == face["detection_confidence"] > 0
    assert 150 < left < 190 and 50 < top < 90 and right > left and bottom > top
    assert len(face["landmarks"]) == 5
    assert abs(np.linalg.norm(face["embedding"]) - 1) < 1e-5
    assert "error" in err and err["image"].endswith("notes.txt")


def test_embed_face_crop_takes_each_image_as_one_face(astronaut, tmp_path: Path, capsys):
    from models.evaluation.crops import crop_face
    from models.pipeline import FacePipeline

    [full] = FacePipeline(device="cpu").embed_image(astronaut)
    crop = tmp_path / "crop.jpg"
    crop.write_bytes(crop_face(astronaut, full.box, 100))  # as a phone app sends the face
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 100, 3), np.uint8)).save(noise)
    status = main(["embed", "--device", "cpu", "--face-crop", str(crop), str(noise)])
    ok, err = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert status == 1
    [face] = ok["faces"]
    assert float(np.dot(face["embedding"], full.embedding)) > 0.97
    assert "not a face" in err["error"]
