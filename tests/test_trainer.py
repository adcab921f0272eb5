"""The training loop: gradient routing, resume bit for bit (kill -9, SIGINT), NaN stop, time budget."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from facegen.checkpoint import read_checkpoint
from facegen.losses import VAEGANLoss
from facegen.trainer import Trainer, TrainingError, train
from tests.conftest import ROOT, compose_config, tiny_overrides


def _grads(params):
    return [None if p.grad is None else p.grad.detach().clone() for p in params]


def test_each_network_is_stepped_with_its_own_objective_only(tiny_cfg):
    """Trainer grads == d(own objective)/d(own params); the summed-backward bug would differ."""
    cfg = tiny_cfg("loss.equilibrium=null", "loss.kl_weight=0.7", "loss.gamma=0.3", "loss.pixel_weight=0.5")
    tr = Trainer(cfg)
    x = tr._batch(tr.data.train_batches(0)[0])
    captured = {}
    tr._clip_and_step = lambda names: captured.update({n: _grads(tr.nets[n].parameters()) for n in names})
    rng = torch.get_rng_state()
    tr.train_step(x)
    assert set(captured) == {"encoder", "decoder", "discriminator"}

    # the same forward pass again (same RNG, unchanged weights), differentiated by hand
    torch.set_rng_state(rng)
    m, loss = tr.model, tr.loss
    b = x.shape[0]
    mu, logvar = m.encoder(x)
    z = m.reparameterize(mu, logvar)
    gen = m.decoder(torch.cat([z, torch.randn_like(z)]))
    logits, feats = m.discriminator(torch.cat([x, gen]), tr._feature_layer)
    lr_, lrec, lp = logits.split(b)
    losses, terms = loss.per_network_losses(x=x, recon=gen[:b], mu=mu, logvar=logvar, logits_real=lr_,
                                            logits_recon=lrec, logits_prior=lp, feats_real=feats[:b],
                                            feats_recon=feats[b:2 * b])
    p = {n: list(tr.nets[n].parameters()) for n in tr.nets}

    def grad(obj, net):
        return torch.autograd.grad(obj, p[net], retain_graph=True, allow_unused=True)

    def same(a, b_):
        return all((u is None and (v is None or not v.any())) or (v is not None and torch.allclose(u, v, atol=1e-6, rtol=1e-5))
                   for u, v in zip(a, b_))

    # the pixel term (loss.pixel_weight) goes to the encoder and the decoder, never the discriminator
    enc_obj = 0.7 * terms["kl"] + terms["feature_reconstruction"] + 0.5 * terms["pixel"]
    dec_obj = 0.3 * terms["feature_reconstruction"] + terms["gan_generator"] + 0.5 * terms["pixel"]
    assert same(captured["encoder"], grad(enc_obj, "encoder"))
    assert same(captured["decoder"], grad(dec_obj, "decoder"))
    assert same(captured["discriminator"], grad(terms["gan_discriminator"], "discriminator"))
    # the GAN term does reach the encoder mathematically; the trainer must not pass it on
    enc_with_gan = grad(enc_obj + terms["gan_generator"], "encoder")
    assert not same(captured["encoder"], enc_with_gan)
    # the decoder gets none of the KL term (and not the unit-weight feature term a summed backward gives)
    assert all(g is None for g in grad(terms["kl"], "decoder"))
    assert not same(captured["decoder"], grad(terms["feature_reconstruction"] + terms["gan_generator"], "decoder"))
    # and the discriminator none of the reconstruction term
    assert not same(captured["discriminator"],
                    grad(terms["gan_discriminator"] + terms["feature_reconstruction"], "discriminator"))


def test_vae_loss_builds_no_discriminator_and_learns(tiny_cfg):
    cfg = tiny_cfg("model=seed_vae", "loss=vae", "trainer.epochs=6", "model.latent_dim=8", "optimizer.lr=1e-3")
    value = train(cfg)
    run = Path(cfg.paths.output_dir)
    ckpt = read_checkpoint(run / "checkpoints" / "last.pt")
    assert "discriminator" not in ckpt["model"] and "discriminator" not in ckpt["optimizers"]
    lines = [__import__("json").loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    rec = [r["loss/reconstruction"] for r in lines if "loss/reconstruction" in r]
    assert sum(rec[-3:]) < 0.95 * sum(rec[:3])  # the seed's lr 1e-3: the ELBO falls within 30 steps
    assert value == pytest.approx(lines[-1]["val/loss"])


def test_run_dir_holds_checkpoints_grids_metrics_and_provenance(tiny_cfg):
    cfg = tiny_cfg("trainer.epochs=2", "trainer.keep_last=1", "trainer.ema_decay=0.9")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_002.pt", "last.pt"]
    assert (run / "samples" / "epoch_001.png").is_file() and (run / "reconstructions" / "epoch_002.png").is_file()
    assert (run / "provenance.json").is_file() and "torch==" in (run / "pip_freeze.txt").read_text()
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert set(ckpt) >= {"format_version", "config", "model", "optimizers", "schedulers", "step", "epoch",
                         "batch_in_epoch", "rng", "metrics", "provenance"}
    assert set(ckpt["model"]) == {"encoder", "decoder", "discriminator", "decoder_ema"}
    assert set(ckpt["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"]["decoder_ema"])
    assert ckpt["config"]["model"]["latent_dim"] == 8 and ckpt["finished"] is True
    assert ckpt["provenance"]["torch_version"] == torch.__version__


def _final_weights(run: Path) -> dict:
    return read_checkpoint(run / "checkpoints" / "last.pt")["model"]


def _assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for net in a:
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs"


def test_two_runs_with_the_same_seed_are_identical(tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = compose_config("train", tiny_overrides("trainer.epochs=2", "data.hflip=true"), output_dir=tmp_path / name)
        train(cfg)
        runs.append(_final_weights(tmp_path / name))
    _assert_identical(*runs)
    cfg = compose_config("train", tiny_overrides("trainer.epochs=2", "data.hflip=true", "seed=7"),
                         output_dir=tmp_path / "c")
    train(cfg)
    c = _final_weights(tmp_path / "c")
    assert not torch.equal(c["encoder"]["fc_mu.weight"], runs[0]["encoder"]["fc_mu.weight"])


CLI_TINY = tiny_overrides("trainer.epochs=8", "trainer.checkpoint_every=2", "data.hflip=true",
                          "trainer.ema_decay=0.9", "trainer.log_every=3")


def _cli(run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "facegen.train", *CLI_TINY, f"hydra.run.dir={run}",
            f"paths.cache_dir={run.parent / 'cache'}", *extra]


def _interrupt_after_first_checkpoint(cmd: list[str], run: Path, sig: int) -> int:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    last = run / "checkpoints" / "last.pt"
    while not last.exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, sig)
    proc.wait(60)
    return proc.returncode


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, sig):
    full = tmp_path / "full"
    subprocess.run(_cli(full), cwd=ROOT, check=True, capture_output=True)
    cut = tmp_path / "cut"
    code = _interrupt_after_first_checkpoint(_cli(cut), cut, sig)
    ckpt = read_checkpoint(cut / "checkpoints" / "last.pt")
    assert not ckpt["finished"], "the run finished before it could be interrupted; make it longer"
    if sig == signal.SIGINT:  # Ctrl-C writes a checkpoint at the current step and exits cleanly
        assert code == 128 + signal.SIGINT
    else:
        assert code == -signal.SIGKILL
    resumed = subprocess.run(_cli(cut, "trainer.resume=auto"), cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {cut / 'checkpoints' / 'last.pt'}" in resumed.stdout
    _assert_identical(_final_weights(full), _final_weights(cut))
    # and the same records: none twice (kill -9 after a record, before a checkpoint), none cut short (the
    # loss sums since the last record travel in the checkpoint)
    assert _records(cut) == _records(full)


def _records(run: Path) -> list[dict]:
    """metrics.jsonl without what depends on the clock."""
    import json

    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(s).items() if k not in ("time", "perf/img_per_s")} for s in lines]


def _lrs(run: Path) -> list[float]:
    return [r["lr/encoder"] for r in _records(run) if "lr/encoder" in r]


def test_best_pt_is_the_best_record_and_every_checkpoint_knows_the_best_so_far(tiny_cfg):
    cfg = tiny_cfg("trainer.epochs=4", "trainer.best_metric=val/loss", "trainer.keep_last=-1")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    val = [r for r in _records(run) if "val/loss" in r]
    best = min(val, key=lambda r: r["val/loss"])
    assert read_checkpoint(run / "checkpoints" / "best.pt")["step"] == best["step"]
    for r in val:   # written before best was updated, epoch_002.pt used to carry epoch 1's best
        ckpt = read_checkpoint(run / "checkpoints" / f"epoch_{int(r['epoch']):03d}.pt")
        assert ckpt["metrics"]["best/val/loss"] == min(v["val/loss"] for v in val if v["step"] <= r["step"])


def test_a_budget_that_ends_mid_epoch_still_keeps_best_pt(tiny_cfg):
    cfg = tiny_cfg("trainer.epochs=5", "trainer.max_steps=3", "trainer.best_metric=val/loss")
    train(cfg)
    assert read_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "best.pt")["step"] == 3


def test_keep_last_deletes_the_oldest_epochs_past_999(tmp_path):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    for e in (997, 998, 999, 1000):
        (tmp_path / f"epoch_{e:03d}.pt").write_bytes(b"")
    stub = SimpleNamespace(cfg=OmegaConf.create({"trainer": {"keep_last": 3}}), is_main=True, ckpt_dir=tmp_path)
    Trainer._prune_epoch_checkpoints(stub)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_1000.pt", "epoch_998.pt", "epoch_999.pt"]


def test_a_resumed_run_takes_a_new_learning_rate_and_a_longer_cosine_schedule(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg("trainer.epochs=1", "trainer.log_every=5")
    train(cfg)
    train(tiny_cfg("trainer.epochs=2", "trainer.log_every=5", "optimizer.lr=1e-4", "trainer.resume=auto"))
    assert "resuming" in capsys.readouterr().out and _lrs(Path(cfg.paths.output_dir)) == [5e-4, 1e-4]
    # cosine over 2 epochs, then raised to 4: the rates of a 4-epoch schedule from epoch 3 on
    whole = compose_config("train", tiny_overrides("trainer.epochs=4", "trainer.log_every=5",
                                                   "optimizer.scheduler=cosine"), output_dir=tmp_path / "whole")
    train(whole)
    grown = compose_config("train", tiny_overrides("trainer.epochs=2", "trainer.log_every=5",
                                                   "optimizer.scheduler=cosine"), output_dir=tmp_path / "grown")
    train(grown)
    grown.trainer.epochs, grown.trainer.resume = 4, "auto"
    train(grown)
    assert _lrs(tmp_path / "grown")[2:] == pytest.approx(_lrs(tmp_path / "whole")[2:], rel=1e-6)
    assert _lrs(tmp_path / "whole")[2] > 0


@pytest.mark.parametrize("change, says", [
    ("optimizer=rmsprop", r"optimizer\._target_=torch\.optim\.RMSprop \(the checkpoint's: torch\.optim\.Adam\)"),
    ("data.batch_size=8", r"data\.batch_size=8 \(the checkpoint's: 16, stopped 3 batches into an epoch\)"),
])
def test_a_resume_that_cannot_continue_the_saved_state_says_which_setting(tiny_cfg, change, says):
    from facegen.checkpoint import CheckpointError

    train(tiny_cfg("trainer.max_steps=3"))
    with pytest.raises(CheckpointError, match=says):
        Trainer(tiny_cfg("trainer.max_steps=6", change, "trainer.resume=auto"))


def test_a_fresh_start_sets_an_earlier_attempts_records_aside(tiny_cfg, capsys):
    cfg = tiny_cfg("trainer.max_steps=2")
    run = Path(cfg.paths.output_dir)
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss/kl": 9.0}\n')
    train(cfg)
    assert (run / "metrics.jsonl.1").read_text() == '{"step": 1, "loss/kl": 9.0}\n'
    assert all(r.get("loss/kl") != 9.0 for r in _records(run))
    assert "kept it as metrics.jsonl.1" in capsys.readouterr().out


def test_resume_auto_on_a_finished_run_changes_nothing(tiny_cfg):
    cfg = tiny_cfg()
    train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.pt"
    before = last.read_bytes()
    cfg.trainer.resume = "auto"
    train(cfg)
    assert last.read_bytes() == before


@pytest.mark.parametrize("nan_at, overrides, kept", [
    (5, ("trainer.epochs=3", "trainer.checkpoint_every=3"), 3),
    # the NaN falls on a periodic checkpoint's step, with no record in between: that checkpoint is
    # refused (the error names the step), so last.pt stays the good one of step 2
    (4, ("trainer.checkpoint_every=2",), 2),
])
def test_nan_loss_stops_with_step_and_term_and_keeps_last_good_checkpoint(tiny_cfg, monkeypatch, nan_at, overrides,
                                                                          kept):
    import facegen.losses as losses

    calls, real_kl = {"n": 0}, losses.kl_divergence

    def kl_nan_at_one_step(mu, logvar):
        calls["n"] += 1
        return real_kl(mu, logvar) * (float("nan") if calls["n"] == nan_at else 1.0)

    monkeypatch.setattr(losses, "kl_divergence", kl_nan_at_one_step)
    cfg = tiny_cfg("trainer.log_every=100", *overrides)
    with pytest.raises(TrainingError, match=rf"loss term 'kl' became non-finite .* at step {nan_at}"):
        train(cfg)
    ckpt = read_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.pt")
    assert ckpt["step"] == kept
    assert all(torch.isfinite(v).all() for v in ckpt["model"]["encoder"].values() if v.is_floating_point())


def test_max_time_stops_close_to_the_budget_with_a_valid_checkpoint(tiny_cfg):
    cfg = tiny_cfg("trainer.epochs=1000", "trainer.max_time=4", "data.num_images=4000")  # no epoch ends
    t0 = time.monotonic()
    value = train(cfg)
    assert time.monotonic() - t0 < 4 + 8  # setup, warm-up and the final checkpoint included
    run = Path(cfg.paths.output_dir)
    ckpt = read_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["finished"] and 4 <= ckpt["elapsed"] < 6 and ckpt["epoch"] == 0
    # stopped mid-epoch, the run still ends like an epoch: validation losses (returned), grids
    step = ckpt["step"]
    assert value == pytest.approx(ckpt["metrics"]["val/loss"]) and value > 0
    assert (run / "samples" / f"step_{step:06d}.png").is_file()
    assert (run / "reconstructions" / f"step_{step:06d}.png").is_file()


def test_budget_lr_schedule_decays_linearly_over_the_steps_and_resumes_on_it(tiny_cfg):
    """optimizer.scheduler=budget: lr -> lr * final_lr_fraction linearly over trainer.max_steps, set
    every step (logged), and a resumed run picks the schedule up where it stopped; a network's own
    final_lr_fraction_<network> (here 1.0: the discriminator's rate does not decay) overrides it."""
    import json

    over = ["optimizer.scheduler=budget", "optimizer.final_lr_fraction=0.2", "optimizer.lr=1e-3",
            "optimizer.final_lr_fraction_discriminator=1.0",
            "trainer.log_every=1", "data.num_images=600", "trainer.epochs=100"]
    cfg = tiny_cfg(*over, "trainer.max_steps=4")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr/decoder"] for r in logged if "lr/decoder" in r}
    # each logged lr is the one its step used: step s starts with (s - 1) of the 4 steps used
    assert [lrs[s] for s in (1, 2, 3, 4)] == pytest.approx([1e-3 * (1 - 0.8 * (s - 1) / 4) for s in (1, 2, 3, 4)])
    # resumed with twice the budget: the schedule stretches to it from the step reached
    cfg2 = tiny_cfg(*over, "trainer.max_steps=8", "trainer.resume=auto")
    tr = Trainer(cfg2)
    assert tr.step == 4 and tr.budget_used() == pytest.approx(0.5)
    tr.fit()
    tr.close()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr/decoder"] for r in logged if "lr/decoder" in r}
    assert [lrs[s] for s in (5, 8)] == pytest.approx([1e-3 * (1 - 0.8 * 4 / 8), 1e-3 * (1 - 0.8 * 7 / 8)])
    # the budget is used up: the optimizers end at 0.2 * lr, the discriminator's where it started
    assert {n: o.param_groups[0]["lr"] for n, o in tr.optimizers.items()} == pytest.approx(
        {"encoder": 2e-4, "decoder": 2e-4, "discriminator": 1e-3})
    assert [r["lr/discriminator"] for r in logged if "lr/discriminator" in r] == pytest.approx([1e-3] * 8)
    # without the budget schedule a per-network final share would do nothing: an error says so
    bad = tiny_cfg("optimizer.final_lr_fraction_discriminator=1.0", "trainer.max_steps=1")
    with pytest.raises(ValueError, match="final_lr_fraction_<network>.*scheduler=budget"):
        Trainer(bad)


def test_budget_used_is_the_larger_share_of_time_and_steps(tiny_cfg):
    tr = Trainer(tiny_cfg("trainer.max_time=60", "trainer.max_steps=100", "optimizer.scheduler=budget"))
    assert tr.budget_used() == 0.0
    tr.elapsed, tr.step = 30.0, 10
    assert tr.budget_used() == pytest.approx(0.5)
    tr.step = 80
    assert tr.budget_used() == pytest.approx(0.8)
    tr.elapsed = 90.0
    assert tr.budget_used() == 1.0
    tr.close()
    with pytest.raises(ValueError, match="scheduler must be"):
        Trainer(tiny_cfg("optimizer.scheduler=linear"))


def test_equilibrium_gate_rules():
    from facegen.losses import equilibrium_gate

    assert equilibrium_gate(0.7, 0.7, 0.68, 0.35) == (True, True)
    assert equilibrium_gate(0.1, 0.7, 0.68, 0.35) == (True, False)   # D too strong: rest D
    assert equilibrium_gate(1.5, 0.7, 0.68, 0.35) == (False, True)   # D too weak: rest decoder's GAN
    assert equilibrium_gate(0.1, 1.5, 0.68, 0.35) == (True, True)    # never both
    assert VAEGANLoss(pixel_weight=1.0, pixel_warmup_steps=10).pixel_factor(5) == pytest.approx(0.5)


def test_vae_warmup_trains_a_plain_vae_first_then_the_gan(tiny_cfg):
    import json

    cfg = tiny_cfg("loss.vae_warmup_steps=3", "trainer.max_steps=5", "trainer.log_every=1", "data.num_images=600")
    tr = Trainer(cfg)
    dis_before = {k: v.clone() for k, v in tr.model.discriminator.state_dict().items()}
    batches = tr.data.train_batches(0)
    for i in range(3):                                   # warm-up: the VAE objective, D untouched
        values = tr.train_step(tr._batch(batches[i]))
        tr.step += 1
        assert set(values) == {"loss/reconstruction", "loss/kl", "loss/total"}
    assert all(torch.equal(v, dis_before[k]) for k, v in tr.model.discriminator.state_dict().items())
    values = tr.train_step(tr._batch(batches[3]))        # then the VAE-GAN, D trains
    assert "loss/gan_discriminator" in values
    assert any(not torch.equal(v, dis_before[k]) for k, v in tr.model.discriminator.state_dict().items())
    tr.close()
    # through fit(): the log window is closed at the switch, so each record holds one phase's terms
    train(tiny_cfg("loss.vae_warmup_steps=3", "trainer.max_steps=5", "trainer.log_every=2", "data.num_images=600"))
    records = [json.loads(s) for s in (Path(cfg.paths.output_dir) / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], "loss/reconstruction" in r, "loss/gan_discriminator" in r) for r in records if "step" in r
              and any(k.startswith("loss/") for k in r)]
    assert losses[:3] == [(2, True, False), (3, True, False), (4, False, True)]


