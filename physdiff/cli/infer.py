"""infer.py: posterior samples of earlier states given observed end states x_T.

Writes n reverse-SDE samples per observed state, the probability-flow ODE reconstruction and the
noise-free conditional-mean path at the times the system reports (x_0 and any others it
names), and, when the truth is known (a dataset split), a metrics table (printed and
metrics.json) and the system's figures.

Examples:
    python infer.py --checkpoint runs/demo/checkpoint.pt --data runs/demo/data/test.h5 --out runs/demo/posterior
    python infer.py --checkpoint runs/demo/checkpoint.pt --observed my_states.npy --out runs/mine

--observed takes a .npy array or an .h5 file with a dataset 'x_T' (or 'x') of shape (M, *state)
((M, H, W) is accepted for single-channel fields), plus the per-observation arrays the system
needs besides the state (e.g. obstacle geometry); in the normalised units of the training data unless --raw.

Partial, noisy observations y = A(x_T) + σ_y ε (docs/method.md §6): --operator mask / channels /
pool with --mask FILE.npy / --channels 0,2 / --pool 4, and --obs-noise σ_y (normalised units).
Then x_T is drawn from p(x_T | y) by Langevin chains (--langevin-steps; split-R̂ is reported),
the reverse SDE runs from each draw, and the PF-ODE and mean path start from the draws' mean.
--observed then holds y of the observed shape (.npy, or an .h5 dataset 'y' with an optional
dataset 'mask' and attrs operator, obs_noise, channels, pool that flags override); with --data,
y is A(x_T) of the split plus σ_y noise seeded by --seed:
    python infer.py --checkpoint C --data test.h5 --operator pool --pool 4 --obs-noise 0.02 --out D

Outputs in --out: posterior.h5 (samples (M, n, *state), ode, mean_path, observed, truth when
known, '_<label>' variants for further report times, reverse paths for small states,
ode_distance: each PF-ODE point's squared distance from the samples' mean over their spread,
about 1 normally, above 10 where the flow diverged and the observation is named; attrs
record the checkpoint, flags and code version; for a partial observation x_T_samples, y, mask
and attrs operator, obs_noise instead of observed), metrics.json (with 'langevin' diagnostics),
and the system's figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from physdiff import metrics
from physdiff.chunks import busiest_seconds, chunk_generator, observation_chunks, shared_chunks
from physdiff.cli import infer_observed
from physdiff.cli.common import (
    Progress,
    UsageError,
    non_negative,
    note,
    positive,
    read_observed_h5,
    run,
)
from physdiff.distributed import SINGLE, World, agree, init
from physdiff.flow_correction import BLOW_UP
from physdiff.io import write_h5_atomic, write_text_atomic
from physdiff.lock import hold
from physdiff.model import (
    Model,
    check_observations,
    load_model,
    read_split,
    reconstruct,
    sample_posterior,
    timed,
)
from physdiff.runtime import code_version, pick_device
from physdiff.systems import InferenceResult

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infer.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="dataset split (.h5): observe x_T, score vs truth")
    src.add_argument("--observed", type=Path, help="your own end states (.npy or .h5)")
    p.add_argument("--raw", action="store_true",
                   help="--observed is in raw units: normalise with the training statistics")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--limit", type=positive(int), help="use only the first N observations")
    p.add_argument("--n-samples", type=positive(int),
                   help="posterior samples per observation (default: the system's own)")
    p.add_argument("--noise", choices=["calibrated", "white"], default="calibrated",
                   help="reverse-step noise: calibrated residual spectra, or textbook g√dt")
    p.add_argument("--corrector-snr", type=non_negative(float), default=0.0,
                   help="Langevin corrector signal-to-noise ratio (0 = off)")
    p.add_argument("--ode-method", default="euler", choices=["euler", "midpoint", "rk4"])
    p.add_argument("--batch-size", type=positive(int),
                   help="samples integrated at once (default: the system's own)")
    p.add_argument("--system", help="the System class, if not the one the checkpoint records")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    infer_observed.add_arguments(p)
    return p


def load_observed(path: Path, state_shape: tuple[int, ...]
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Observed states (M, *state) from .npy or .h5, and an .h5 file's other datasets."""
    if not path.exists():
        raise UsageError(f"--observed {path}: no such file")
    extras: dict[str, Any] = {}
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise UsageError(f"--observed {path}: not a readable .npy array ({err})") from None
    else:
        arr, extras = read_observed_h5(path, all_extras=True)
    if len(state_shape) == 3 and state_shape[0] == 1 and arr.ndim == 3:
        arr = arr[:, None]  # single-channel fields given as (M, H, W)
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise UsageError(f"--observed {path}: complex numbers ({arr.dtype}); expected real "
                         "states")
    if arr.ndim >= 1 and arr.shape[0] == 0:
        raise UsageError(f"--observed {path}: no observations (shape {arr.shape})")
    if (arr.ndim != len(state_shape) + 1 or not np.issubdtype(arr.dtype, np.number)
            or tuple(arr.shape[1:]) != tuple(state_shape)):
        raise UsageError(f"--observed {path}: expected numbers of shape (M, "
                         f"{', '.join(map(str, state_shape))}) as the checkpoint was trained on, "
                         f"got {arr.dtype} {arr.shape}")
    return (torch.from_numpy(np.asarray(arr, dtype=np.float32)),
            {k: torch.from_numpy(np.asarray(v)) for k, v in extras.items()})


