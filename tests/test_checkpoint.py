"""facegen/checkpoint.py on its own: atomic writes, errors for weights that do not fit, the seed import.

(Reading checkpoints through the entry points is tested in test_explore.py, test_models.py and
test_trainer.py.)
"""
from __future__ import annotations

import errno
import importlib.util
import os

import pytest
import torch
from torch import nn

import facegen
from facegen.checkpoint import CheckpointError, atomic_save, load_state, read_checkpoint
from tests.conftest import ROOT, SEED_CKPT


# -- atomic writes -------------------------------------------------------------------------------
def test_a_checkpoint_being_written_never_replaces_the_last_good_one_early(tmp_path, monkeypatch):
    """While last.pt is rewritten, the old one stays whole under its name (a reader, or a kill -9 then,
    finds the previous checkpoint, not half of the new one); afterwards only the new file is left."""
    path = tmp_path / "checkpoints" / "last.pt"
    atomic_save({"step": 1, "w": torch.zeros(1000)}, path)
    seen = []
    real_save = torch.save

    def save_and_look(obj, fh):
        real_save(obj, fh)
        if hasattr(fh, "flush"):
            fh.flush()
        seen.append(read_checkpoint(path)["step"])

    monkeypatch.setattr(torch, "save", save_and_look)
    atomic_save({"step": 2, "w": torch.ones(1000)}, path)
    assert seen == [1]
    assert read_checkpoint(path)["step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_a_failed_checkpoint_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"step": 1}, path)

    def half_then_full(obj, fh):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert read_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_a_checkpoint_gets_the_permissions_of_any_other_new_file(umask, mode, tmp_path):
    """mkstemp makes its temp file 0600 whatever the umask: renamed into place as it was, last.pt, best.pt and
    the feature net were unreadable to a teammate (evaluate, trainer.resume) while the rest of the run dir was not."""
    old = os.umask(umask)
    try:
        path = atomic_save({"step": 1}, tmp_path / "last.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


# -- weights that do not fit ---------------------------------------------------------------------
@pytest.mark.parametrize("change, says", [
    (lambda s: s.pop("1.bias"), r"missing keys \(1\): 1\.bias"),
    (lambda s: s.update({"2.weight": torch.zeros(3)}), r"unexpected keys \(1\): 2\.weight"),
    (lambda s: s.update({"0.weight": torch.zeros(5, 4)}), r"mismatched shapes \(1\): 0\.weight: checkpoint \(5, 4\) vs model \(4, 4\)"),
])
def test_weights_that_do_not_fit_are_a_checkpoint_error_naming_the_keys(change, says):
    """Not torch's RuntimeError traceback: the entry points turn a CheckpointError into one clear message."""
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    change(state)
    with pytest.raises(CheckpointError, match=r"(?s)x\.pt: the decoder weights do not fit the chosen model.*" + says):
        load_state(net, state, "decoder", "x.pt")


# -- the seed import -----------------------------------------------------------------------------
@pytest.mark.skipif(not SEED_CKPT.exists(), reason="seed checkpoint not present")
def test_imported_seed_checkpoint_holds_the_seeds_weights(tmp_path):
    """scripts/import_seed_checkpoint.py (README: train on from the seed's weights): every tensor of
    VAE_epoch_100.pth lands unchanged in the facegen checkpoint, which loads like the raw file."""
    from hydra.core.global_hydra import GlobalHydra

    spec = importlib.util.spec_from_file_location("import_seed_checkpoint", ROOT / "scripts" / "import_seed_checkpoint.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    GlobalHydra.instance().clear()
    out = script.import_seed_checkpoint(SEED_CKPT, tmp_path / "seed.pt")
    ckpt = read_checkpoint(out)
    assert ckpt["format_version"] == 1 and ckpt["step"] == 0 and ckpt["config"]["model"]["latent_dim"] == 20
    raw = read_checkpoint(SEED_CKPT)
    stored = {**ckpt["model"]["encoder"], **ckpt["model"]["decoder"]}
    assert set(stored) == set(raw)
    for key, value in raw.items():
        assert torch.equal(stored[key], value), key
    imported, original = facegen.load_model(out), facegen.load_model(SEED_CKPT)
    z = torch.randn(3, 20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(imported.decode(z), original.decode(z))