def test_instance_noise_reaches_only_the_discriminator_and_fades(tiny_cfg):
    assert VAEGANLoss(instance_noise=0.2, instance_noise_steps=10).noise_std(5) == pytest.approx(0.1)
    assert VAEGANLoss(instance_noise=0.2, instance_noise_steps=10).noise_std(20) == 0.0
    assert VAEGANLoss(instance_noise=0.2).noise_std(10**6) == pytest.approx(0.2)

    def first_step(*extra):
        tr = Trainer(tiny_cfg("trainer.channels_last=false", *extra))
        values = {k: float(v.detach()) for k, v in tr.train_step(tr._batch(tr.data.train_batches(0)[0])).items()}
        tr.close()
        return values

    plain, noisy, off = first_step(), first_step("loss.instance_noise=0.5"), first_step("loss.instance_noise=0.0")
    assert noisy["loss/kl"] == plain["loss/kl"]                       # the encoder's forward is untouched
    assert noisy["loss/gan_discriminator"] != pytest.approx(plain["loss/gan_discriminator"], rel=1e-3)
    assert off == plain


def test_r1_penalty_hand_case_and_only_the_discriminator_feels_it(tiny_cfg):
    from facegen.losses import r1_penalty

    x = torch.randn(4, 1, 3, 3, requires_grad=True)
    w = torch.randn(1, 1, 3, 3)
    logits = (x * w).flatten(1).sum(1) + (x ** 2).flatten(1).sum(1)   # dD/dx = w + 2x per image
    expected = (w + 2 * x.detach()).pow(2).flatten(1).sum(1).mean()
    penalty = r1_penalty(logits, x)
    assert float(penalty.detach()) == pytest.approx(float(expected), rel=1e-6)
    penalty.backward()                                                 # differentiable: create_graph
    assert torch.allclose(x.grad, w + 2 * x.detach(), rtol=1e-5)  # d/dx_i of mean_i ‖w + 2x_i‖²

    def first_step(*extra):
        tr = Trainer(tiny_cfg("trainer.channels_last=false", "loss.equilibrium=null", *extra))
        values = tr.train_step(tr._batch(tr.data.train_batches(0)[0]))
        state = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in tr.nets.items()}
        tr.close()
        return {k: float(v.detach()) for k, v in values.items()}, state

    (plain, s0), (r1, s1) = first_step(), first_step("loss.r1_weight=10")
    assert r1["loss/r1"] > 0 and "loss/r1" not in plain
    assert r1["loss/kl"] == plain["loss/kl"] and r1["loss/gan_discriminator"] == pytest.approx(
        plain["loss/gan_discriminator"], rel=1e-6)                    # the same forward pass
    assert all(torch.equal(s0[n][k], s1[n][k]) for n in ("encoder", "decoder") for k in s0[n])
    assert any(not torch.equal(s0["discriminator"][k], s1["discriminator"][k]) for k in s0["discriminator"])


