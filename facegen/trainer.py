"""The plain-PyTorch training loop: per-network updates, checkpoints, resume, logging calls.

One forward pass per step; then each network's objective is back-propagated into that network's
parameters alone (`backward(inputs=...)`), so no network is stepped with another one's gradients.
Randomness comes only from the seeded global generators, whose state travels in every checkpoint,
and the data order is a function of (seed, epoch): a run killed at any step and resumed ends with
the same weights, bit for bit on CPU, as a run that was never interrupted.
"""
from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.utils import save_image
from tqdm.auto import tqdm

from facegen import distributed as dist
from facegen.checkpoint import (FORMAT_VERSION, CheckpointError, atomic_save, find_latest_checkpoint,
                                load_state, read_checkpoint, rng_state, set_rng_state, unwrap)
from facegen.data.base import stable_permutation
from facegen.logging import JSONLWriter
from facegen.losses import VAEGANLoss, equilibrium_gate, equilibrium_gate_tensor, r1_penalty
from facegen.models.cpu_kernels import use_cpu_kernels, warm_up as warm_up_cpu_kernels
from facegen.models.vaegan import VAEGAN, build_model, standing_statistics
from facegen.utils import (ConfigError, provenance, resolve_device, resolve_precision, seed_everything,
                           write_provenance)

NETWORKS = ("encoder", "decoder", "discriminator")


class TrainingError(Exception):
    """Training cannot go on (a NaN loss, a finished run resumed with other settings...)."""


class _Stop(Exception):
    pass


def _decay_share(budget_used: float, step: int, decay_steps: int | None) -> float:
    """How far the budget schedule has decayed, 0 to 1: the budget's share used or, with decay_steps,
    the share of those steps done, whichever is further."""
    share = budget_used if decay_steps is None else max(budget_used, step / int(decay_steps))
    return min(1.0, max(0.0, share))


def build_optimizers(opt_cfg: DictConfig, nets: dict[str, nn.Module], epochs: int,
                     fused: bool = False, progress: Callable[[], float] | None = None) -> tuple[dict, dict]:
    """One optimizer per network; `lr_<network>` overrides `lr`; an optional scheduler: per epoch
    (exponential, cosine) or, for `budget`, stepped every training step with `progress()`, the share
    of the run's budget used (0 to 1), where `final_lr_fraction_<network>` overrides
    `final_lr_fraction` (1.0: that network's rate does not decay) and `decay_steps`, when set, ends
    the decay after that many steps if the budget has not ended it first (a longer budget then adds
    steps at the final rate only)."""
    cfg = OmegaConf.to_container(opt_cfg, resolve=True)
    lr = cfg.pop("lr")
    per_net = {n: cfg.pop(f"lr_{n}", None) for n in NETWORKS}
    scheduler = cfg.pop("scheduler", "none") or "none"
    decay = cfg.pop("decay", 1.0)
    final = float(cfg.pop("final_lr_fraction", 0.1))
    per_final = {n: cfg.pop(f"final_lr_fraction_{n}", None) for n in NETWORKS}
    finals = {n: final if f is None else float(f) for n, f in per_final.items()}
    decay_steps = cfg.pop("decay_steps", None)
    if decay_steps is not None and (scheduler != "budget" or int(decay_steps) < 1):
        raise ConfigError(f"optimizer.decay_steps={decay_steps} needs optimizer.scheduler=budget (got {scheduler!r}) "
                         f"and a positive number of steps: set both, or drop decay_steps")
    if scheduler == "budget" and progress is None:
        raise ValueError("optimizer.scheduler=budget needs the run's progress (the trainer gives it)")
    if scheduler != "budget" and any(f is not None for f in per_final.values()):
        raise ConfigError(f"optimizer.final_lr_fraction_<network> is used by optimizer.scheduler=budget only, "
                         f"not {scheduler!r}: set optimizer.scheduler=budget or drop the override")
    cfg.pop("name", None)
    cfg["_partial_"] = True
    if fused and cfg["_target_"] in ("torch.optim.Adam", "torch.optim.AdamW"):
        cfg.setdefault("fused", True)
    factory = instantiate(cfg)
    optimizers, schedulers = {}, {}
    for name, net in nets.items():
        optimizers[name] = factory(net.parameters(), lr=per_net[name] if per_net[name] is not None else lr)
        if scheduler == "exponential":
            schedulers[name] = torch.optim.lr_scheduler.ExponentialLR(optimizers[name], gamma=decay)
        elif scheduler == "cosine":
            schedulers[name] = torch.optim.lr_scheduler.CosineAnnealingLR(optimizers[name], T_max=max(1, epochs))
        elif scheduler == "budget":   # linear from lr to lr * final over the budget, whatever its unit
            schedulers[name] = torch.optim.lr_scheduler.LambdaLR(
                optimizers[name], lambda step, f=finals[name]: 1.0 - (1.0 - f) * _decay_share(progress(), step, decay_steps))
        elif scheduler != "none":
            raise ConfigError(f"optimizer.scheduler must be none, exponential, cosine or budget, got {scheduler!r}")
    return optimizers, schedulers