def observations(args: argparse.Namespace, model: Model
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, str]:
    """(x_T (M, *state), condition or None, the split's trajectories or None, source)."""
    if args.data is not None:
        data = read_split(args.data, model, args.limit)
        condition = model.system.condition(data.extras, str(args.data))
        return data.x[:, -1], condition, data.x, str(args.data)
    x_T, extras = load_observed(args.observed, tuple(model.system.state_shape))
    source = f"--observed {args.observed}"
    condition = model.system.condition(extras, source)
    if condition is not None and condition.shape[0] != x_T.shape[0]:
        raise UsageError(f"{source}: {x_T.shape[0]} states but {condition.shape[0]} conditions")
    x_T = x_T[:args.limit]
    condition = None if condition is None else condition[:args.limit]
    if args.raw:
        x_T = model.normalise(x_T)
    return x_T, condition, None, source


def run_samplers(args: argparse.Namespace, model: Model, x_T: torch.Tensor,
                 condition: torch.Tensor | None, world: World = SINGLE
                 ) -> tuple[InferenceResult | None, float, float]:
    """SDE samples, PF-ODE and mean path at the system's report times; (result, s SDE, s ODE).

    The observations go in chunks with their own seeds (physdiff/chunks.py), shared among the
    processes of a torchrun launch; rank 0 gets the whole result, the others None."""
    system = model.system
    labels = system.report_times()
    keep = list(labels.values())
    n = args.n_samples or system.default_samples
    batch = args.batch_size or system.default_batch_size
    chunks = observation_chunks(x_T.shape[0], n, batch)
    if world.main:
        note(f"infer: reverse SDE, {n} samples for each of {x_T.shape[0]} observations, then "
             "the probability-flow ODE and the conditional-mean path"
             + (f", {len(chunks)} chunks over {world.size} processes" if world.size > 1 else ""))
    bar = Progress("infer", -(-(len(chunks) - world.rank) // world.size)) if world.main else None

    def work(i: int) -> dict[str, Any]:
        sl = chunks[i]
        xs, cs = x_T[sl], None if condition is None else condition[sl]
        gen = chunk_generator(args.seed, i, x_T.device)
        kw = {"progress": False, "condition": cs}
        if system.keep_paths:  # small states: keep the whole reverse paths
            (_, paths), t_sde = timed(lambda: sample_posterior(
                model, xs, n, gen, args.noise, args.corrector_snr, batch, return_paths=True,
                **kw))
            samples = paths[:, :, keep]
        else:
            paths = None
            samples, t_sde = timed(lambda: sample_posterior(
                model, xs, n, gen, args.noise, args.corrector_snr, batch, keep=keep, **kw))
        ode, t_ode = timed(lambda: reconstruct(model, xs, "ode", args.ode_method, batch,
                                               condition=cs, keep=keep))
        mean = reconstruct(model, xs, "mean", batch_size=batch, condition=cs, keep=keep)
        return {"samples": samples.cpu(), "paths": None if paths is None else paths.cpu(),
                "ode": ode.cpu(), "mean": mean.cpu(), "t_sde": t_sde, "t_ode": t_ode}

    parts = shared_chunks(len(chunks), work, world, None if bar is None else bar.update)
    if bar is not None:
        bar.close()
    if parts is None:
        return None, 0.0, 0.0
    cat = {k: None if parts[0][k] is None else torch.cat([p[k] for p in parts]).to(x_T.device)
           for k in ("samples", "paths", "ode", "mean")}
    t_sde, t_ode = busiest_seconds(parts, ("t_sde", "t_ode"), world)

    def by_label(x: torch.Tensor, dim: int) -> dict[str, torch.Tensor]:
        return {label: x.select(dim, i) for i, label in enumerate(labels)}

    result = InferenceResult(model, x_T, condition, by_label(cat["samples"], 2),
                             by_label(cat["ode"], 1), by_label(cat["mean"], 1),
                             paths=cat["paths"], noise=args.noise, seed=args.seed)
    return result, t_sde, t_ode


def infer(args: argparse.Namespace) -> None:
    device = pick_device(args.device)  # a bad --device is refused before the lock or any work
    world = init(device)  # torchrun: the observations are shared among the processes
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    with hold(args.out, "infer.py") if world.main else contextlib.nullcontext():
        _infer(args, device, world)
    if world.size > 1:
        dist.destroy_process_group()


def _sample(args: argparse.Namespace, model: Model, device: torch.device, world: World
            ) -> tuple[InferenceResult | None, float, float, Tensor | None, str,
                       infer_observed.Observed | None, dict[str, Tensor]]:
    """Check the observations, then sample: (result or None off rank 0, s SDE, s ODE, the
    split's trajectories or None, source, the partial observation or None, its extras)."""
    observed = infer_observed.problem(args, model)
    if observed is not None and not observed.full:
        result, t_sde, t_ode, extra = infer_observed.run_observed(args, model, observed, world)
        return (result, t_sde, t_ode, observed.trajectories, observed.source, observed,
                extra)
    if observed is None:
        x_T, condition, trajectories, source = observations(args, model)
    else:  # a full noise-free observation given as 'y': it is x_T
        x_T, condition = observed.y, observed.condition
        trajectories, source = observed.trajectories, observed.source
    check_observations(x_T, model, source)
    agree([float(x_T.double().sum()), float(x_T.shape[0])], f"the observations ({source})",
          world)
    x_T = x_T.to(device)
    condition = None if condition is None else condition.to(device)
    result, t_sde, t_ode = run_samplers(args, model, x_T, condition, world)
    return result, t_sde, t_ode, trajectories, source, None, {}


def _infer(args: argparse.Namespace, device: torch.device, world: World = SINGLE) -> None:
    model = load_model(args.checkpoint, device, args.system)
    result, t_sde, t_ode, trajectories, source, observed, extra = _sample(
        args, model, device, world)
    if result is None:  # not rank 0: its chunks went to rank 0, which writes every file
        return
    labels = model.system.report_times()
    if trajectories is not None:
        result.trajectories = trajectories
        result.truth = {label: trajectories[:, k] for label, k in labels.items()}
    m, n = result.x_T.shape[0], next(iter(result.samples.values())).shape[1]
    print(f"{m} observations: {n} SDE samples each in {t_sde:.1f} s "
          f"({t_sde / (m * n) * 1e3:.2f} ms per sample), PF-ODE in {t_ode:.1f} s")
    result.report = {"observations": m, "n_samples": n, "seconds_per_sample": t_sde / (m * n),
                     "seconds_per_ode": t_ode / m}
    result.report |= ode_divergence(result, next(iter(labels)))
    if observed is None:
        write_posterior(args, model, result, source)
        result.exact = model.system.exact_posterior(result.x_T.cpu())  # None: no closed form
    else:
        write_posterior(args, model, result, source, *infer_observed.posterior_arrays(
            observed, extra))
        result.report["langevin"] = infer_observed.langevin_report(args, extra)
        result.exact = model.system.exact_observed_posterior(
            observed.operator, observed.y.cpu(), observed.sigma_b)
    if result.exact is not None:  # one draw of exact samples for the metrics and the figures
        result.exact_samples = result.exact.sample(
            n, torch.Generator().manual_seed(args.seed)).float()
    held_out = args.checkpoint.parent / "calibration.json"
    if held_out.exists():  # the training run's held-out calibration check, repeated here
        result.report["held_out_check"] = json.loads(held_out.read_text())
        check = result.report["held_out_check"]
        print(f"held-out check of this model: {check['verdict']}")
        if "ode_verdict" in check:
            print(f"held-out check of this model: {check['ode_verdict']}")
    if result.truth is not None:
        result.report |= report(model, result)
        print_table(result.report)
    write_text_atomic(args.out / "metrics.json", json.dumps(result.report, indent=2) + "\n")
    note(f"infer: figures into {args.out}")
    written = model.system.figures(args.out, result)
    print(f"wrote {args.out / 'posterior.h5'}, metrics.json" +
          "".join(f", {name}" for name in written))


def ode_divergence(result: InferenceResult, label: str) -> dict[str, Any]:
    """Observations whose PF-ODE reconstruction at `label` lies more than BLOW_UP times the
    posterior samples' spread from their mean (metrics.distance_over_spread; about 1 for a
    point among the samples): the flow diverged there (a rare state for a learned score; the
    SDE samples and the mean path do not compound its errors). Named on stdout; the
    per-observation ratio goes into posterior.h5 as ode_distance."""
    samples = result.samples[label]
    if samples.shape[1] < 2:
        return {}
    ratio = metrics.distance_over_spread(result.ode[label].cpu(), samples.cpu())
    result.ode_distance = ratio.float()
    far = torch.nonzero(~(ratio <= BLOW_UP)).flatten().tolist()  # NaN counts as diverged
    if far:
        shown = ", ".join(map(str, far[:10])) + (", ..." if len(far) > 10 else "")
        print(f"PF-ODE diverged on {len(far)} of {ratio.shape[0]} observations (more than "
              f"{BLOW_UP:g} x the samples' spread from their mean: {shown}); use the samples "
              "or the mean path there")
    return {"ode_diverged": far}


def _suffix(label: str) -> str:
    return "" if label == "0" else f"_{label}"


def write_posterior(args: argparse.Namespace, model: Model, result: InferenceResult,
                    source: str, observed: dict[str, Tensor] | None = None,
                    attrs: dict[str, Any] | None = None) -> None:
    """posterior.h5: the samples, ODE and mean path per report time, and the observed x_T, or
    for a partial observation the arrays and attrs of `observed` / `attrs` instead."""
    arrays = {"observed": result.x_T} if observed is None else dict(observed)
    for label in result.samples:
        arrays |= {f"samples{_suffix(label)}": result.samples[label],
                   f"ode{_suffix(label)}": result.ode[label],
                   f"mean_path{_suffix(label)}": result.mean_path[label]}
        if result.truth is not None:
            arrays[f"truth{_suffix(label)}"] = result.truth[label]
    if result.paths is not None:
        arrays["paths"] = result.paths
    if result.ode_distance is not None:
        arrays["ode_distance"] = result.ode_distance
    if result.condition is not None:
        arrays["condition"] = result.condition
    times = {label: k * model.meta.dt for label, k in model.system.report_times().items()}
    write_h5_atomic(args.out / "posterior.h5", arrays, {
        "checkpoint": str(args.checkpoint), "source": source, "times": json.dumps(times),
        "flags": json.dumps({k: str(v) for k, v in vars(args).items()}),
        "version": code_version(), "norm_mean": model.meta.norm_mean,
        "norm_std": model.meta.norm_std, **(attrs or {})})


def report(model: Model, result: InferenceResult) -> dict[str, Any]:
    """The system's metrics of every reconstruction, one row per method and report time; the
    headline time's rows are named sde / ode / mean_path, the others '<row> t=<time>'."""
    system, truth, x_T = model.system, result.truth, result.x_T.cpu()
    assert truth is not None
    cond = None if result.condition is None else result.condition.cpu()
    paths = None if result.paths is None else result.paths.cpu().flatten(0, 1)
    out: dict[str, Any] = {}
    for i, (label, k) in enumerate(system.report_times().items()):
        name = (lambda row: row) if i == 0 else (
            lambda row, t=k * model.meta.dt: f"{row} t={t:.2f}")
        kw = {"condition": cond, "index": k}
        x = truth[label].cpu()
        out[name("sde")] = system.evaluate(x, x_T, samples=result.samples[label].cpu(),
                                           exact=result.exact if k == 0 else None,
                                           paths=paths, **kw)
        out[name("ode")] = system.evaluate(x, x_T, point=result.ode[label].cpu(), **kw)
        out[name("mean_path")] = system.evaluate(x, x_T, point=result.mean_path[label].cpu(),
                                                 **kw)
        if k == 0 and result.exact is not None:
            out["exact_mean"] = system.evaluate(x, x_T, point=result.exact.mean[:, None], **kw)
            out["exact_samples"] = system.evaluate(x, x_T,
                                                   samples=result.exact_samples[:, :, None],
                                                   exact=result.exact, **kw)
        if k == 0 and result.trajectories is not None:
            reference = system.evaluate_reference(x, x_T, result.trajectories)
            if reference is not None:
                out["truth"] = reference
    return out


def print_table(report_: dict[str, Any]) -> None:
    """The scalar metrics as a table (one row per method), then per-band rows (keys with a
    space, e.g. 'var_ratio [0,2)'), then calibration figures with the data's reference."""
    rows = {name: row for name, row in report_.items()
            if isinstance(row, dict) and name not in ("held_out_check", "langevin")}
    check = report_.get("held_out_check", {})
    # a reconstruction the held-out check found worse than a random posterior draw is named,
    # not printed as an answer (its numbers stay in metrics.json)
    unreliable = {name for name in rows if name.split()[0] == "ode"
                  and check.get("ode_reliable") is False}
    keys = [k for k in dict.fromkeys(k for row in rows.values() for k in row)
            if " " not in k and not k.startswith(("coverage", "sbc", "energy", "momentum"))]
    w = max(16, *(len(k) + 2 for k in keys))
    nw = max(14, *(len(n) + 2 for n in rows))
    print(f"{'':{nw}s}" + "".join(f"{k:>{w}s}" for k in keys))
    for name, row in rows.items():
        if name in unreliable:
            print(f"{name:{nw}s}  unreliable: {check['ode_verdict'].split(': ', 1)[1]}")
            continue
        print(f"{name:{nw}s}" + "".join(f"{row[k]:{w}.5f}" if k in row else " " * w
                                        for k in keys))
    bands = [k for k in rows.get("sde", {}) if " " in k]
    if bands:
        with_bands = [n for n in rows if bands[0] in rows[n] and n not in unreliable]
        print(f"{'':28s}" + "".join(f"{n:>16s}" for n in with_bands))
        for k in bands:
            print(f"  {k:26s}" + "".join(f"{rows[n][k]:16.3f}" for n in with_bands))
    extra = [k for k in rows.get("sde", {})
             if k.startswith(("coverage", "sbc", "energy", "momentum")) and " " not in k]
    for k in extra:
        ref = rows.get("truth", {}).get(k)
        print(f"  {k:26s}{rows['sde'][k]:16.4g}" + (f"   (data: {ref:.4g})" if ref else ""))
    if "exact_samples" in rows:
        print(f"  (coverage90 of {report_['n_samples']} exact samples is below 0.9 by design: the "
              "empirical interval of n draws holds a new draw with probability < 0.9)")


def main(argv: Sequence[str] | None = None) -> None:
    run(infer, parser(), argv)