def test_min_dis_every_trains_a_resting_discriminator_on_schedule(tiny_cfg):
    with pytest.raises(ValueError, match="min_dis_every"):
        VAEGANLoss(min_dis_every=-1)
    # equilibrium 100, margin 0: every cost is below the gate's threshold, so the gate rests D always
    tr = Trainer(tiny_cfg("trainer.channels_last=false", "loss.equilibrium=100", "loss.margin=0",
                          "loss.min_dis_every=2", "data.num_images=600"))
    batches = tr.data.train_batches(0)
    moved, gates = [], []
    for i in range(5):
        before = [p.detach().clone() for p in tr.model.discriminator.parameters()]
        values = tr.train_step(tr._batch(batches[i]))
        tr.step += 1
        moved.append(any(not torch.equal(a, p) for a, p in zip(before, tr.model.discriminator.parameters())))
        gates.append(float(values["gate/discriminator"]))
    tr.close()
    assert moved == [True, False, True, False, True] and gates == [1.0, 0.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize("separate", [False, True])
def test_separate_batches_normalise_prior_draws_by_their_own_statistics(tiny_cfg, separate):
    """loss.separate_batches: the decoder's norms see Enc(x) draws and prior draws as two batches of
    b (each normalised by its own statistics), not one batch of 2b; the step's losses stay finite."""
    tr = Trainer(tiny_cfg("trainer.channels_last=false", f"loss.separate_batches={str(separate).lower()}"))
    norm = next(m for m in tr.model.decoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    seen = []
    handle = norm.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]) if m.training else None)
    x = tr._batch(tr.data.train_batches(0)[0])
    values = tr.train_step(x)
    handle.remove()
    tr.close()
    b = x.shape[0]
    assert seen == ([b, b] if separate else [2 * b])
    assert all(torch.isfinite(v).all() for v in values.values())