class Trainer:
    """Trains the model of a composed `train.yaml` config and writes everything into its run dir."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        t = cfg.trainer
        if str(t.get("best_metric") or "").startswith("metrics/") and not t.get("eval_every"):
            raise TrainingError(f"trainer.best_metric={t.best_metric} is measured only at epochs with face metrics: "
                                "set trainer.eval_every=N (e.g. 1), or keep best.pt by a val/ key such as val/loss")
        self.rank, self.world_size = dist.setup(t.strategy, t.device)
        self.is_main = self.rank == 0
        self.run_dir = Path(dist.agree_on_run_dir(cfg.paths.output_dir))
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.device = dist.device_for_rank(resolve_device(t.device), self.rank)
        self.amp_dtype = resolve_precision(t.precision, self.device)
        if t.num_threads:
            torch.set_num_threads(int(t.num_threads))
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = bool(t.cudnn_benchmark)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        seed_everything(int(cfg.seed))

        self.data = instantiate(cfg.data).setup()
        self.loss = instantiate(cfg.loss)
        self.model: VAEGAN = build_model(cfg.model, with_discriminator=self.loss.needs_discriminator)
        self.model.to(self.device)
        self.channels_last = self._resolve_auto(t.channels_last, default=True)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # faster CPU training: transposed and one-channel convs, batch norm + activation fused (same numbers)
        self.cpu_kernels = self._resolve_auto(t.cpu_kernels, default=self.device.type == "cpu")
        if self.cpu_kernels and use_cpu_kernels(self.model):
            took = warm_up_cpu_kernels()
            if took > 3 and self.is_main:
                print(f"[facegen] compiled facegen's CPU kernels in {took:.0f} s (the first run only: numba caches "
                      "them on disk)", flush=True)
        self.nets = {n: getattr(self.model, n) for n in NETWORKS if getattr(self.model, n) is not None}
        self._params = {n: [p for p in m.parameters() if p.requires_grad] for n, m in self.nets.items()}
        self._feature_layer = None
        if self.loss.needs_discriminator:  # loss.feature_layer=null: the discriminator's own choice
            fl = getattr(self.loss, "feature_layer", None)
            self._feature_layer = self.model.discriminator.default_feature_layer if fl is None else int(fl)
        self.optimizers, self.schedulers = build_optimizers(
            cfg.optimizer, self.nets, int(t.epochs), fused=self.device.type == "cuda", progress=self.budget_used)
        self._per_step_schedulers = cfg.optimizer.get("scheduler") == "budget"
        # the equilibrium gate without a host sync needs a fused discriminator optimizer (CUDA's
        # fused Adam skips a step on its found_inf flag); elsewhere the gate is read on the host
        dis_opt = self.optimizers.get("discriminator")
        self._gate_on_device = bool(dis_opt is not None and dis_opt.defaults.get("fused")
                                    and self.device.type == "cuda")
        self._graph, self._graph_warmed = None, 0
        self._graphs = False  # set below, once the networks, optimizers and compile are known
        self.ema = None
        if t.ema_decay:
            # eval mode for good: the copy is never trained by a forward pass, and in train mode each grid
            # and metrics decode used batch statistics and moved the running ones the checkpoint saves
            self.ema = AveragedModel(self.model.decoder, multi_avg_fn=get_ema_multi_avg_fn(float(t.ema_decay)),
                                     use_buffers=True).eval()
        # what the forward pass calls: DDP and/or compiled wrappers around the same parameters
        self.calls = dist.wrap(self.nets, self.device) if self.world_size > 1 else dict(self.nets)
        self.compiled = False
        self._compiled_steps_ran: set[str] = set()  # which step kinds (VAE warm-up, VAE-GAN) ran compiled
        self._per_network_losses = self.loss.per_network_losses if self.loss.needs_discriminator else None
        if self._resolve_auto(t.compile, default=self.device.type == "cuda"):
            mode = t.get("compile_mode") or None
            which = t.get("compile_parts", "auto")
            if str(which) == "auto":
                # a VAE-GAN step back-propagates through its decoder and discriminator more than once, and
                # a compiled module's backward computes all of its gradients every time: on an H200 that
                # was slower than eager (README, performance); its loss terms alone fuse well
                which = ["loss"] if self.loss.needs_discriminator else list(NETWORKS)
            which = list(which)
            if set(which) - {*NETWORKS, "loss"}:
                raise TrainingError(f"trainer.compile_parts={which}: each entry must be one of "
                                    f"{[*NETWORKS, 'loss']} (or auto)")
            self.calls = {n: torch.compile(m, backend=t.compile_backend, mode=mode) if n in which else m
                          for n, m in self.calls.items()}
            compile_loss = "loss" in which and self.loss.needs_discriminator
            if compile_loss:
                # the step back-propagates through the losses three times (retain_graph=True), which
                # AOTAutograd's donated buffers forbid; its backward compiles lazily, so this is global
                torch._functorch.config.donated_buffer = False
                self._per_network_losses = torch.compile(self.loss.per_network_losses, backend=t.compile_backend,
                                                         mode=mode)
            self.compiled = compile_loss or any(n in which for n in self.calls)

        blocker = self._cuda_graphs_blocker()
        want_graphs = str(t.get("cuda_graphs", "auto")).lower()  # YAML gives a bool for true/false
        if want_graphs == "true" and blocker:
            raise TrainingError(f"trainer.cuda_graphs=true, but a step cannot be captured here: {blocker}")
        self._graphs = want_graphs != "false" and blocker is None

        on_device = self._resolve_auto(t.data_on_device, default=True)
        images = self.data.train.images
        self.train_images = images.to(self.device) if on_device else (
            images.pin_memory() if self.device.type == "cuda" else images)
        g = torch.Generator().manual_seed(int(cfg.seed))
        self.fixed_z = torch.randn(int(t.grid_size), self.model.latent_dim, generator=g).to(self.device)
        n_val = min(int(t.grid_size), len(self.data.val)) if len(self.data.val) else 0
        grid_source = self.data.val if n_val else self.data.train
        # a seeded spread of the faces, not the first ones (a class folder's come sorted by class)
        pick = np.sort(stable_permutation(len(grid_source), int(cfg.seed))[: min(int(t.grid_size), len(grid_source))])
        self.fixed_real = grid_source.images[torch.from_numpy(pick)].to(self.device)

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.elapsed = 0.0
        self.finished = False
        self.history: dict[str, Any] = {}
        self.logger_run_id: str | None = None
        self._acc_keys: tuple[str, ...] | None = None  # what _acc and _first_bad hold, in order
        self._acc = torch.zeros(0)
        self._first_bad = torch.zeros(0, dtype=torch.long)  # per key: the first non-finite step, or -1
        self._acc_steps = 0
        self._stop_signal: int | None = None
        self._log_t0 = time.monotonic()
        self._log_images_seen = 0
        self._batches_per_epoch = 1  # set by fit(); the epoch fraction in logs

        self.resumed_from = self._resume()
        self.logger = None
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_provenance(self.run_dir, provenance())
            self.metrics_file = JSONLWriter(self.run_dir / "metrics.jsonl")
            # records past the checkpoint were written by the stopped process after its last save; this
            # run writes them again (a fresh start: from step 0, so an earlier attempt's file is set aside)
            if self.resumed_from:
                self.metrics_file.keep_until(self.step)
            elif (aside := self.metrics_file.set_aside()) is not None:
                print(f"[facegen] {self.run_dir} already had a metrics.jsonl and no checkpoint to resume; "
                      f"kept it as {aside.name}", flush=True)
            config = OmegaConf.to_container(cfg, resolve=True)
            self.logger = instantiate(cfg.logger)(run_dir=self.run_dir, config=config,
                                                  run_id=self.logger_run_id)
            self.logger_run_id = self.logger.run_id
            self.logger.rewind(self.step)

    # -- helpers -----------------------------------------------------------------------------------
    @staticmethod
    def _resolve_auto(value: Any, default: bool) -> bool:
        return default if str(value) == "auto" else bool(value)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        # a captured CUDA graph must not keep autocast's cached weight casts (PyTorch's graph docs)
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=not self._graphs)

    def budget_used(self) -> float:
        """The share of the run's budget used so far, 0 to 1: of trainer.max_time (seconds) and/or
        trainer.max_steps, whichever ends the run first, else of trainer.epochs' steps."""
        t = self.cfg.trainer
        step, elapsed = getattr(self, "step", 0), getattr(self, "elapsed", 0.0)
        shares = []
        if t.max_time:
            shares.append(elapsed / float(t.max_time))
        if t.max_steps:
            shares.append(step / int(t.max_steps))
        if not shares:
            shares.append(step / max(1, getattr(self, "_batches_per_epoch", 1) * int(t.epochs)))
        return min(1.0, max(shares))

    def _set_budget_lr(self) -> None:
        """optimizer.scheduler=budget: each network's lr from the share of the budget used (set directly,
        not by LambdaLR.step(), which would count steps and warn when it runs before an optimizer step)."""
        if not self._per_step_schedulers:
            return
        for sched in self.schedulers.values():
            for group, base, factor in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                group["lr"] = base * factor(self.step)

    def _cuda_graphs_blocker(self) -> str | None:
        """Why a whole training step cannot be captured as one CUDA graph here (None: it can)."""
        t, loss = self.cfg.trainer, self.loss
        if self.device.type != "cuda":
            return "not on CUDA"
        if self.world_size > 1:
            return "DistributedDataParallel"
        if t.detect_anomaly or t.profile_steps:
            return "anomaly detection or profiling"
        if self.schedulers:   # a captured optimizer step keeps the learning rate it was captured with
            return f"optimizer.scheduler={self.cfg.optimizer.get('scheduler')} changes the learning rate during the run"
        if not all(o.defaults.get("fused") for o in self.optimizers.values()):
            return "an optimizer without a fused CUDA step (use optimizer=adam)"
        if getattr(loss, "equilibrium", None) is not None and not self._gate_on_device:
            return "the equilibrium gate needs a host sync"
        if getattr(loss, "pixel_weight", 0) and getattr(loss, "pixel_warmup_steps", 0):
            return "loss.pixel_warmup_steps changes the step's constants every step"
        if getattr(loss, "equilibrium", None) is not None and getattr(loss, "min_dis_every", 0):
            return "loss.min_dis_every decides on the host which steps train the discriminator"
        if getattr(loss, "instance_noise", 0) and getattr(loss, "instance_noise_steps", 0):
            return "loss.instance_noise_steps changes the step's constants every step"
        if self.compiled and str(t.get("compile_mode")).lower() in ("reduce-overhead", "max-autotune"):
            return "trainer.compile_mode already uses CUDA graphs"
        return None

    def _batch(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.train_images[idx.to(self.train_images.device)].to(self.device, non_blocking=True)
        x = self.model.from_uint8(x)
        if self.data.hflip:
            flip = torch.rand(x.shape[0], device=self.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x).contiguous()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _accumulate(self, values: dict[str, torch.Tensor]) -> None:
        """Sum the step's values on the device, stacked into one vector (a few kernels per step, not a
        few per term); no host sync until the next log. A step's keys are fixed by the config."""
        keys = tuple(values)
        vec = torch.stack([v.detach().float().reshape(()) for v in values.values()])
        if self._acc_keys is None:
            self._acc_keys, self._acc = keys, vec.clone()
            self._first_bad = torch.full((len(keys),), -1, dtype=torch.long, device=vec.device)
        elif keys != self._acc_keys:
            raise RuntimeError(f"internal: the logged terms changed within a window: {self._acc_keys} -> {keys}")
        else:
            self._acc += vec
        newly_bad = (self._first_bad < 0) & ~torch.isfinite(vec)
        self._first_bad.masked_fill_(newly_bad, self.step)
        self._acc_steps += 1

    # -- one step -----------------------------------------------------------------------------------
    def _zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def _clip_and_step(self, names: list[str]) -> None:
        clip = self.cfg.trainer.grad_clip
        for name in names:
            if clip:
                torch.nn.utils.clip_grad_norm_(self.nets[name].parameters(), float(clip))
            self.optimizers[name].step()
        if self.ema is not None and "decoder" in names:
            self.ema.update_parameters(self.model.decoder)

    def _step_vae(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with self._autocast():
            mu, logvar = self.calls["encoder"](x)
            recon = self.calls["decoder"](self.model.reparameterize(mu, logvar))
        lo, hi = self.model.output_range
        terms = self.loss.terms((x - lo) / (hi - lo), (recon.float() - lo) / (hi - lo), mu.float(), logvar.float())
        self._zero_grad()
        # encoder and decoder share the ELBO: one objective, so one backward serves both
        terms["total"].backward()
        self._clip_and_step(["encoder", "decoder"])
        return {f"loss/{k}": v for k, v in terms.items()}

    def _step_vaegan(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        loss: VAEGANLoss = self.loss
        b = x.shape[0]
        with self._autocast():
            mu, logvar = self.calls["encoder"](x)
            z = self.model.reparameterize(mu, logvar)
            z_prior = torch.randn_like(z)
            if loss.separate_batches:   # each kind normalised by its own batch statistics
                generated = torch.cat([self.calls["decoder"](z), self.calls["decoder"](z_prior)])
            else:
                generated = self.calls["decoder"](torch.cat([z, z_prior]))  # Dec(Enc(x)) and Dec(z_p)
            x_real = x.detach().requires_grad_(True) if loss.r1_weight > 0 else x  # R1 needs dD/dx
            seen = torch.cat([x_real, generated])
            sigma = loss.noise_std(self.step)
            if sigma > 0:   # instance noise: a face and its reconstruction share theirs, prior samples get their own
                noise = torch.randn_like(generated)
                seen = seen + sigma * torch.cat([noise[:b], noise])
            logits, feats = self.calls["discriminator"](seen, self._feature_layer)
        if feats is None:
            raise TrainingError(f"loss.feature_layer={loss.feature_layer} is not a layer of the discriminator "
                                f"(it has layers 0..{unwrap(self.model.discriminator).num_layers - 1})")
        recon = generated[:b]
        l_real, l_recon, l_prior = logits.split(b)
        losses, terms = self._per_network_losses(
            x=x, recon=recon, mu=mu.float(), logvar=logvar.float(), logits_real=l_real, logits_recon=l_recon,
            logits_prior=l_prior, feats_real=feats[:b], feats_recon=feats[b:2 * b], step=self.step)
        if loss.r1_weight > 0:
            terms["r1"] = r1_penalty(l_real, x_real)
            losses["discriminator"] = losses["discriminator"] + 0.5 * loss.r1_weight * terms["r1"]
        self._zero_grad()
        params = self._params
        losses["encoder"].backward(inputs=params["encoder"], retain_graph=True)
        out = {f"loss/{k}": v for k, v in terms.items()}
        if loss.equilibrium is not None and self._gate_on_device:
            # no host sync: the decoder's GAN term is multiplied by its 0/1 gate, and a resting
            # discriminator's fused optimizer step is skipped on the device (its found_inf flag)
            dec_gate, dis_gate = equilibrium_gate_tensor(self._gate_costs(l_real, l_prior), loss.equilibrium,
                                                         loss.margin)
            if loss.forces_discriminator(self.step):
                dis_gate = torch.ones_like(dis_gate)
            (losses["decoder"] + dec_gate * losses["decoder_gan"]).backward(inputs=params["decoder"],
                                                                             retain_graph=True)
            losses["discriminator"].backward(inputs=params["discriminator"])
            self.optimizers["discriminator"].found_inf = 1.0 - dis_gate
            try:
                self._clip_and_step(["encoder", "decoder", "discriminator"])
            finally:
                del self.optimizers["discriminator"].found_inf
            out["gate/decoder_gan"], out["gate/discriminator"] = dec_gate, dis_gate
            return out
        train_dec_gan, train_dis = True, True
        if loss.equilibrium is not None:
            real_cost, fake_cost = self._gate_costs(l_real, l_prior).tolist()
            train_dec_gan, train_dis = equilibrium_gate(real_cost, fake_cost, loss.equilibrium, loss.margin)
            train_dis = train_dis or loss.forces_discriminator(self.step)
        decoder_loss = losses["decoder"] + losses["decoder_gan"] if train_dec_gan else losses["decoder"]
        decoder_loss.backward(inputs=params["decoder"], retain_graph=train_dis)
        stepped = ["encoder", "decoder"]
        if train_dis:
            losses["discriminator"].backward(inputs=params["discriminator"])
            stepped.append("discriminator")
        self._clip_and_step(stepped)
        out["gate/decoder_gan"] = torch.tensor(float(train_dec_gan), device=self.device)
        out["gate/discriminator"] = torch.tensor(float(train_dis), device=self.device)
        return out

    def _gate_costs(self, logits_real: torch.Tensor, logits_prior: torch.Tensor) -> torch.Tensor:
        """The equilibrium gate's two costs, averaged over the DDP ranks: every rank takes one decision."""
        return dist.mean_over_ranks(self.loss.gate_costs(logits_real, logits_prior))

    # -- CUDA graphs: the whole step (forward, backward, optimizer steps) replayed as one graph ----------
    GRAPH_WARMUP = 3  # eager steps on a side stream before capture (cudnn/cublas workspaces, compilation)

    def _graph_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One training step through the captured graph; captures it after GRAPH_WARMUP eager steps.

        The data, the prior noise (CUDA's graph-safe generator) and every decision (the equilibrium
        gate, found_inf) live on the device, so a replay needs nothing from the host but the batch.
        The EMA update (it reads a counter on the host) runs after the replay.
        """
        if self._graph is None and self._graph_warmed < self.GRAPH_WARMUP:
            # warming up on a side stream is PyTorch's capture recipe; autograd warns that the
            # parameters' gradient accumulators were made on the default stream: expected here
            torch.autograd.graph.set_warn_on_accumulate_grad_stream_mismatch(False)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                out = self._plain_step(x)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._graph_warmed += 1
            return out
        if self._graph is None:
            self._graph_x = x.clone()
            groups = [g for o in self.optimizers.values() for g in o.param_groups]
            for g in groups:
                g["capturable"] = True       # fused Adam's kernels are the same; only capture checks it
            ema, self.ema = self.ema, None   # not captured: it runs after each replay
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self._graph_out = self._plain_step(self._graph_x)
            finally:
                self.ema = ema
                for g in groups:
                    g["capturable"] = False
            self._graph = graph
        self._graph_x.copy_(x)
        self._graph.replay()
        if self.ema is not None:
            self.ema.update_parameters(self.model.decoder)
        return self._graph_out

    def _warming_up(self) -> bool:
        """Whether this step of a VAE-GAN is one of its plain-VAE warm-up steps (loss.vae_warmup_steps)."""
        return self.loss.needs_discriminator and self.loss.in_vae_warmup(self.step)

    def train_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._graphs and x.shape[0] == self.data.batch_size and not self._warming_up():
            try:
                return self._graph_step(x)
            except Exception as e:  # capture failed: say so, and train on without graphs
                if self._graph is not None:
                    raise
                print(f"[facegen] CUDA graph capture failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                      "training on without it (trainer.cuda_graphs=false)", flush=True)
                self._graphs = False
                torch.cuda.synchronize(self.device)
        return self._plain_step(x)

    def _plain_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step run op by op (compiled networks included), falling back to eager if compiling fails."""
        step = self._step_vaegan if self.loss.needs_discriminator and not self._warming_up() else self._step_vae
        if not self.compiled:
            return step(x)
        # until a step of this kind has run compiled, keep the RNG state: a step that fails half-way (e.g.
        # in the compiled loss terms, after the networks drew their noise) is retried with the same draws
        before = rng_state() if step.__name__ not in self._compiled_steps_ran else None
        try:
            out = step(x)
            self._compiled_steps_ran.add(step.__name__)
            return out
        except Exception as e:  # compilation fails lazily, at the first call: fall back to eager
            if str(self.cfg.trainer.compile).lower() == "true" and not self._compile_fallback_ok():
                raise
            print(f"[facegen] torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                  "training on without it (trainer.compile=false)", flush=True)
            self.calls = {n: getattr(m, "_orig_mod", m) for n, m in self.calls.items()}
            if self._per_network_losses is not None:
                self._per_network_losses = self.loss.per_network_losses
            self.compiled = False
            if before is not None:
                set_rng_state(before)
            return step(x)

    def _compile_fallback_ok(self) -> bool:
        """An explicit trainer.compile=true falls back too, unless compile_fallback=false asks to fail."""
        return bool(self.cfg.trainer.get("compile_fallback", True))

    # -- the loop -------------------------------------------------------------------------------------
    def fit(self) -> float | None:
        t = self.cfg.trainer
        max_steps = int(t.max_steps) if t.max_steps else None
        max_time = float(t.max_time) if t.max_time else None
        epochs = int(t.epochs)
        if self.resumed_from and (self.epoch >= epochs or (max_steps is not None and self.step >= max_steps)
                                  or (max_time is not None and self.elapsed >= max_time)):
            if self.is_main:
                print(f"[facegen] {self.resumed_from} is a finished run (epoch {self.epoch}, step {self.step}, "
                      f"{self.elapsed:.0f} s); nothing to do. Raise trainer.epochs, trainer.max_steps or "
                      "trainer.max_time to train on.", flush=True)
            return self._return_value()
        self.finished = False
        previous = self._install_signal_handlers()
        anomaly = torch.autograd.set_detect_anomaly(True) if t.detect_anomaly else contextlib.nullcontext()
        profiler = self._profiler() if t.profile_steps else contextlib.nullcontext()
        n_batches = self._batches_per_epoch = len(self.data.train_batches(0, self.rank, self.world_size))
        total = n_batches * epochs if max_steps is None else min(max_steps, n_batches * epochs)
        bar = tqdm(total=total, initial=min(self.step, total), disable=not (self.is_main and t.progress_bar),
                   desc="train", unit="step", dynamic_ncols=True, mininterval=1.0)
        t_start = time.monotonic() - self.elapsed
        self._set_budget_lr()   # a resumed run with a larger budget: its schedule stretches from here
        self._log_t0 = time.monotonic()
        self.model.train()
        try:
            with anomaly, profiler as prof:
                while self.epoch < epochs:
                    batches = self.data.train_batches(self.epoch, self.rank, self.world_size)
                    for i in range(self.batch_in_epoch, len(batches)):
                        if self.loss.needs_discriminator and self.step == self.loss.vae_warmup_steps > 0:
                            self._log(bar)   # the VAE warm-up ends: its logged terms end with it
                        x = self._batch(batches[i])
                        values = self.train_step(x)
                        self.step += 1
                        self.batch_in_epoch = i + 1
                        self._log_images_seen += x.shape[0] * self.world_size
                        self._accumulate(values)
                        if prof is not None:
                            prof.step()
                        self.elapsed = time.monotonic() - t_start
                        bar.update(1)
                        last_in_epoch = self.batch_in_epoch == len(batches)
                        out_of_steps = max_steps is not None and self.step >= max_steps
                        out_of_time = max_time is not None and self.elapsed >= max_time
                        if self.step % int(t.log_every) == 0 or (out_of_steps or out_of_time) and not last_in_epoch:
                            self._log(bar)
                        self._set_budget_lr()   # the next step's lr, from the budget used so far
                        if self._stop_signal is not None:
                            self._standing_stats()
                            self._save("last.pt")
                            raise _Stop()
                        if (out_of_steps or out_of_time) and not last_in_epoch:
                            self.finished = True
                            self._end_budget()
                            raise _Stop()
                        if self.step % int(t.checkpoint_every) == 0 and not last_in_epoch:
                            self._standing_stats()
                            self._save("last.pt")
                    self._end_epoch(bar)
                    if (max_steps is not None and self.step >= max_steps) or (
                            max_time is not None and self.elapsed >= max_time):
                        break
                self.finished = True
                self._save("last.pt")
        except _Stop:
            pass
        finally:
            bar.close()
            self._restore_signal_handlers(previous)
        if self._stop_signal is not None:
            name = signal.Signals(self._stop_signal).name
            if self.is_main:
                print(f"[facegen] {name}: stopped at step {self.step}, checkpoint {self.ckpt_dir / 'last.pt'}; "
                      f"resume with trainer.resume=auto hydra.run.dir={self.run_dir}", flush=True)
            self.close(exit_code=128 + self._stop_signal)
            raise SystemExit(128 + self._stop_signal)
        if self.is_main:
            reason = "time budget" if max_time is not None and self.elapsed >= max_time else "done"
            print(f"[facegen] {reason}: {self.step} steps, {self.epoch} epochs in {self.elapsed:.1f} s; "
                  f"run dir {self.run_dir}", flush=True)
        return self._return_value()

    def _end_epoch(self, bar) -> None:
        self._log(bar)
        self._standing_stats()
        self.epoch += 1
        self.batch_in_epoch = 0
        if not self._per_step_schedulers:
            for sched in self.schedulers.values():
                sched.step()
        record = {"epoch": self.epoch, "step": self.step, **self.validate()}
        every = self.cfg.trainer.eval_every
        if every and self.epoch % int(every) == 0:
            record.update(self.evaluate_quality())
        self._record_with_grids(record, f"epoch_{self.epoch:03d}")
        self._keep_best(record)
        self._save("last.pt")
        self._save(f"epoch_{self.epoch:03d}.pt")
        self._prune_epoch_checkpoints()

    def _end_budget(self) -> None:
        """A run stopped mid-epoch by max_steps/max_time still ends like an epoch: validation losses
        (what facegen.train returns to a sweep), sample and reconstruction grids, last.pt."""
        self._standing_stats()
        record = {"epoch": self.epoch + self.batch_in_epoch / max(1, self._batches_per_epoch), "step": self.step,
                  **self.validate()}
        self._record_with_grids(record, f"step_{self.step:06d}")
        self._keep_best(record)
        self._save("last.pt")

    def _standing_stats(self) -> None:
        """trainer.standing_stats > 0: before the weights are validated, pictured, measured or saved,
        the decoder's (and its EMA's) batch-norm statistics are re-estimated on that many batches of
        64 prior draws (facegen.models.standing_statistics); the training steps never read them."""
        batches = int(self.cfg.trainer.get("standing_stats") or 0)
        if batches <= 0:
            return
        seed = int(self.cfg.seed) * 1_000_003 + self.step   # the same weights and step: the same statistics
        for decoder in (self.model.decoder, self.ema.module if self.ema is not None else None):
            if decoder is not None:
                standing_statistics(decoder, self.model.latent_dim, batches, seed=seed)

    def _record_with_grids(self, record: dict[str, Any], grid_name: str) -> None:
        """Keep an end-of-epoch (or end-of-budget) record, write and log it with that moment's grids."""
        self.history.update(record)
        if self.is_main:
            self._write_record(record)
            self.logger.log_images(self.save_grids(grid_name), self.step)

    def _keep_best(self, record: dict[str, Any]) -> None:
        """best.pt when this record improves trainer.best_metric; called before last.pt is written, so
        every checkpoint carries the best score up to its own step (a run killed between the two
        writes redoes this record on resume and writes the same best.pt)."""
        key = self.cfg.trainer.best_metric
        if not key:
            return
        if key not in record:
            measured_now = not key.startswith("metrics/") or any(k.startswith("metrics/") for k in record)
            if measured_now:   # a misspelt key would otherwise never write best.pt, silently
                self._save("last.pt")   # the epoch is done: fixing the key and resuming goes on from here
                keys = ", ".join(k for k in record if k not in ("epoch", "step"))
                raise TrainingError(f"trainer.best_metric={key} is not a key of the epoch record ({keys}); "
                                    f"fix it and go on with trainer.resume=auto hydra.run.dir={self.run_dir}")
            return
        best = self.history.get(f"best/{key}")
        if best is None or record[key] < best:
            self.history[f"best/{key}"] = record[key]
            self._save("best.pt")

    @torch.no_grad()
    def evaluate_quality(self) -> dict[str, Any]:
        """FD, KID, precision/recall and sharpness of fresh samples against the validation faces.

        Runs under a forked RNG, so evaluating never changes the training run's random stream.
        """
        from facegen.metrics import default_feature_net, quick_metrics

        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if getattr(self, "_feature_net", None) is None:
                self._feature_net = default_feature_net(self.data, cache_dir=self.cfg.paths.cache_dir,
                                                        path=self.cfg.metrics.feature_net, device=self.device)
            n = int(self.cfg.metrics.num_samples)
            g = torch.Generator().manual_seed(int(self.cfg.seed) + 1)
            self.model.eval()
            decoder = self.ema.module if self.ema is not None else self.model.decoder
            fake = torch.cat([self.model.to_unit(decoder(torch.randn(len(c), self.model.latent_dim, generator=g)
                                                          .to(self.device)))
                              for c in torch.arange(n).split(256)])
            self.model.train()
            # all of them: quick_metrics draws its seeded subset (the first n of a folder are one class)
            real = self.data.val.images if len(self.data.val) else self.data.train.images
            values = quick_metrics(fake.cpu(), real, self._feature_net, max_samples=n,
                                   seed=int(self.cfg.seed), device=self.device)
        return {f"metrics/{k}": v for k, v in values.items()}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation losses, with z = mu (no randomness): reconstruction error and KL."""
        from facegen.losses import kl_divergence

        if len(self.data.val) == 0:
            return {}
        self.model.eval()
        sums = torch.zeros(3, device=self.device)
        n = 0
        for u8 in self.data.iter_val(256):
            x = self.model.from_uint8(u8.to(self.device))
            with self._autocast():
                mu, logvar = self.model.encode(x)
                recon = self.model.decode(mu)
            err = (self.model.to_unit(recon) - self.model.to_unit(x)).pow(2)
            sums += torch.stack([err.flatten(1).mean(1).sum(), err.flatten(1).sum(1).sum(),
                                 kl_divergence(mu.float(), logvar.float()) * x.shape[0]])
            n += x.shape[0]
        self.model.train()
        mse, sse, kl = (sums / n).tolist()
        return {"val/recon_mse": mse, "val/kl": kl, "val/loss": sse + kl}

    def _return_value(self) -> float | None:
        key = self.cfg.get("optimized_metric") or "val/loss"
        value = self.history.get(key)
        return None if value is None else float(value)

    # -- logging ---------------------------------------------------------------------------------------
    def _log(self, bar) -> None:
        if self._acc_keys is None:
            return
        keys = self._acc_keys
        values = (self._acc / self._acc_steps).tolist()
        record = dict(zip(keys, values))
        bad = {k: int(v) for k, v in zip(keys, self._first_bad.tolist()) if v >= 0}
        if bad:
            term, step = min(bad.items(), key=lambda kv: kv[1])
            last = self.ckpt_dir / "last.pt"
            raise TrainingError(
                f"loss term '{term.split('/')[-1]}' became non-finite (nan/inf) at step {step}; training stopped. "
                f"The last good checkpoint is {last if last.exists() else '(none yet)'}. Lower the learning "
                "rate (optimizer.lr), set trainer.grad_clip, or run with debug=anomaly to find the operation.")
        now = time.monotonic()
        record["perf/img_per_s"] = self._log_images_seen / max(now - self._log_t0, 1e-9)
        for name, opt in self.optimizers.items():
            record[f"lr/{name}"] = opt.param_groups[0]["lr"]
        record.update({"epoch": self.epoch + self.batch_in_epoch / max(1, self._batches_per_epoch),
                       "step": self.step})
        self._acc_keys, self._acc_steps, self._log_images_seen, self._log_t0 = None, 0, 0, now
        if self.is_main:
            self._write_record(record)
            short = {k.split("/")[-1][:12]: f"{v:.3g}" for k, v in record.items() if k.startswith("loss/")}
            bar.set_postfix(**short, img_s=f"{record['perf/img_per_s']:.0f}", refresh=False)

    def _write_record(self, record: dict[str, Any]) -> None:
        self.metrics_file.write({"time": round(self.elapsed, 3), **record})
        self.logger.log_metrics({k: v for k, v in record.items() if k != "step" and not isinstance(v, str)},
                                record["step"])

    @torch.no_grad()
    def save_grids(self, name: str) -> dict[str, Path]:
        """Samples from a fixed z (progress is visible across epochs) and real|reconstruction pairs."""
        self.model.eval()
        decoder = self.ema.module if self.ema is not None else self.model.decoder
        samples = self.model.to_unit(decoder(self.fixed_z))
        real = self.model.from_uint8(self.fixed_real)
        recon = self.model.to_unit(self.model.reconstruct(real))
        self.model.train()
        pairs = torch.stack([self.model.to_unit(real), recon], 1).flatten(0, 1)
        paths = {"samples": self.run_dir / "samples" / f"{name}.png",
                 "reconstructions": self.run_dir / "reconstructions" / f"{name}.png"}
        for p in paths.values():
            p.parent.mkdir(parents=True, exist_ok=True)
        save_image(samples, paths["samples"], nrow=int(math.sqrt(len(samples))) or 1, padding=1)
        save_image(pairs, paths["reconstructions"], nrow=16, padding=1)
        return paths

    # -- checkpoints ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        model = {n: unwrap(m).state_dict() for n, m in self.nets.items()}
        if self.ema is not None:
            model["decoder_ema"] = self.ema.module.state_dict()
        return {
            "format_version": FORMAT_VERSION,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "model": model,
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "ema_n_averaged": int(self.ema.n_averaged.item()) if self.ema is not None else 0,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "elapsed": self.elapsed,
            "finished": self.finished,
            "rng": rng_state(),
            "metrics": dict(self.history),
            "logger_run_id": self.logger_run_id,
            # the loss sums since the last record: a resumed run logs the same records as an uninterrupted one
            "log_window": None if self._acc_keys is None else {
                "keys": list(self._acc_keys), "sums": self._acc.detach().cpu(), "steps": self._acc_steps,
                "images": self._log_images_seen},
            "provenance": provenance(),
        }

    def _save(self, name: str) -> None:
        if self._acc_keys is not None and int(self._first_bad.max()) >= 0:
            self._log(_NullBar())  # raises: never write weights that a non-finite loss has touched
        if self.is_main:
            atomic_save(self.state_dict(), self.ckpt_dir / name)
        dist.barrier()

    def _prune_epoch_checkpoints(self) -> None:
        keep = int(self.cfg.trainer.keep_last)
        if not self.is_main or keep < 0:
            return
        # by epoch number: as text, epoch_1000.pt would sort before epoch_999.pt and be deleted first
        epochs = sorted(self.ckpt_dir.glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_", 1)[1]))
        for old in epochs[: max(0, len(epochs) - keep)]:
            old.unlink(missing_ok=True)

    def _resume(self) -> str | None:
        resume = self.cfg.trainer.resume
        if not resume:
            return None
        if str(resume) == "auto":
            path = find_latest_checkpoint(self.run_dir)
            if path is None:
                return None
        else:
            path = Path(str(resume))
        ckpt = read_checkpoint(path, "trainer.resume")
        if "format_version" not in ckpt:
            raise CheckpointError(f"{path}: not a facegen training checkpoint (a raw state dict?). To train on "
                                  "from the seed's weights, convert it first: python scripts/import_seed_checkpoint.py "
                                  f"{path} OUT.pt")
        for name, net in self.nets.items():
            if name not in ckpt["model"]:
                raise CheckpointError(f"{path}: has no {name} weights (trained with another loss?); "
                                      "use the loss it was trained with")
            load_state(net, ckpt["model"][name], name, str(path))
        self._check_resumable(ckpt.get("config", {}), path, int(ckpt["batch_in_epoch"]))
        self._load_optimizers(ckpt, path)
        if self.ema is not None and ckpt["model"].get("decoder_ema") is not None:
            self.ema.module.load_state_dict(ckpt["model"]["decoder_ema"])
            self.ema.n_averaged.fill_(int(ckpt.get("ema_n_averaged", 1)))
        self.step, self.epoch = int(ckpt["step"]), int(ckpt["epoch"])
        self.batch_in_epoch, self.elapsed = int(ckpt["batch_in_epoch"]), float(ckpt["elapsed"])
        self.finished = bool(ckpt.get("finished"))
        self.history = dict(ckpt.get("metrics", {}))
        self.logger_run_id = ckpt.get("logger_run_id")
        window = ckpt.get("log_window")
        if window is not None:
            self._acc_keys, self._acc_steps = tuple(window["keys"]), int(window["steps"])
            self._acc = window["sums"].to(self.device)
            self._first_bad = torch.full((len(self._acc_keys),), -1, dtype=torch.long, device=self.device)
            self._log_images_seen = int(window["images"])
        set_rng_state(ckpt["rng"])
        if self.is_main:
            print(f"[facegen] resumed from {path} at epoch {self.epoch}, step {self.step}", flush=True)
        return str(path)

    def _check_resumable(self, old: dict[str, Any], path: Path, batch_in_epoch: int) -> None:
        """Settings a resumed run cannot change: the optimizer and scheduler kind (their saved state
        belongs to them), and the batch size in the middle of an epoch (its batches would differ)."""
        old_opt, new_opt = old.get("optimizer", {}), OmegaConf.to_container(self.cfg.optimizer, resolve=True)
        differ = [f"optimizer.{k}={new_opt.get(k)} (the checkpoint's: {old_opt.get(k)})"
                  for k in ("_target_", "scheduler") if old_opt and (old_opt.get(k) or "none") != (new_opt.get(k) or "none")]
        old_bs = old.get("data", {}).get("batch_size")
        if batch_in_epoch and old_bs is not None and int(old_bs) != int(self.cfg.data.batch_size):
            differ.append(f"data.batch_size={self.cfg.data.batch_size} (the checkpoint's: {old_bs}, stopped "
                          f"{batch_in_epoch} batches into an epoch)")
        if differ:
            raise CheckpointError(f"{path}: a resumed run continues the same training, and these settings differ "
                                  f"from the checkpoint's: {'; '.join(differ)}. Resume with the checkpoint's "
                                  "settings, or start a new run (another hydra.run.dir).")

    def _load_optimizers(self, ckpt: dict[str, Any], path: Path) -> None:
        """The saved optimizer and scheduler states, then what the config changed since: the learning
        rates and other hyperparameters, the cosine schedule's length (trainer.epochs), the exponential
        decay. Unchanged settings leave the saved state exactly as it was (a bit-exact resume)."""
        def same(a: Any, b: Any) -> bool:   # betas come back as a tuple or a list
            return list(a) == list(b) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else a == b

        configured = {n: [{k: v for k, v in g.items() if k != "params"} for g in o.param_groups]
                      for n, o in self.optimizers.items()}
        configured_sched = {n: {k: getattr(s, k) for k in ("T_max", "gamma") if hasattr(s, k)}
                            for n, s in self.schedulers.items()}
        for name, opt in self.optimizers.items():
            if name in ckpt["optimizers"]:
                opt.load_state_dict(ckpt["optimizers"][name])
        for name, sched in self.schedulers.items():
            if name in ckpt["schedulers"]:
                sched.load_state_dict(ckpt["schedulers"][name])
        changed = []
        for name, opt in self.optimizers.items():
            sched, here = self.schedulers.get(name), []
            for i, (group, new) in enumerate(zip(opt.param_groups, configured[name])):
                base = new.get("initial_lr", new["lr"])   # the configured starting rate
                had = group.get("initial_lr", group["lr"]) if sched is not None else group["lr"]
                if base != had:
                    here.append(f"{name} lr {had} -> {base}")
                    group["lr"] = base
                    if sched is not None:
                        group["initial_lr"] = sched.base_lrs[i] = base
                for k, v in new.items():
                    if k not in ("lr", "initial_lr") and not same(group.get(k), v):
                        here.append(f"{name} {k} {group.get(k)} -> {v}")
                        group[k] = v
            if sched is not None:
                for k, v in configured_sched[name].items():
                    if getattr(sched, k) != v:
                        why = " (trainer.epochs)" if k == "T_max" else " (optimizer.decay)"
                        here.append(f"{name} scheduler {k} {getattr(sched, k)} -> {v}{why}")
                        setattr(sched, k, v)
                if here and not self._per_step_schedulers:   # (a budget schedule sets its rate every step)
                    # the rate the schedule gives at this point, from its closed form with the new settings
                    closed = getattr(sched, "_get_closed_form_lr", None)
                    for group, lr in zip(opt.param_groups, closed() if closed else sched.get_lr()):
                        group["lr"] = lr
                    sched._last_lr = [g["lr"] for g in opt.param_groups]
            changed += here
        if changed and self.is_main:
            print(f"[facegen] resuming {path} with changed settings: {'; '.join(changed)}", flush=True)

    # -- signals, profiling, shutdown ----------------------------------------------------------------
    def _install_signal_handlers(self) -> dict:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self._stop_signal is not None:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self._stop_signal = signum

        return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signal_handlers(previous: dict) -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    def _profiler(self):
        from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

        n = int(self.cfg.trainer.profile_steps)
        out = self.run_dir / "profile"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        print(f"[facegen] profiling {n} steps after 2 warm-up steps; trace in {out}", flush=True)
        return profile(activities=activities, schedule=schedule(wait=0, warmup=2, active=n, repeat=1),
                       on_trace_ready=tensorboard_trace_handler(str(out)), record_shapes=True)

    def close(self, exit_code: int = 0) -> None:
        if self.logger is not None:
            self.logger.finish(exit_code)
            self.logger = None
        dist.cleanup()


class _NullBar:
    def set_postfix(self, *args, **kwargs) -> None:
        pass


def train(cfg: DictConfig) -> float | None:
    """Train the model of `cfg` (a composed train.yaml); returns cfg.optimized_metric's value."""
    trainer = Trainer(cfg)
    exit_code = 1
    try:
        value = trainer.fit()
        exit_code = 0
        return value
    finally:
        trainer.close(exit_code)
