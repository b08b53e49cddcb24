#!/usr/bin/env python3
"""Heat posterior sampler speed: the reverse SDE with calibrated spectral noise
(`physdiff.model.sample_posterior`) on a heat-32 model, old path vs new path, one thread.

Trains nothing: the network is the heat-32 benchmark architecture (PeriodicScoreNet, width 16,
depth 1, spectral branch) with random weights (PyTorch's initialisation, and small random
weights in the output conv and the spectral layer, which start at zero), the noise calibration
is measured with it on a tiny simulated dataset (`residual_spectra`), and the observations are
that dataset's end states. (Untrained, the reverse physics 2x − S(x) is not held back by the
score and the samples grow large: compare old and new relative to max |x|.) Both paths draw the
same samples from the same seed, up to float rounding (the noise's FFTs changed):

- old: the code before this benchmark (commit 11d85a6): `euler_maruyama` under `no_grad` on the
  whole batch, the network evaluated on the whole batch at once (`chunk = None`), and the
  spectral noise as it was (full complex FFTs, the float64 calibration promoting each step's
  noise to complex128, the amplitude moved to the device every step), kept below;
- new: `sample_posterior` as it is now (inference mode, the network in cache-sized chunks,
  half-plane noise in float32 prepared once).

Prints a table and writes JSON. Run it with one thread:

Example:
    OMP_NUM_THREADS=1 python benchmarks/heat_sampler_speed.py
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from common import ROOT, mean_seconds, print_table
from torch import Tensor

from physdiff.data import Metadata
from physdiff.io import write_text_atomic
from physdiff.model import Model, sample_posterior
from physdiff.noise import residual_spectra, spectral_noise
from physdiff.runtime import code_version
from physdiff.samplers import Noise, euler_maruyama, randn_like, repeat_samples
from physdiff.systems import for_data
from physdiff.systems.heat import HeatSystem
from simulators import heat


def spectral_noise_before(spectra: Tensor) -> Noise:
    """physdiff.noise.spectral_noise as of commit 11d85a6 (the old path)."""
    amplitude = spectra.sqrt()
    n_steps = spectra.shape[0]

    def noise(x: Tensor, i: int, generator: torch.Generator | None) -> Tensor:
        h, w = x.shape[-2:]
        z = randn_like(x, generator)
        amp = amplitude[n_steps - 1 - i].to(device=x.device)
        return torch.fft.ifft2(amp * torch.fft.fft2(z) / math.sqrt(h * w)).real.to(x.dtype)

    return noise


def build(args: argparse.Namespace) -> tuple[Model, Tensor]:
    """A heat model of the benchmark architecture with random weights, calibrated on a tiny
    simulated dataset; and observations x_T (B, 1, H, W)."""
    torch.manual_seed(args.seed)
    s, k = args.size, args.steps
    meta = Metadata(simulator="heat", dt=args.t_final / k, g=args.g, n_steps=k, seed=args.seed,
                    split="train", norm_mean=0.0, norm_std=1.0, version=code_version(),
                    params={"exponent": 4.0, "size": s, "t_final": args.t_final})
    system = for_data(meta, (1, s, s))
    assert isinstance(system, HeatSystem)
    net = system.score_net(args.width, args.depth, spectral=True)
    with torch.no_grad():  # the output layers start at zero: give the score something to say
        for p in (*net.out.parameters(), *net.spectral.parameters()):
            p.normal_(0.0, 0.01)
    net.eval()
    gen = torch.Generator().manual_seed(args.seed)
    x_0 = heat.sample_prior(args.trajectories, s, s, 4.0, gen)
    x_0 = ((x_0 - x_0.mean()) / x_0.std())[:, None]
    traj = heat.rollout(x_0, k, meta.dt, meta.g, gen).float()
    model = Model(net, system, meta, None, {"width": args.width, "depth": args.depth,
                                            "spectral": True})
    model.noise_spectra = residual_spectra(model.drift(), traj, meta.times(), meta.dt)
    return model, traj[:, -1]


def old_path(model: Model, x_T: Tensor, n: int, seed: int) -> Tensor:
    """The reverse SDE as sample_posterior ran it for heat before (one batch of B·n)."""
    chunk = model.score.chunk
    model.score.chunk = None
    try:
        with torch.no_grad():
            x = euler_maruyama(model.drift(c=1.0), repeat_samples(x_T, n),
                               model.times(x_T.device), model.meta.g,
                               torch.Generator().manual_seed(seed),
                               spectral_noise_before(model.noise_spectra))
    finally:
        model.score.chunk = chunk
    return x.reshape(x_T.shape[0], n, *x.shape[1:])


def new_path(model: Model, x_T: Tensor, n: int, seed: int) -> Tensor:
    return sample_posterior(model, x_T, n, torch.Generator().manual_seed(seed),
                            batch_size=x_T.shape[0] * n)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=32, help="reverse steps K")
    p.add_argument("--t-final", type=float, default=0.2)
    p.add_argument("--g", type=float, default=0.1)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=1)
    p.add_argument("--batch", type=int, default=512, help="samples integrated at once")
    p.add_argument("--trajectories", type=int, default=16, help="tiny dataset: calibration "
                   "and observations (batch = trajectories × samples per observation)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="print torch.profiler's table of "
                   "the new path")
    return p


def main() -> None:
    p = parser()
    args = p.parse_args()
    if args.batch % args.trajectories:
        p.error("--batch must be a multiple of --trajectories")
    model, x_T = build(args)
    n = args.batch // args.trajectories
    old, new = old_path(model, x_T, n, 1), new_path(model, x_T, n, 1)
    diff = (old - new).abs().max().item()
    x = repeat_samples(x_T, n)
    t = model.times(x.device)[:1].expand(x.shape[0])
    with torch.no_grad():
        chunked = model.score(x, t)
        model.score.chunk = None
        whole = model.score(x, t)
        model.score.chunk = type(model.score).chunk
    noises = [make(model.noise_spectra)(x, 0, torch.Generator().manual_seed(2))
              for make in (spectral_noise_before, spectral_noise)]
    noise_diff = ((noises[0] - noises[1]).abs().max() / noises[0].abs().max()).item()
    seconds = {"old": mean_seconds(lambda: old_path(model, x_T, n, 1), args.repeats),
               "new": mean_seconds(lambda: new_path(model, x_T, n, 1), args.repeats)}
    rows = {f"{name} path": {"ms": sec * 1e3 / args.batch, "batch_s": sec}
            for name, sec in seconds.items()}
    print(f"heat-{args.size}, width {args.width} depth {args.depth}, batch {args.batch}, "
          f"{args.steps} reverse steps, {torch.get_num_threads()} thread(s)")
    print_table(rows, [("ms", "ms/sample", "{:.2f}"), ("batch_s", "s/batch", "{:.2f}")],
                name_width=12)
    speedup = seconds["old"] / seconds["new"]
    scale = old.abs().max().item()
    print(f"speed-up {speedup:.2f}x; samples old vs new: max |diff| {diff:.3g} "
          f"(max |x| {scale:.3g}); network chunked vs whole batch bit-identical: "
          f"{torch.equal(chunked, whole)}; one noise draw old vs new: max |diff| / max |n| "
          f"{noise_diff:.3g}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            new_path(model, x_T, n, 1)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    value = rows["new path"]["ms"]
    targets = [{"name": f"heat-{args.size} ms per posterior sample, one thread",
                "value": value, "target": "<= 15", "met": value <= 15}]
    print(f"{targets[0]['name']}: {value:.2f} (target {targets[0]['target']})")
    out = ROOT / "benchmarks/results/heat-sampler/speed.json"
    command = "python benchmarks/heat_sampler_speed.py " + " ".join(
        f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')} {v}"
        for k, v in vars(args).items() if v is not False)
    write_text_atomic(out, json.dumps({
        "ms_per_sample": {name: row["ms"] for name, row in rows.items()},
        "seconds_per_batch": seconds, "speedup": speedup,
        "max_abs_diff_old_new": diff, "max_abs_sample": scale,
        "noise_max_rel_diff_old_new": noise_diff,
        "network_chunked_bit_identical": torch.equal(chunked, whole),
        "version": code_version(), "command": command,
        "torch_threads": torch.get_num_threads(), "flags": vars(args), "targets": targets},
        indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
