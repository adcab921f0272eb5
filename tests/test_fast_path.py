"""Every fast-path switch gives the same losses as the plain path, within its numeric tolerance."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from facegen.models.cpu_kernels import CPUBatchNormAct, FusedActivation, use_cpu_kernels
from facegen.trainer import Trainer, TrainingError

PLAIN = ["trainer.channels_last=false", "trainer.cpu_kernels=false", "trainer.data_on_device=false",
         "trainer.precision=32", "trainer.compile=false", "loss.equilibrium=null", "trainer.cuda_graphs=false"]


def _losses(tiny_cfg, *switch: str, steps: int = 3) -> list[dict[str, float]]:
    plain = [o for o in PLAIN if "loss=vae" not in switch or not o.startswith("loss.")]
    tr = Trainer(tiny_cfg(*plain, *switch))
    out = []
    for idx in tr.data.train_batches(0)[:steps]:
        values = tr.train_step(tr._batch(idx))
        out.append({k: float(v.detach()) for k, v in values.items() if k.startswith("loss/")})
    tr.close()
    return out


@pytest.mark.parametrize("switch,rtol", [
    (["trainer.channels_last=true"], 1e-3),
    (["trainer.channels_last=true", "trainer.cpu_kernels=true"], 1e-3),
    (["trainer.data_on_device=true"], 0.0),
    (["trainer.precision=bf16-mixed"], 5e-2),
    (["trainer.precision=bf16-mixed", "trainer.cpu_kernels=true"], 5e-2),
    (["trainer.compile=true", "trainer.compile_backend=aot_eager"], 1e-3),
    (["trainer.compile=true", "trainer.compile_backend=aot_eager", "trainer.compile_parts=[decoder]"], 1e-3),
    (["trainer.compile=true", "trainer.compile_backend=aot_eager", "trainer.compile_parts=[loss]"], 1e-3),
])
def test_switch_matches_the_plain_path(tiny_cfg, switch, rtol):
    plain = _losses(tiny_cfg)
    fast = _losses(tiny_cfg, *switch)
    for step, (a, b) in enumerate(zip(plain, fast)):
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=rtol, abs=1e-5 if rtol else 0), f"step {step} {k}"


def _compiled(tr: Trainer) -> set[str]:
    parts = {n for n, m in tr.calls.items() if isinstance(m, torch._dynamo.eval_frame.OptimizedModule)}
    if tr._per_network_losses is not None and tr._per_network_losses != tr.loss.per_network_losses:
        parts.add("loss")
    return parts


def test_compile_parts_compiles_only_those(tiny_cfg):
    tr = Trainer(tiny_cfg("trainer.compile=true", "trainer.compile_backend=aot_eager",
                          "trainer.compile_parts=[encoder,discriminator]"))
    assert _compiled(tr) == {"encoder", "discriminator"} and tr.compiled
    tr.close()
    # auto: a VAE-GAN compiles its loss terms only, a VAE its networks
    tr = Trainer(tiny_cfg("trainer.compile=true", "trainer.compile_backend=aot_eager"))
    assert _compiled(tr) == {"loss"} and tr.compiled
    tr.close()
    tr = Trainer(tiny_cfg("trainer.compile=true", "trainer.compile_backend=aot_eager", "model=seed_vae", "loss=vae"))
    assert _compiled(tr) == {"encoder", "decoder"}
    tr.close()
    with pytest.raises(TrainingError, match="compile_parts.*generator"):
        Trainer(tiny_cfg("trainer.compile=true", "trainer.compile_parts=[generator]"))


def test_vae_fast_path_matches_too(tiny_cfg):
    plain = _losses(tiny_cfg, "model=seed_vae", "loss=vae")
    fast = _losses(tiny_cfg, "model=seed_vae", "loss=vae", "trainer.channels_last=true", "trainer.data_on_device=true",
                   "trainer.cpu_kernels=true")
    for a, b in zip(plain, fast):
        assert b["loss/total"] == pytest.approx(a["loss/total"], rel=1e-4)


@pytest.mark.parametrize("layer,shape", [
    (lambda: nn.ConvTranspose2d(8, 6, 3, 2, 1, output_padding=1), (5, 8, 6, 6)),     # the seed decoder's
    (lambda: nn.ConvTranspose2d(8, 6, 4, 2, 1, bias=False), (5, 8, 6, 6)),           # the dcgan decoder's
    (lambda: nn.ConvTranspose2d(4, 3, 3, 1, 1), (2, 4, 7, 5)),                       # stride 1, not square
    (lambda: nn.Conv2d(8, 1, 3, padding=1), (5, 8, 9, 7)),                           # the seed's last layer
    (lambda: nn.Conv2d(8, 1, 3, padding=1, bias=False), (3, 8, 6, 6)),
])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_kernels_give_pytorchs_outputs_and_gradients(layer, shape, channels_last, dtype):
    """Against PyTorch's layer in float64: float64 inputs agree to 1e-10 (the transposed convolution's
    gradient is the same arithmetic; the one-channel conv takes PyTorch's path there), float32 ones
    (the one-channel conv's numba kernels when channels_last) to 1e-5 of the largest entry."""
    torch.manual_seed(0)
    ref = layer().double()
    fast = copy.deepcopy(ref).to(dtype)
    assert use_cpu_kernels(fast) == 1 and isinstance(fast, type(ref))
    assert fast.state_dict().keys() == ref.state_dict().keys()
    tol = 1e-10 if dtype == torch.float64 else 1e-5

    def close(a, b, msg=""):
        scale = b.abs().max().clamp_min(1.0)
        torch.testing.assert_close(a.double() / scale, b / scale, rtol=0, atol=tol, msg=msg or None)

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(*shape, dtype=torch.float64).contiguous(memory_format=fmt)
    xr, xf = x.clone().requires_grad_(), x.to(dtype).requires_grad_()
    yr, yf = ref(xr), fast(xf)
    assert yf.dtype == dtype
    close(yf, yr)
    g = torch.randn_like(yr)
    yr.backward(g)
    yf.backward(g.to(dtype))
    close(xf.grad, xr.grad)
    for (name, pr), pf in zip(ref.named_parameters(), fast.parameters()):
        assert pf.grad.shape == pr.grad.shape
        close(pf.grad, pr.grad, msg=name)
    with torch.no_grad():                                  # inference takes PyTorch's own path
        close(fast(x.to(dtype)), ref(x))
    close(fast(x[0].to(dtype)), ref(x[0]))                 # unbatched: PyTorch's path too


@pytest.mark.parametrize("act", [nn.LeakyReLU(0.01), nn.LeakyReLU(0.2), nn.ReLU()], ids=["lrelu.01", "lrelu.2", "relu"])
@pytest.mark.parametrize("shape,bn_kwargs", [
    ((40, 32, 24, 24), {}),                       # 23,040 rows: 90 blocks of 256
    ((3, 5, 7, 5), {}),                           # 105 rows, less than one block
    ((4, 6, 5, 5), {"momentum": None}),           # cumulative running averages
    ((4, 6, 5, 5), {"affine": False}),
], ids=["big", "small", "cumulative", "no-affine"])
def test_fused_batchnorm_activation_matches_float64(act, shape, bn_kwargs):
    """The fused kernels (float32) against PyTorch's batch norm + activation in float64: outputs, every
    gradient and the running statistics, over several training steps, then eval mode."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.BatchNorm2d(shape[1], **bn_kwargs), act)
    if ref[0].affine:
        nn.init.uniform_(ref[0].weight, 0.5, 1.5)
        nn.init.normal_(ref[0].bias)
    fast = copy.deepcopy(ref)
    assert use_cpu_kernels(fast) == 1
    assert type(fast[0]) is CPUBatchNormAct and type(fast[1]) is FusedActivation
    assert fast.state_dict().keys() == ref.state_dict().keys()
    ref.double()
    for _ in range(3):
        x = (torch.randn(*shape) * 3 + 1).contiguous(memory_format=torch.channels_last)
        xr, xf = x.double().requires_grad_(), x.clone().requires_grad_()
        yr, yf = ref(xr), fast(xf)
        assert yf.dtype == torch.float32 and yf.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(yf.double(), yr, rtol=1e-5, atol=1e-5)
        g = torch.randn_like(yf)
        yr.backward(g.double())
        yf.backward(g)
        scale = xr.grad.abs().max()
        torch.testing.assert_close(xf.grad.double() / scale, xr.grad / scale, rtol=0, atol=1e-5)
        for (name, pr), pf in zip(ref.named_parameters(), fast.parameters()):
            torch.testing.assert_close(pf.grad.double(), pr.grad, rtol=1e-5, atol=1e-4, msg=name)
            pf.grad = pr.grad = None
    for (name, br), bf in zip(ref.named_buffers(), fast.buffers()):
        torch.testing.assert_close(bf.double(), br.double(), rtol=1e-5, atol=1e-6, msg=name)
    ref.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x).double(), ref(x.double()), rtol=1e-5, atol=1e-5)


def test_fused_batchnorm_falls_back_to_pytorch_with_the_activation():
    """Inputs the kernels do not take (not channels_last, float64) go through PyTorch's batch norm, and
    the activation is still applied (its own module now passes its input on)."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.LeakyReLU(0.2))
    fast = copy.deepcopy(ref)
    assert use_cpu_kernels(fast) == 1
    for x in (torch.randn(3, 2, 6, 6), torch.randn(3, 2, 6, 6, dtype=torch.float64)):
        r, f = copy.deepcopy(ref).to(x.dtype), copy.deepcopy(fast).to(x.dtype)
        yf = f(x)
        torch.testing.assert_close(yf, r(x))
        assert (yf < 0).any()                                 # the leaky slope is there
        torch.testing.assert_close(f[1].running_mean, r[1].running_mean)


def test_numba_kernels_leave_torchs_thread_count_alone():
    """numba's OpenMP layer sets the process's thread count to all cores when it starts; a
    trainer.num_threads=1 run must stay on one thread (in a fresh process: it happens once)."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(1); from facegen.models.cpu_kernels import warm_up; "
            "warm_up(); warm_up(); print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "1"


def test_cpu_kernels_leave_other_layers_alone():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 1, 5, padding=2), nn.Conv2d(4, 1, 3, stride=2),
                        nn.utils.spectral_norm(nn.ConvTranspose2d(4, 4, 4, 2, 1)),
                        nn.ConvTranspose2d(4, 4, 3, groups=2), nn.Linear(3, 3),
                        nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3),          # a batch norm not followed by an activation
                        nn.BatchNorm1d(4), nn.ReLU(), nn.BatchNorm2d(4), nn.Tanh())

    class Block(nn.Module):  # not an nn.Sequential: its forward decides the order, so nothing is fused
        def __init__(self):
            super().__init__()
            self.bn, self.act = nn.BatchNorm2d(4), nn.ReLU()

    block = Block()
    assert use_cpu_kernels(net) == 0 and use_cpu_kernels(block) == 0
    assert [type(m) for m in net] == [nn.Conv2d, nn.Conv2d, nn.Conv2d, nn.ConvTranspose2d, nn.ConvTranspose2d,
                                      nn.Linear, nn.BatchNorm2d, nn.Conv2d, nn.BatchNorm1d, nn.ReLU,
                                      nn.BatchNorm2d, nn.Tanh]
    assert type(block.bn) is nn.BatchNorm2d and type(block.act) is nn.ReLU


@pytest.mark.slow
def test_inductor_compile_matches(tiny_cfg):
    plain = _losses(tiny_cfg)
    fast = _losses(tiny_cfg, "trainer.compile=true", "trainer.compile_backend=inductor",
                   "trainer.compile_parts=[encoder,decoder,discriminator,loss]")
    for a, b in zip(plain, fast):
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-5)


def test_a_failing_compile_falls_back_to_eager(tiny_cfg, capsys):
    """A backend that cannot compile (here: one that raises) must not stop training."""
    import torch._dynamo

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    torch._dynamo.reset()
    from torch._dynamo import register_backend
    register_backend(name="facegen_test_broken", compiler_fn=broken_backend)
    plain = _losses(tiny_cfg, steps=2)
    fallback = _losses(tiny_cfg, "trainer.compile=true", "trainer.compile_backend=facegen_test_broken", steps=2)
    assert "training on without it" in capsys.readouterr().out
    for a, b in zip(plain, fallback):
        assert b["loss/kl"] == pytest.approx(a["loss/kl"], rel=1e-6)
    torch._dynamo.reset()


def _gated_run(tiny_cfg, on_device: bool, steps: int = 6, equilibrium: float = 0.68,
               margin: float = 0.05) -> tuple[list[dict[str, float]], dict]:
    """A few equilibrium-gated steps with fused Adam; the gate read on the host or kept on the device."""
    from facegen.trainer import build_optimizers

    # margin 0.05 makes the gate rest a network on most steps, so both branches are exercised
    tr = Trainer(tiny_cfg(f"loss.equilibrium={equilibrium}", f"loss.margin={margin}", "trainer.compile=false"))
    tr.optimizers, tr.schedulers = build_optimizers(tr.cfg.optimizer, tr.nets, 1, fused=True)
    tr._gate_on_device = on_device
    out = []
    for idx in tr.data.train_batches(0)[:steps]:
        values = tr.train_step(tr._batch(idx))
        out.append({k: float(v.detach()) for k, v in values.items()})
    weights = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.close()
    return out, weights


def test_gate_on_the_device_matches_the_host_gate(tiny_cfg):
    """The sync-free gate (CUDA's fast path) takes the same decisions and leaves the same weights."""
    host, w_host = _gated_run(tiny_cfg, on_device=False)
    dev, w_dev = _gated_run(tiny_cfg, on_device=True)
    gates = [(s["gate/decoder_gan"], s["gate/discriminator"]) for s in host]
    assert {g for g in gates} & {(0.0, 1.0), (1.0, 0.0)}, f"the gate never rested a network: {gates}"
    for step, (a, b) in enumerate(zip(host, dev)):
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-6), f"step {step} {k}"
    for k in w_host:
        torch.testing.assert_close(w_dev[k], w_host[k], rtol=1e-5, atol=1e-6, msg=k)


def test_device_gate_rests_the_decoders_gan_term_as_the_host_gate_does(tiny_cfg):
    """Equilibrium 0, margin 0: every cost is above the upper threshold, so each step rests the
    decoder's GAN term (and trains D); the device gate's decoder must then match the host's."""
    host, w_host = _gated_run(tiny_cfg, on_device=False, steps=2, equilibrium=0.0, margin=0.0)
    dev, w_dev = _gated_run(tiny_cfg, on_device=True, steps=2, equilibrium=0.0, margin=0.0)
    assert [(s["gate/decoder_gan"], s["gate/discriminator"]) for s in host] == [(0.0, 1.0)] * 2
    assert [(s["gate/decoder_gan"], s["gate/discriminator"]) for s in dev] == [(0.0, 1.0)] * 2
    for k in w_host:
        torch.testing.assert_close(w_dev[k], w_host[k], rtol=1e-5, atol=1e-6, msg=k)


def test_device_gate_agrees_with_the_host_gate_everywhere():
    from facegen.losses import equilibrium_gate, equilibrium_gate_tensor

    # values on either side of each threshold (0.33, 1.03); exactly on one, float32 and float64 may differ
    for real in (0.1, 0.32, 0.34, 0.68, 1.02, 1.04, 1.5):
        for fake in (0.1, 0.32, 0.34, 0.68, 1.02, 1.04, 1.5):
            dec, dis = equilibrium_gate_tensor(torch.tensor([real, fake]), 0.68, 0.35)
            assert (bool(dec), bool(dis)) == equilibrium_gate(real, fake, 0.68, 0.35), (real, fake)


def test_cuda_graphs_auto_is_off_on_cpu_and_true_says_why(tiny_cfg):
    tr = Trainer(tiny_cfg())
    assert tr._graphs is False and tr._cuda_graphs_blocker() == "not on CUDA"
    tr.close()
    with pytest.raises(TrainingError, match="cuda_graphs=true.*not on CUDA"):
        Trainer(tiny_cfg("trainer.cuda_graphs=true"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("preset", [[], ["model=seed_vae", "loss=vae"]])
def test_cuda_graph_steps_match_eager_steps(tiny_cfg, preset):
    """Warm-up, capture and replays give the eager path's losses (same seed, same batches)."""
    cuda = ["trainer.device=cuda", "trainer.precision=32", "trainer.compile=false", *preset]
    eager = _losses(tiny_cfg, *cuda, "trainer.cuda_graphs=false", steps=6)
    graph = _losses(tiny_cfg, *cuda, "trainer.cuda_graphs=true", steps=6)
    for step, (a, b) in enumerate(zip(eager, graph)):
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-5), f"step {step} {k}"