def test_in_training_metrics_keep_best_checkpoint_and_return_the_metric(tiny_cfg, tmp_path):
    from facegen.data import draw_faces
    from facegen.metrics import save_feature_net, train_feature_net

    images, labels = draw_faces(200, seed=3)
    net_file = save_feature_net(train_feature_net(images, labels, steps=5, batch_size=32, seed=0),
                                tmp_path / "facenet.pt")
    cfg = tiny_cfg("trainer.epochs=2", "trainer.eval_every=1", f"metrics.feature_net={net_file}",
                   "metrics.num_samples=40", "trainer.best_metric=metrics/fd_facenet",
                   "optimized_metric=metrics/fd_facenet")
    value = train(cfg)
    run = Path(cfg.paths.output_dir)
    records = [__import__("json").loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "metrics/fd_facenet" in r]
    assert len(epochs) == 2 and all(r["metrics/precision"] >= 0 for r in epochs)
    assert value == pytest.approx(epochs[-1]["metrics/fd_facenet"])
    best = read_checkpoint(run / "checkpoints" / "best.pt")
    assert best["metrics"]["metrics/fd_facenet"] == pytest.approx(min(r["metrics/fd_facenet"] for r in epochs))


def test_a_best_metric_that_is_never_measured_is_an_error_not_a_missing_best_pt(tiny_cfg):
    with pytest.raises(TrainingError, match="best_metric=metrics/fd_facenet is measured only .* set trainer.eval_every=N"):
        Trainer(tiny_cfg("trainer.best_metric=metrics/fd_facenet"))
    cfg = tiny_cfg("trainer.best_metric=val/los")   # one epoch of 72 faces in batches of 16
    with pytest.raises(TrainingError, match=r"best_metric=val/los is not a key of the epoch record \(.*val/loss"):
        train(cfg)
    # last.pt was written before the error: fixing the key and resuming goes on from it
    assert read_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.pt")["step"] == 5


