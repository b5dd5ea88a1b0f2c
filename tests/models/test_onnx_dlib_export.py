"""Real weights through the ONNX path: dlib's own ResNet, exported to ONNX here and added with
``--preset dlib``, must give the converted model's embeddings on real photos.

The only real face-recognition weights on these machines are dlib's (CC0), so they are what
can show that the ONNX path (export, ``models add``, onnx2torch, the dlib preset's
normalisation, dlib's chips) computes what the network computes, and that a service serving
it recognises real people.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")

from models.backends.onnx_file import add_model
from models.imageio import decode_image
from models.pipeline import FacePipeline
from service.api.app import create_app
from service.config import Settings
from tests.service.conftest import wait_ready

pytestmark = pytest.mark.slow


class _Core(nn.Module):
    """dlib's network without its input normalisation (the dlib preset applies it)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        return n.fc(n.stages(n.stem(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.embedder import load_embedder

    out = tmp_path_factory.mktemp("dlib-onnx")
    path = out / "src.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Core(load_embedder(device="cpu")).eval(),
                          (torch.randn(2, 3, 150, 150),), str(path), input_names=["input"],
                          output_names=["embedding"],
                          dynamic_axes={"input": {0: "n"}, "embedding": {0: "n"}},
                          opset_version=13, dynamo=False)
    add_model(path, out / "models", "dlib", name="dlib-onnx", licence="CC0-1.0",
              source_url="dlib_face_recognition_resnet_model_v1.dat, exported in this test")
    return out / "models"


def test_dlibs_network_through_onnx_gives_its_embeddings_on_real_photos(
    shared_data: Path, model_dir: Path
) -> None:
    native = FacePipeline(device="cpu")
    onnx = FacePipeline(device="cpu", model="dlib-onnx", model_dir=model_dir)
    assert onnx.model.backend == "onnx2torch" and onnx.model_version != native.model_version
    for name in ("train/obama/obama.jpg", "test/obama1.jpg", "misc/two_people.jpg"):
        image = decode_image((shared_data / "people" / name).read_bytes())
        a, b = native.embed_image(image), onnx.embed_image(image)
        assert len(a) == len(b) >= 1
        for fa, fb in zip(a, b, strict=True):
            assert np.array_equal(fa.chip, fb.chip)  # the dlib preset cuts dlib's chips
            np.testing.assert_allclose(fb.embedding, fa.embedding, atol=1e-4)


def test_a_service_on_the_onnx_export_recognises_real_people(
    shared_data: Path, model_dir: Path, tmp_path: Path
) -> None:
    people = shared_data / "people"
    # dlib's threshold holds for these weights, but the service cannot know: it is set.
    settings = Settings(data_dir=tmp_path / "g", model="dlib-onnx", model_dir=model_dir,
                        device="cpu", threshold=0.915, identify_fpir=None)
    with TestClient(create_app(settings)) as client:
        ready = wait_ready(client, timeout=120)
        assert ready["model"].startswith("onnx-dlib-onnx-") and ready["embedding_size"] == 128
        for subject, photo in (("obama", "train/obama/obama.jpg"),
                               ("biden", "train/biden/biden.jpg")):
            r = client.post("/enroll", data={"subject_id": subject},
                            files={"image": ("p.jpg", (people / photo).read_bytes())})
            assert r.status_code == 201, r.text
        r = client.post("/identify", files={"image": ("q.jpg",
                                                      (people / "test/obama1.jpg").read_bytes())})
        assert r.status_code == 200, r.text
        assert r.json()["faces"][0]["match"]["subject_id"] == "obama"
