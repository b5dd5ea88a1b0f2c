"""The trainer on tiny synthetic chips: reproducibility, logs, resume, Ctrl-C, export, CLI."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch

from models.model_file import load_exported, read_manifest
from models.training.checkpoint import load_checkpoint
from models.training.export import export_checkpoint
from models.training.small_net import SmallFaceNet
from models.training.trainer import (
    TrainConfig,
    Trainer,
    embed_chips_eval,
    freeze_all_but_last,
    lr_factor,
)
from tests.model_files import tamper
from tests.models.training.cli_helper import cli_main


def small_config(data: Path, out: Path, **overrides) -> TrainConfig:
    base = dict(
        data=str(data),
        out=str(out),
        arch="small",
        init="random",
        miner="batch-all",
        epochs=2,
        steps_per_epoch=3,
        p=3,
        k=2,
        warmup=2,
        val_fraction=0.34,
        chip_cache=str(out.parent / "chip-cache"),
        progress=False,
    )
    base.update(overrides)
    return TrainConfig(**base)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_same_seed_same_first_step_loss(synthetic_chips: Path, tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        cfg = small_config(synthetic_chips, tmp_path / name, seed=seed, epochs=1, steps_per_epoch=1)
        runs[name] = Trainer(cfg).run().first_loss
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_run_writes_logs_plot_checkpoints_and_identity_lists(
    synthetic_chips: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = Trainer(small_config(synthetic_chips, out)).run()
    assert not result.interrupted and result.global_step == 6
    for name in ("config.json", "identities.json", "steps.csv", "epochs.csv", "curves.png",
                 "best.pt", "last.pt", "summary.json", "excluded_identities.txt"):  # fmt: skip
        assert (out / name).is_file(), name
    steps = read_csv(out / "steps.csv")
    assert [int(r["step"]) for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all(0 <= float(r["active_fraction"]) <= 1 for r in steps)
    assert all(0 <= float(r["batch_active_fraction"]) <= 1 for r in steps)
    epochs = read_csv(out / "epochs.csv")
    assert [int(r["epoch"]) for r in epochs] == [0, 1, 2]  # epoch 0 = before training
    assert all(0.0 <= float(r["val_accuracy"]) <= 1.0 for r in epochs)
    split = json.loads((out / "identities.json").read_text())
    assert len(split["validation"]) == 2 and len(split["train"]) == 4
    assert not set(split["train"]) & set(split["validation"])
    excluded = [
        line for line in (out / "excluded_identities.txt").read_text().splitlines()
        if not line.startswith("#")
    ]  # fmt: skip
    assert sorted(excluded) == sorted(split["train"] + split["validation"])
    lrs = [float(r["lr"]) for r in steps]
    assert lrs[0] < lrs[1]  # warm-up
    assert lrs[-1] < max(lrs)  # cosine decay
    best = load_checkpoint(out / "best.pt")
    assert best["best"]["epoch"] in (0, 1, 2)


def test_ctrl_c_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(
    synthetic_chips: Path, tmp_path: Path
) -> None:
    full = Trainer(small_config(synthetic_chips, tmp_path / "full")).run()
    assert not full.interrupted

    def interrupt(step: int, stats: dict) -> None:
        if step == 4:  # in the middle of epoch 2
            raise KeyboardInterrupt

    cut = Trainer(small_config(synthetic_chips, tmp_path / "cut"), on_step=interrupt).run()
    assert cut.interrupted and cut.global_step == 4
    saved = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (2, 1, 4)

    resumed = Trainer(small_config(synthetic_chips, tmp_path / "cut"), resume=True).run()
    assert not resumed.interrupted and resumed.global_step == 6

    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]["state_dict"]
    b = load_checkpoint(tmp_path / "cut" / "last.pt")["model"]["state_dict"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = read_csv(tmp_path / "cut" / "steps.csv")
    assert [int(r["step"]) for r in steps] == [1, 2, 3, 4, 5, 6]
    full_steps = read_csv(tmp_path / "full" / "steps.csv")
    assert [r["loss"] for r in steps] == [r["loss"] for r in full_steps]
    assert [int(r["epoch"]) for r in read_csv(tmp_path / "cut" / "epochs.csv")] == [0, 1, 2]


def test_real_sigint_saves_a_resumable_checkpoint_and_restores_the_handler(
    synthetic_chips: Path, tmp_path: Path
) -> None:
    """Ctrl-C as the terminal sends it (a real SIGINT), not a raised KeyboardInterrupt."""
    previous = signal.getsignal(signal.SIGINT)

    def ctrl_c(step: int, stats: dict) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "sig"
    result = Trainer(small_config(synthetic_chips, out), on_step=ctrl_c).run()
    assert result.interrupted and result.global_step == 2
    assert load_checkpoint(out / "last.pt")["global_step"] == 2
    assert signal.getsignal(signal.SIGINT) is previous
    resumed = Trainer(small_config(synthetic_chips, out), resume=True).run()
    assert not resumed.interrupted and resumed.global_step == 6


def test_resume_can_lengthen_a_finished_run(synthetic_chips: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    Trainer(small_config(synthetic_chips, out, epochs=1)).run()
    longer = Trainer(small_config(synthetic_chips, out, epochs=2), resume=True).run()
    assert longer.global_step == 6 and [h["epoch"] for h in longer.history] == [0, 1, 2]


@pytest.mark.parametrize("loss", ["cosface", "arcface"])
def test_margin_heads_train_and_checkpoint_their_weights(
    synthetic_chips: Path, tmp_path: Path, loss: str
) -> None:
    out = tmp_path / loss
    result = Trainer(small_config(synthetic_chips, out, loss=loss, epochs=1)).run()
    assert result.first_loss is not None and result.first_loss > 0
    head = load_checkpoint(out / "last.pt")["head"]
    assert head["weight"].shape == (4, 128)  # one row per training identity


def test_freeze_keeps_early_blocks_fixed(synthetic_chips: Path, tmp_path: Path) -> None:
    net = SmallFaceNet()
    frozen = freeze_all_but_last(net, 1)
    assert frozen == net.blocks()[:-2]  # the projection always trains and does not count
    assert all(p.requires_grad for p in net.stages[-1].parameters())
    assert not any(p.requires_grad for p in net.stem.parameters())
    assert all(p.requires_grad for p in net.fc.parameters())
    out = tmp_path / "frozen"
    Trainer(small_config(synthetic_chips, out, freeze=1, epochs=1)).run()
    before = load_checkpoint(out / "best.pt")  # may be epoch 0 or 1; compare with a fresh init
    torch.manual_seed(0)
    fresh = SmallFaceNet().state_dict()
    after = load_checkpoint(out / "last.pt")["model"]["state_dict"]
    # Stem weights and batch-norm statistics untouched; the last stage moved.
    for name in ("stem.0.weight", "stem.1.running_mean", "stages.0.0.0.weight"):
        assert torch.equal(after[name], fresh[name]), name
    assert not torch.equal(after["fc.weight"], fresh["fc.weight"])
    assert before["config"]["freeze"] == 1


def test_default_margin_and_learning_rate_follow_the_starting_point() -> None:
    def cfg(**kw) -> TrainConfig:
        return TrainConfig(data="d", out="o", **kw)

    assert cfg(init="random", arch="small").resolved_margin() == 0.2  # FaceNet
    assert cfg(init="dlib").resolved_margin() == 0.05  # dlib's tightly packed embeddings
    assert cfg(init="dlib", distance="cosine").resolved_margin() == 0.025  # same on cos scale
    assert cfg(init="dlib", margin=0.3).resolved_margin() == 0.3
    assert cfg(loss="arcface").resolved_margin() == 0.5
    assert cfg(loss="cosface").resolved_margin() == 0.35
    assert cfg(init="dlib").resolved_lr() == pytest.approx(3e-6)
    assert cfg(init="dlib", optimizer="sgd").resolved_lr() == pytest.approx(3e-5)
    assert cfg(init="random", arch="small").resolved_lr() == pytest.approx(1e-3)


def test_lr_schedule() -> None:
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(100, 10, 100) == pytest.approx(0.01)


def test_bad_configs_are_refused(synthetic_chips: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--init dlib needs --arch dlib-resnet"):
        Trainer(small_config(synthetic_chips, tmp_path / "x", init="dlib"))
    with pytest.raises(ValueError, match="--loss"):
        Trainer(small_config(synthetic_chips, tmp_path / "x", loss="softmax"))
    with pytest.raises(ValueError, match="P=9"):
        Trainer(small_config(synthetic_chips, tmp_path / "x", p=9))


def test_export_round_trip(synthetic_chips: Path, tmp_path: Path) -> None:
    out = tmp_path / "my run"
    trainer = Trainer(small_config(synthetic_chips, out))
    trainer.run()
    path, manifest = export_checkpoint(out / "last.pt", tmp_path / "model.safetensors")
    assert re.fullmatch(r"ft-my-run-\d{8}-[0-9a-f]{8}", manifest["version"])
    assert manifest["architecture"] == "small" and manifest["embedding_size"] == 128
    assert manifest["data"]["train_identities"] == 4
    assert manifest["data"]["identities_seen"] == sorted(
        trainer.train_data.names + trainer.val_data.names
    )
    assert manifest["validation"]["epoch"] == 2
    assert 0 <= manifest["validation"]["accuracy"] <= 1
    assert json.loads((tmp_path / "model.safetensors.json").read_text()) == manifest
    assert read_manifest(path) == manifest

    model, loaded = load_exported(path, "cpu")
    assert loaded == manifest and not model.training
    chips = trainer.val_data.chips[:5]
    expected = embed_chips_eval(trainer.model, chips, torch.device("cpu"))
    got = embed_chips_eval(model, chips, torch.device("cpu"))
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(got.norm(dim=1), torch.ones(5), atol=1e-5)

    # Same checkpoint, same version; other weights, other version.
    assert export_checkpoint(out / "last.pt", tmp_path / "again.safetensors")[1]["version"] == (
        manifest["version"]
    )
    other = export_checkpoint(out / "best.pt", tmp_path / "b.safetensors", name="x")[1]
    assert other["version"].startswith("ft-x-")


def test_export_refuses_tampered_weights(synthetic_chips: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    Trainer(small_config(synthetic_chips, out, epochs=1)).run()
    path, _ = export_checkpoint(out, tmp_path / "m.safetensors")
    tamper(path)  # other weights under the same manifest
    with pytest.raises(ValueError, match="do not match"):
        load_exported(path)


def test_cli_train_then_export(synthetic_chips: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli-run"
    code = cli_main([
        "train", "--data", str(synthetic_chips), "--out", str(out), "--arch", "small",
        "--init", "random", "--miner", "semi-hard", "--epochs", "1", "--steps-per-epoch", "2",
        "--p", "3", "--k", "2", "--val-fraction", "0.34", "--quiet",
        "--chip-cache", str(tmp_path / "cache"),
    ])  # fmt: skip
    assert code == 0
    assert "export with: faceserve export" in capsys.readouterr().out
    assert cli_main(["export", str(out), "--out", str(tmp_path / "m.safetensors")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["version"].startswith("ft-cli-run-")
    assert load_exported(tmp_path / "m.safetensors")[1]["version"] == printed["version"]
    # Resuming a finished run without --epochs keeps its length (does not run to 10 epochs).
    assert cli_main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    assert load_checkpoint(out / "last.pt")["global_step"] == 2
    with pytest.raises(SystemExit, match="--data DIR is required"):
        cli_main(["train", "--out", str(tmp_path / "x")])


def test_dlib_init_builds_the_unfolded_pretrained_network() -> None:
    from models.embedder import Affine, load_embedder
    from models.training.trainer import build_model

    model = build_model("dlib-resnet", "dlib", torch.device("cpu"))
    affines = [m for m in model.modules() if isinstance(m, Affine)]
    assert affines and not any(a.folded for a in affines)
    assert any((a.weight != 1).any() for a in affines)  # dlib's values, not identity
    x = torch.rand(2, 3, 150, 150) * 255
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), load_embedder(device="cpu")(x), atol=1e-4)


def test_training_commands_are_registered_with_the_cli() -> None:
    from service.cli import SUBCOMMANDS

    assert "models.training.commands" in SUBCOMMANDS, (
        "add 'models.training.commands' to SUBCOMMANDS in service/cli.py"
    )