def test_resuming_from_a_missing_file_names_trainer_resume(tiny_cfg, tmp_path):
    from facegen.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match=r"nope.pt: no such checkpoint file \(give trainer.resume=PATH"):
        Trainer(tiny_cfg(f"trainer.resume={tmp_path / 'nope.pt'}"))


@pytest.mark.parametrize("extra", [
    ("model=resnet", "loss.kl_weight=0.5"),
    ("data=age_gender", "data.path=" + str(ROOT.parent / "shared" / "data" / "age_gender_sample.csv"), "data.limit=64"),
    ("optimizer=rmsprop",),
])
def test_readme_training_variants_run_one_tiny_epoch(tiny_cfg, extra):
    if any("age_gender_sample" in e for e in extra) and not (ROOT.parent / "shared" / "data").is_dir():
        pytest.skip("../shared/data is absent")
    cfg = tiny_cfg(*extra)
    value = train(cfg)
    ckpt = read_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.pt")
    assert ckpt["finished"] and ckpt["epoch"] == 1 and value is not None and math.isfinite(value)
    if "optimizer=rmsprop" in extra:  # the paper's decay: 0.75 per epoch
        assert ckpt["optimizers"]["encoder"]["param_groups"][0]["lr"] == pytest.approx(3e-4 * 0.75)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_each_experiment_composes_its_recipe_and_runs_one_tiny_step(tiny_cfg, experiment):
    """experiment=fer_vae_baseline / fer_vaegan: the recipe's own values, and one step on real faces."""
    fer = ROOT.parent / "shared" / "data" / "fer2013"
    if not (fer / "train").is_dir():
        pytest.skip(f"{fer} is absent")
    full = compose_config("train", [f"experiment={experiment}"])
    assert full.trainer.max_time == 600 and full.data._target_.endswith("FolderFaces")
    if experiment == "fer_vaegan":
        assert (full.data.batch_size, list(full.model.decoder.widths), full.model.decoder.upsample,
                full.model.decoder.kernel_size, full.model.discriminator.kernel_size, full.loss.margin,
                full.loss.min_dis_every, full.optimizer.lr, full.optimizer.scheduler, full.optimizer.decay_steps,
                full.loss.pixel_weight, full.loss.separate_batches, full.trainer.standing_stats, full.loss._target_) == \
            (16, [64, 64, 16], "resize", 3, 3, 0.2, 2, 3.5e-4, "budget", 3000, 0.01, True, 50,
             "facegen.losses.VAEGANLoss")
    else:
        assert (full.data.batch_size, full.model.encoder._target_, full.loss._target_, full.trainer.standing_stats) == \
            (100, "facegen.models.encoders.SeedEncoder", "facegen.losses.VAELoss", 50)
    cfg = tiny_cfg(f"experiment={experiment}", "data=fer2013", f"data.path={fer / 'train'}",
                   f"data.val_path={fer / 'validation'}", "data.limit=64", "trainer.max_steps=1",
                   f"model={'seed_vae' if experiment == 'fer_vae_baseline' else 'dcgan'}")
    value = train(cfg)
    ckpt = read_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.pt")
    assert ckpt["step"] == 1 and value is not None and math.isfinite(value)


def test_budget_decay_steps_end_the_decay_early_and_hold_the_final_rate(tiny_cfg):
    """optimizer.decay_steps: the budget schedule reaches lr * final_lr_fraction after that many steps
    when the budget (here 8 steps) is longer, and keeps it for the rest of the run."""
    import json

    cfg = tiny_cfg("optimizer.scheduler=budget", "optimizer.final_lr_fraction=0.2", "optimizer.lr=1e-3",
                   "optimizer.decay_steps=4", "trainer.max_steps=8", "trainer.log_every=1",
                   "data.num_images=600", "trainer.epochs=100")
    train(cfg)
    logged = [json.loads(line) for line in (Path(cfg.paths.output_dir) / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr/encoder"] for r in logged if "lr/encoder" in r}
    # step s runs with (s - 1) steps done: over 4 steps, not the budget's 8, then flat at the floor
    expected = [1e-3 * (1 - 0.8 * min(1.0, (s - 1) / 4)) for s in range(1, 9)]
    assert [lrs[s] for s in range(1, 9)] == pytest.approx(expected)
    assert expected[4:] == pytest.approx([2e-4] * 4)
    # decay_steps only shapes the budget schedule: without it, an error rather than a silent no-op
    bad = tiny_cfg("optimizer.decay_steps=4", "trainer.max_steps=1")
    with pytest.raises(ValueError, match="decay_steps=4 needs optimizer.scheduler=budget"):
        Trainer(bad)


def test_standing_stats_refresh_the_saved_norms_and_leave_the_training_alone(tmp_path):
    """trainer.standing_stats=N: the checkpoint's decoder norms are the standing statistics of its
    own weights at its step, and every trained tensor is bit-identical to a run without them."""
    from facegen.models import build_model, standing_statistics

    ckpts, cfg = {}, None
    for name, batches in (("off", 0), ("on", 2)):
        cfg = compose_config("train", tiny_overrides("trainer.max_steps=4", f"trainer.standing_stats={batches}"),
                             output_dir=tmp_path / name)
        train(cfg)
        ckpts[name] = read_checkpoint(tmp_path / name / "checkpoints" / "last.pt")
    off, on = ckpts["off"], ckpts["on"]
    assert on["step"] == off["step"] == 4
    norm_buffers = ("running_mean", "running_var", "num_batches_tracked")
    for net in off["model"]:
        for k, v in off["model"][net].items():
            if not k.endswith(norm_buffers):
                assert torch.equal(on["model"][net][k], v), f"{net}.{k}: standing statistics changed the training"
    decoder = build_model(cfg.model, with_discriminator=False).decoder
    decoder.load_state_dict(on["model"]["decoder"])
    standing_statistics(decoder, cfg.model.latent_dim, 2, seed=int(cfg.seed) * 1_000_003 + 4)
    saved, off_dec = on["model"]["decoder"], off["model"]["decoder"]
    for k, v in decoder.state_dict().items():
        if k.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(saved[k], v, rtol=1e-4, atol=1e-5, msg=k)
            assert not torch.allclose(off_dec[k], v), f"{k}: the run without standing statistics has them too"
        elif k.endswith("num_batches_tracked"):
            assert int(saved[k]) == 2


def test_in_training_metrics_measure_against_all_validation_faces(tiny_cfg, monkeypatch):
    """A class folder's first faces are one class: the seeded subset is drawn from all of them."""
    import facegen.metrics as metrics

    seen = {}
    monkeypatch.setattr(metrics, "default_feature_net", lambda *a, **k: torch.nn.Identity())
    monkeypatch.setattr(metrics, "quick_metrics",
                        lambda fake, real, net, max_samples, **k: seen.update(real=len(real), n=max_samples) or {})
    tr = Trainer(tiny_cfg("trainer.eval_every=1", "metrics.num_samples=10"))
    tr.evaluate_quality()
    assert seen == {"real": len(tr.data.val), "n": 10} and len(tr.data.val) > 10


@pytest.mark.parametrize("setting, says", [
    ("trainer.precision=fp16", "trainer.precision must be auto, 32 or bf16-mixed, got 'fp16'"),
    ("optimizer.scheduler=bogus", "optimizer.scheduler must be none, exponential, cosine or budget"),
    ("model.latent_dim=0", "model.latent_dim=0: the latent size must be at least 1"),
    # a constructor's ValueError through hydra.utils.instantiate: its message and the key, no Hydra block
    ("data.image_size=50", "DCGANEncoder: image_size 50 is not divisible by .*\\(model.encoder\\)"),
    ("loss.min_dis_every=-1", "loss.min_dis_every must be 0 \\(off\\) or a number of steps, got -1 \\(loss\\)"),
])
def test_settings_that_cannot_work_are_one_line_errors(tiny_cfg, setting, says, capsys):
    from facegen.cli import run_or_explain

    with pytest.raises(SystemExit) as stop:
        run_or_explain(train, tiny_cfg(setting))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(says, err), err


def test_hflip_mirrors_about_half_of_each_training_batch_and_never_the_validation_faces(tiny_cfg):
    """data.hflip is training augmentation: some faces of a batch mirrored, the rest as they are; the
    validation losses (and so best.pt) are the same with it on or off."""
    tr = Trainer(tiny_cfg("data.hflip=true"))
    idx = tr.data.train_batches(0)[0]
    plain = tr.model.from_uint8(tr.data.train.images[idx])
    torch.manual_seed(0)
    x = tr._batch(idx)
    mirrored = (x == plain.flip(3)).flatten(1).all(1)
    as_is = (x == plain).flatten(1).all(1)
    assert (mirrored | as_is).all() and mirrored.any() and as_is.any()
    with_flip = tr.validate()
    tr.data.hflip = False
    assert torch.equal(tr._batch(idx), plain)
    assert tr.validate() == with_flip


def test_in_training_metrics_and_grids_sample_the_ema_decoder_in_eval_mode(tiny_cfg, monkeypatch):
    """With trainer.ema_decay the face metrics decode with the EMA copy (the decoder that sample and
    evaluate load), in eval mode as they do: running statistics, not each batch's own; and drawing
    the metrics' samples or the sample grid leaves the EMA's saved state as it was."""
    import facegen.metrics as metrics

    seen = {}
    monkeypatch.setattr(metrics, "default_feature_net", lambda *a, **k: torch.nn.Identity())
    monkeypatch.setattr(metrics, "quick_metrics", lambda fake, real, net, max_samples, **k: seen.update(fake=fake) or {})
    tr = Trainer(tiny_cfg("trainer.ema_decay=0.5", "trainer.eval_every=1", "metrics.num_samples=8",
                          "trainer.channels_last=false"))
    batches = tr.data.train_batches(0)
    for i in range(3):
        tr.train_step(tr._batch(batches[i]))
    ema_state = {k: v.clone() for k, v in tr.ema.module.state_dict().items()}
    tr.evaluate_quality()
    tr.save_grids("check")
    assert all(torch.equal(v, ema_state[k]) for k, v in tr.ema.module.state_dict().items())
    z = torch.randn(8, tr.model.latent_dim, generator=torch.Generator().manual_seed(int(tr.cfg.seed) + 1))
    with torch.no_grad():
        by_ema = tr.model.to_unit(tr.ema.module.eval()(z))
        by_raw = tr.model.to_unit(tr.model.decoder.eval()(z))
    tr.model.train()
    assert not torch.allclose(by_ema, by_raw, atol=1e-4)
    torch.testing.assert_close(seen["fake"], by_ema)
    tr.close()


def test_the_saved_ema_decoder_keeps_its_standing_statistics(tmp_path):
    """With trainer.ema_decay and trainer.standing_stats, the checkpoint's decoder_ema (what sample,
    evaluate and explore load by default) holds the standing statistics of its own weights: drawing
    the sample grid before the save must not move them (the EMA copy decodes in eval mode)."""
    from facegen.models import build_model, standing_statistics

    cfg = compose_config("train", tiny_overrides("trainer.max_steps=4", "trainer.standing_stats=2",
                                                 "trainer.ema_decay=0.5"), output_dir=tmp_path / "run")
    train(cfg)
    saved = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]["decoder_ema"]
    decoder = build_model(cfg.model, with_discriminator=False).decoder
    decoder.load_state_dict(saved)
    standing_statistics(decoder, cfg.model.latent_dim, 2, seed=int(cfg.seed) * 1_000_003 + 4)
    for k, v in decoder.state_dict().items():
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            torch.testing.assert_close(saved[k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_a_run_stopped_mid_epoch_and_resumed_ends_bit_identical(tmp_path):
    """The kill -9 test's checkpoint lands wherever the kill does (often an epoch's end); this one stops
    deterministically mid-epoch (trainer.max_steps=7: 2 steps into the second epoch of 5) and resumes:
    the RNG (hflip, noise), the optimizers, the cosine schedule, the EMA and the position in the
    epoch all carry over, so the weights and the EMA decoder end bit-identical to a run that was
    never stopped (and the budget's end grids, drawn from the EMA, leave it alone)."""
    common = ("trainer.epochs=2", "data.hflip=true", "trainer.ema_decay=0.9", "optimizer.scheduler=cosine")
    whole = compose_config("train", tiny_overrides(*common), output_dir=tmp_path / "whole")
    train(whole)
    cut = compose_config("train", tiny_overrides(*common, "trainer.max_steps=7"), output_dir=tmp_path / "cut")
    train(cut)
    stopped = read_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert (stopped["epoch"], stopped["batch_in_epoch"]) == (1, 2)
    cut.trainer.max_steps, cut.trainer.resume = None, "auto"
    train(cut)
    _assert_identical(_final_weights(tmp_path / "whole"), _final_weights(tmp_path / "cut"))
    a, b = (read_checkpoint(tmp_path / r / "checkpoints" / "last.pt") for r in ("whole", "cut"))
    assert a["step"] == b["step"] == 10 and a["schedulers"] == b["schedulers"]
    assert a["optimizers"]["decoder"]["param_groups"] == b["optimizers"]["decoder"]["param_groups"]


def test_ema_decoder_is_the_moving_average_of_the_trained_decoder(tiny_cfg):
    """trainer.ema_decay=d: after each step, EMA = d * EMA + (1 - d) * decoder (the first step copies),
    parameters and norm buffers alike; the checkpoint's decoder_ema is that average."""
    tr = Trainer(tiny_cfg("trainer.ema_decay=0.5", "trainer.channels_last=false"))
    batches = tr.data.train_batches(0)
    expected = None
    for i in range(3):
        tr.train_step(tr._batch(batches[i]))
        tr.step += 1
        now = {k: v.detach().clone() for k, v in tr.model.decoder.state_dict().items() if v.is_floating_point()}
        expected = now if expected is None else {k: 0.5 * expected[k] + 0.5 * now[k] for k in now}
    ema = tr.ema.module.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(ema[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert not torch.equal(ema["fc.0.weight"], tr.model.decoder.state_dict()["fc.0.weight"])
    assert tr.state_dict()["model"]["decoder_ema"]["fc.0.weight"].equal(ema["fc.0.weight"])
    tr.close()


def test_instance_noise_is_shared_by_a_face_and_its_reconstruction(tiny_cfg):
    """loss.instance_noise: the discriminator sees x + n, Dec(Enc(x)) + n (the same n, so the feature
    reconstruction compares like with like) and Dec(z_p) + n' with noise of its own."""
    tr = Trainer(tiny_cfg("trainer.channels_last=false", "loss.instance_noise=0.5"))
    seen, generated = [], []
    h1 = tr.model.discriminator.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    h2 = tr.model.decoder.register_forward_hook(lambda m, args, out: generated.append(out.detach().clone()))
    x = tr._batch(tr.data.train_batches(0)[0])
    tr.train_step(x)
    h1.remove()
    h2.remove()
    tr.close()
    b, (d_in,), (gen,) = x.shape[0], seen, generated
    noise = d_in - torch.cat([x, gen])
    torch.testing.assert_close(noise[:b], noise[b:2 * b], rtol=0, atol=1e-5)
    assert 0.4 < float(noise.std()) < 0.6
    assert not torch.allclose(noise[:b], noise[2 * b:], atol=0.1)


def test_r1_enters_the_discriminators_objective_as_gamma_over_two(tiny_cfg):
    """loss.r1_weight=gamma: the discriminator's gradient is that of L_GAN(D) + gamma / 2 * R1."""
    from facegen.losses import discriminator_gan_loss, r1_penalty

    tr = Trainer(tiny_cfg("trainer.channels_last=false", "loss.equilibrium=null", "loss.r1_weight=4"))
    x = tr._batch(tr.data.train_batches(0)[0])
    captured = {}
    tr._clip_and_step = lambda names: captured.update({n: _grads(tr.nets[n].parameters()) for n in names})
    rng = torch.get_rng_state()
    tr.train_step(x)
    torch.set_rng_state(rng)                      # the same forward pass again, differentiated by hand
    m, b = tr.model, x.shape[0]
    x_real = x.detach().requires_grad_(True)
    mu, logvar = m.encoder(x)
    z = m.reparameterize(mu, logvar)
    gen = m.decoder(torch.cat([z, torch.randn_like(z)]))
    logits, _ = m.discriminator(torch.cat([x_real, gen]), tr._feature_layer)
    l_real, l_recon, l_prior = logits.split(b)
    objective = discriminator_gan_loss(l_real, l_recon, l_prior) + 2.0 * r1_penalty(l_real, x_real)
    expected = torch.autograd.grad(objective, list(m.discriminator.parameters()))
    tr.close()
    for got, want in zip(captured["discriminator"], expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_grad_clip_bounds_each_networks_gradient_norm(tiny_cfg):
    """trainer.grad_clip=c: every optimizer steps with its own network's gradient norm <= c."""
    def step_norms(*extra):
        tr = Trainer(tiny_cfg("loss.equilibrium=null", *extra))
        norms = {}
        for name, opt in tr.optimizers.items():
            def record(*a, _name=name, _step=opt.step, **k):
                grads = [p.grad for p in tr.nets[_name].parameters() if p.grad is not None]
                norms[_name] = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
                return _step(*a, **k)
            opt.step = record
        tr.train_step(tr._batch(tr.data.train_batches(0)[0]))
        tr.close()
        return norms

    free, clipped = step_norms(), step_norms("trainer.grad_clip=0.01")
    assert set(free) == set(clipped) == {"encoder", "decoder", "discriminator"}
    assert all(v > 0.01 for v in free.values()), free            # so the clip has work to do
    assert all(v <= 0.01 * (1 + 1e-4) for v in clipped.values()), clipped


def test_per_network_learning_rates_override_lr(tiny_cfg):
    tr = Trainer(tiny_cfg("optimizer.lr=1e-3", "optimizer.lr_discriminator=1e-4", "optimizer.lr_encoder=2e-4"))
    assert {n: o.param_groups[0]["lr"] for n, o in tr.optimizers.items()} == pytest.approx(
        {"encoder": 2e-4, "decoder": 1e-3, "discriminator": 1e-4})
    tr.close()


def test_each_logged_loss_is_the_mean_of_the_steps_since_the_last_record(tiny_cfg):
    """trainer.log_every=3 over an epoch of 5 steps: records at step 3 (steps 1-3) and at the epoch's
    end (steps 4-5, a window of 2): each the mean of its own steps' values, none carried over."""
    import json

    tr = Trainer(tiny_cfg("trainer.log_every=3", "loss.equilibrium=null"))
    per_step, plain_step = [], tr.train_step

    def recording_step(x):
        values = plain_step(x)
        per_step.append({k: float(v.detach()) for k, v in values.items()})
        return values

    tr.train_step = recording_step
    tr.fit()
    tr.close()
    records = [json.loads(s) for s in (Path(tr.run_dir) / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss/kl" in r]
    assert len(per_step) == 5 and [r["step"] for r in losses] == [3, 5]
    for record, window in zip(losses, (per_step[:3], per_step[3:])):
        for k in per_step[0]:
            assert record[k] == pytest.approx(sum(v[k] for v in window) / len(window), rel=1e-5), k


def test_validation_losses_are_per_image_sums_in_eval_mode(tiny_cfg):
    """val/loss = per-image summed squared error of Dec(mu) in [0, 1] + KL, over every validation
    face, with the networks in eval mode (running statistics, left as they were)."""
    from facegen.losses import kl_divergence

    tr = Trainer(tiny_cfg())
    x = tr.data.val.images
    for i in range(2):   # move the running statistics away from their initial values
        tr.train_step(tr._batch(tr.data.train_batches(0)[i]))
    state = {k: v.clone() for k, v in tr.model.state_dict().items()}
    got = tr.validate()
    assert tr.model.training and all(torch.equal(v, state[k]) for k, v in tr.model.state_dict().items())
    m = tr.model.eval()
    with torch.no_grad():
        xin = m.from_uint8(x)
        mu, logvar = m.encode(xin)
        err = (m.to_unit(m.decode(mu)) - m.to_unit(xin)).pow(2).flatten(1)
    tr.close()
    assert got["val/kl"] == pytest.approx(float(kl_divergence(mu, logvar)), rel=1e-4)
    assert got["val/recon_mse"] == pytest.approx(float(err.mean()), rel=1e-4)
    assert got["val/loss"] == pytest.approx(float(err.sum(1).mean() + kl_divergence(mu, logvar)), rel=1e-4)


def test_resume_restores_the_clock_and_the_best_score(tiny_cfg):
    """A resumed run takes the checkpoint's elapsed time (a max_time budget goes on, it does not start
    over) and its history (best/<metric>: a worse record must not replace best.pt)."""
    train(tiny_cfg("trainer.max_steps=3", "trainer.best_metric=val/loss"))
    cfg = tiny_cfg("trainer.max_steps=6", "trainer.best_metric=val/loss", "trainer.resume=auto")
    ckpt = read_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.pt")
    tr = Trainer(cfg)
    assert (tr.step, tr.epoch, tr.batch_in_epoch) == (3, 0, 3)
    assert tr.elapsed == ckpt["elapsed"] > 0
    assert tr.history == ckpt["metrics"] and "best/val/loss" in tr.history
    tr.close()


def test_keep_last_zero_keeps_no_epoch_checkpoint_and_minus_one_keeps_all(tmp_path):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    for keep, left in ((-1, 3), (0, 0)):
        for e in (1, 2, 3):
            (tmp_path / f"epoch_{e:03d}.pt").write_bytes(b"")
        stub = SimpleNamespace(cfg=OmegaConf.create({"trainer": {"keep_last": keep}}), is_main=True, ckpt_dir=tmp_path)
        Trainer._prune_epoch_checkpoints(stub)
        assert len(list(tmp_path.glob("epoch_*.pt"))) == left


def _through_torch_save(obj):
    """obj through torch.save and a weights-only load, as a checkpoint's values travel."""
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_rng_state_round_trips_python_numpy_and_torch():
    """The RNG state a checkpoint carries restores every global generator a run may draw from."""
    import random

    import numpy as np

    from facegen.checkpoint import rng_state, set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()                             # leaves numpy with a cached Gaussian
    state = _through_torch_save(rng_state())
    first = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(state)
    again = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])
