"""infer.py with partial, noisy observations y = A(x_T) + σ_y ε (docs/method.md §6): the flags,
the observation spec an --observed .h5 file may carry, and the two-stage sampler
(physdiff.conditioning.sample_posterior_observed) run in the chunks of physdiff/chunks.py.

An --observed .h5 file may hold a dataset 'y' (M, *obs) with an optional dataset 'mask' and
attrs 'operator', 'obs_noise', 'channels', 'pool'; flags given on the command line override
them. With --data, y is made from the split's x_T: A(x_T) plus σ_y noise seeded by --seed.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from physdiff.chunks import busiest_seconds, chunk_generator, observation_chunks, shared_chunks
from physdiff.cli.common import (
    Progress,
    UsageError,
    comma_list,
    finite,
    non_negative,
    note,
    positive,
)
from physdiff.conditioning import sample_posterior_observed
from physdiff.distributed import SINGLE, World, agree
from physdiff.model import Model, read_split, reconstruct
from physdiff.observations import (
    AvgPool,
    ChannelSubset,
    Identity,
    Mask,
    Operator,
    check_observed,
)
from physdiff.systems import InferenceResult

__all__ = ["Observed", "add_arguments", "langevin_report", "problem", "run_observed"]

OPERATORS = ("identity", "mask", "channels", "pool")
OWNER = {"mask": "mask", "channels": "channels", "pool": "pool"}  # piece -> its operator
RHAT_WARN = 1.05


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("partial, noisy observations y = A(x_T) + σ_y ε")
    g.add_argument("--operator", choices=OPERATORS,
                   help="A: identity (default: full x_T), mask, channels or pool")
    g.add_argument("--mask", type=Path, help="with --operator mask: a 0/1 .npy of the state's "
                   "shape (C, H, W), or (H, W) shared by every channel (1 = observed)")
    g.add_argument("--channels", type=_ints, help="with --operator channels: e.g. 0,2")
    g.add_argument("--pool", type=positive(int),
                   help="with --operator pool: average over factor × factor blocks")
    g.add_argument("--obs-noise", type=_floats, help="σ_y in normalised units: one value, or "
                   "one per observed channel (comma-separated); > 0 with a partial operator")
    g.add_argument("--langevin-steps", type=non_negative(int),
                   help="Langevin steps of the x_T | y chains (default: the system's own; 0: "
                   "the exact draws of the Gaussian start alone, where the system has one)")


_ints = comma_list(finite(int))
_floats = comma_list(finite(float))


@dataclass(frozen=True)
class Piece:
    """One piece of the observation spec and where it came from (a flag, or the file)."""

    value: Any
    origin: str


@dataclass(frozen=True)
class Observed:
    """The observation problem: A, y (M, *obs) in normalised units, σ_y as given (scalar or per
    observed channel) and broadcast (`check_observed`), and what goes with them."""

    operator: Operator
    name: str
    y: Tensor
    sigma: float | Tensor
    sigma_b: Tensor
    condition: Tensor | None
    trajectories: Tensor | None
    source: str

    @property
    def full(self) -> bool:
        """A full noise-free observation: then y is x_T and the plain sampler runs."""
        return isinstance(self.operator, Identity) and bool((self.sigma_b == 0).all())

    @property
    def mask(self) -> Tensor | None:
        return self.operator.mask if isinstance(self.operator, Mask) else None


def _read_spec_file(path: Path) -> tuple[np.ndarray, dict[str, Piece], dict[str, Any]] | None:
    """An --observed .h5 file with a dataset 'y': (y, its spec pieces, its other datasets);
    None for a .npy or an .h5 file without 'y' (read as today)."""
    if path.suffix == ".npy" or not path.exists():
        return None
    where = f"--observed {path}"
    try:
        with h5py.File(path, "r") as f:
            if "y" not in f:
                return None
            other = [k for k in ("x_T", "x") if k in f]
            if other:
                raise UsageError(f"{where}: datasets 'y' and '{other[0]}'; expected one of them")
            pieces = {k: Piece(f.attrs[k], f"{where} (attr '{k}')")
                      for k in ("operator", "obs_noise", "channels", "pool") if k in f.attrs}
            if "mask" in f:
                pieces["mask"] = Piece(f["mask"][()], f"{where} (dataset 'mask')")
            extras = {k: f[k][()] for k in f
                      if k not in ("y", "mask") and isinstance(f[k], h5py.Dataset)}
            return f["y"][()], pieces, extras
    except OSError as err:
        raise UsageError(f"{where}: not a readable HDF5 file ({err})") from None


def _resolve(args: argparse.Namespace, pieces: dict[str, Piece]) -> tuple[str, dict[str, Piece]]:
    """The operator's name and the spec's pieces, flags over the file; one-line errors for
    pieces that belong to another operator and for missing ones."""
    pieces = dict(pieces)
    for key in ("operator", "mask", "channels", "pool", "obs_noise"):
        value = getattr(args, key)
        if value is not None:
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            pieces[key] = Piece(value, f"--{key.replace('_', '-')} {shown}")
    op = pieces.get("operator", Piece("identity", "--operator identity"))
    name = op.value.decode() if isinstance(op.value, bytes) else str(op.value)
    if name not in OPERATORS:
        raise UsageError(f"{op.origin}: unknown operator '{name}', expected one of {OPERATORS}")
    for key, owner in OWNER.items():
        if key in pieces and owner != name:
            raise UsageError(f"{pieces[key].origin}: only with --operator {owner} "
                             f"(the operator is {name})")
    if name in OWNER and name not in pieces:
        raise UsageError(f"{op.origin}: needs --{name} (or, in an --observed .h5 file, "
                         f"{'a dataset' if name == 'mask' else 'an attr'} '{name}')")
    return name, pieces


def _mask(piece: Piece, state_shape: tuple[int, ...]) -> Tensor:
    """A mask from --mask FILE.npy or the file's dataset, (H, W) lifted to (1, H, W)."""
    arr = piece.value
    if isinstance(arr, Path):
        try:
            arr = np.load(arr, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise UsageError(f"{piece.origin}: not a readable .npy array ({err})") from None
    arr = np.asarray(arr)
    if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.number)) or np.iscomplexobj(arr):
        raise UsageError(f"{piece.origin}: expected a 0/1 or boolean array, got {arr.dtype}")
    if arr.ndim == len(state_shape) - 1:
        arr = arr[None]  # one mask shared by every channel
    return torch.from_numpy(arr.astype(np.float32))


def _operator(name: str, pieces: dict[str, Piece], state_shape: tuple[int, ...]) -> Operator:
    """A from its name and pieces, checked against the state's shape."""
    piece = pieces.get(name, pieces.get("operator"))
    origin = piece.origin if piece is not None else "--operator identity"
    try:
        if name == "mask":
            op: Operator = Mask(_mask(pieces["mask"], state_shape))
        elif name == "channels":
            value = pieces["channels"].value
            value = _ints(value) if isinstance(value, str) else np.atleast_1d(value).tolist()
            op = ChannelSubset(value)
        elif name == "pool":
            op = AvgPool(int(pieces["pool"].value))
        else:
            op = Identity()
        op.observed_shape(state_shape)
    except (ValueError, argparse.ArgumentTypeError) as err:
        raise UsageError(f"{origin}: {err}") from None
    return op


def _noise(name: str, pieces: dict[str, Piece]) -> float | Tensor:
    """σ_y as given: a float, or a tensor of one value per observed channel; 0 if not given
    (a full observation only)."""
    piece = pieces.get("obs_noise")
    if piece is None:
        if name != "identity":
            raise UsageError(f"--obs-noise: required with --operator {name} (σ_y > 0 in "
                             "normalised units)")
        return 0.0
    values = np.atleast_1d(np.asarray(piece.value, dtype=np.float64))
    if values.ndim != 1 or not np.isfinite(values).all() or (values < 0).any() or (
            name != "identity" and (values <= 0).any()):
        raise UsageError(f"{piece.origin}: expected finite σ_y > 0 (one value, or one per "
                         "observed channel; 0 only for a full observation)")
    return float(values[0]) if values.size == 1 else torch.from_numpy(values)


def _observations(args: argparse.Namespace, model: Model, operator: Operator,
                  sigma: float | Tensor, noise: Piece | None, file: tuple | None
                  ) -> tuple[Tensor, Tensor | None, Tensor | None, str]:
    """(y, condition, the split's trajectories or None, source): y read from --observed, or
    made from the --data split's x_T as A(x_T) + σ_y ε with ε seeded by --seed."""
    system = model.system
    if args.data is not None:
        data = read_split(args.data, model, args.limit)
        x_T = data.x[:, -1]
        clean = operator(x_T)
        sig = _checked(operator, clean, sigma, tuple(system.state_shape), str(args.data),
                       noise)
        eps = torch.randn(clean.shape, generator=torch.Generator().manual_seed(args.seed))
        y = clean + sig.float() * eps
        y = operator(y) if isinstance(operator, Mask) else y  # unobserved entries stay 0
        return y, system.condition(data.extras, str(args.data)), data.x, str(args.data)
    source = f"--observed {args.observed}"
    if file is None:
        if not args.observed.exists():
            raise UsageError(f"{source}: no such file")
        try:
            arr, extras = np.load(args.observed, allow_pickle=False), {}
        except (OSError, ValueError) as err:
            raise UsageError(f"{source}: not a readable .npy array ({err})") from None
    else:
        arr, _, extras = file
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr) or arr.ndim == 0:
        raise UsageError(f"{source}: expected real numbers (M, *obs), got {arr.dtype} "
                         f"{arr.shape}")
    obs_shape = operator.observed_shape(tuple(system.state_shape))
    if len(obs_shape) == 3 and obs_shape[0] == 1 and arr.ndim == 3:
        arr = arr[:, None]  # single-channel observations given as (M, H, W)
    y = torch.from_numpy(np.asarray(arr, dtype=np.float32))
    condition = system.condition({k: torch.from_numpy(np.asarray(v))
                                  for k, v in extras.items()}, source)
    if condition is not None and condition.shape[0] != y.shape[0]:
        raise UsageError(f"{source}: {y.shape[0]} observations but {condition.shape[0]} "
                         "conditions")
    y, condition = y[:args.limit], None if condition is None else condition[:args.limit]
    if args.raw:  # the affine normalisation commutes with these linear A; unobserved stay 0
        y = model.normalise(y)
        y = operator(y) if isinstance(operator, Mask) else y
    return y, condition, None, source


def _checked(operator: Operator, y: Tensor, sigma: float | Tensor, state_shape: tuple[int, ...],
             source: str, noise: Piece | None = None) -> Tensor:
    """`check_observed`, its one-line ValueErrors prefixed with the flag or file at fault."""
    try:
        return check_observed(operator, y, sigma, state_shape)
    except ValueError as err:
        where = noise.origin if noise is not None and str(err).startswith("sigma") else source
        raise UsageError(f"{where}: {err}") from None


def problem(args: argparse.Namespace, model: Model) -> Observed | None:
    """The observation problem the flags and the --observed file describe, checked before any
    sampling; None for a plain full observation (no spec anywhere: the pipeline as before)."""
    file = None if args.observed is None else _read_spec_file(args.observed)
    name, pieces = _resolve(args, {} if file is None else file[1])
    if file is None and name == "identity" and not any(
            v > 0 for v in np.atleast_1d(pieces.get("obs_noise", Piece(0.0, "")).value)):
        _noise(name, pieces)  # a negative σ_y is still an error
        return None
    state_shape = tuple(model.system.state_shape)
    operator = _operator(name, pieces, state_shape)
    sigma = _noise(name, pieces)
    y, condition, trajectories, source = _observations(args, model, operator, sigma,
                                                       pieces.get("obs_noise"), file)
    sigma_b = _checked(operator, y, sigma, state_shape, source, pieces.get("obs_noise"))
    return Observed(operator, name, y, sigma, sigma_b, condition, trajectories, source)


def run_observed(args: argparse.Namespace, model: Model, obs: Observed, world: World = SINGLE
                 ) -> tuple[InferenceResult | None, float, float, dict[str, Tensor]]:
    """x_0 draws through p(x_T | y) (`sample_posterior_observed`), then the PF-ODE and the mean
    path from the posterior mean of the x_T draws, in chunks with their own seeds shared among
    the processes of a torchrun launch. Returns (result, s sampling, s ODE, the x_T draws (M, n,
    *state), split-R̂ (M, 3) and step sizes (M,)); on ranks other than 0 result is None."""
    system, device = model.system, next(model.score.parameters()).device
    if args.langevin_steps is None:
        args.langevin_steps = system.default_langevin_steps
    labels = system.report_times()
    keep = list(labels.values())
    n = args.n_samples or system.default_samples
    batch = args.batch_size or system.default_batch_size
    m = obs.y.shape[0]
    agree([float(obs.y.double().sum()), float(m)], f"the observations ({obs.source})", world)
    y = obs.y.to(device)
    condition = None if obs.condition is None else obs.condition.to(device)
    precondition = system.end_state_preconditioner(model, obs.operator, obs.sigma_b)
    chunks = observation_chunks(m, n, batch)
    if world.main:
        note(f"infer: {obs.operator!r}, σ_y {obs.sigma}: {args.langevin_steps} Langevin steps "
             f"for x_T | y, then the reverse SDE, {n} samples for each of {m} observations"
             + (f", {len(chunks)} chunks over {world.size} processes" if world.size > 1 else ""))
    bar = Progress("infer", -(-(len(chunks) - world.rank) // world.size)) if world.main else None

    def work(i: int) -> dict[str, Any]:
        sl, cs = chunks[i], None if condition is None else condition[chunks[i]]
        gen = chunk_generator(args.seed, i, device)
        t0 = time.perf_counter()
        samples, x_T, diag = sample_posterior_observed(
            model, obs.operator, y[sl], obs.sigma, n, gen, args.langevin_steps, args.noise, cs,
            batch, keep=keep, precondition=precondition)
        t1 = time.perf_counter()
        x_bar = x_T.mean(1)
        ode = reconstruct(model, x_bar, "ode", args.ode_method, batch, condition=cs, keep=keep)
        t2 = time.perf_counter()
        mean = reconstruct(model, x_bar, "mean", batch_size=batch, condition=cs, keep=keep)
        return {"samples": samples.cpu(), "x_T_samples": x_T.cpu(), "ode": ode.cpu(),
                "mean": mean.cpu(), "rhat": diag.rhat.cpu(), "step_size": diag.step_size.cpu(),
                "t_sde": t1 - t0, "t_ode": t2 - t1}

    parts = shared_chunks(len(chunks), work, world, None if bar is None else bar.update)
    if bar is not None:
        bar.close()
    if parts is None:
        return None, 0.0, 0.0, {}
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if not k.startswith("t_")}
    t_sde, t_ode = busiest_seconds(parts, ("t_sde", "t_ode"), world)
    x_T_mean = cat["x_T_samples"].mean(1).to(device)
    result = InferenceResult(
        model, x_T_mean, condition,
        {label: cat["samples"][:, :, i].to(device) for i, label in enumerate(labels)},
        {label: cat["ode"][:, i].to(device) for i, label in enumerate(labels)},
        {label: cat["mean"][:, i].to(device) for i, label in enumerate(labels)},
        noise=args.noise, seed=args.seed)
    extra = {k: cat[k] for k in ("x_T_samples", "rhat", "step_size")}
    return result, t_sde, t_ode, extra


def posterior_arrays(obs: Observed, extra: dict[str, Tensor]
                     ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """What posterior.h5 holds besides the samples for a partial observation: the x_T draws,
    y, the mask, and attrs naming the operator, σ_y and what the ODE and mean path start from."""
    arrays = {"x_T_samples": extra["x_T_samples"], "y": obs.y}
    if obs.mask is not None:
        arrays["mask"] = obs.mask
    sigma = obs.sigma if isinstance(obs.sigma, float) else np.asarray(obs.sigma.tolist())
    attrs = {"operator": obs.name, "operator_detail": repr(obs.operator), "obs_noise": sigma,
             "ode_from": "the posterior mean of x_T_samples (ode and mean_path)"}
    return arrays, attrs


def langevin_report(args: argparse.Namespace, extra: dict[str, Tensor]) -> dict[str, Any]:
    """The x_T | y chains' diagnostics, printed (with a warning when they disagree) and
    returned for metrics.json."""
    rhat, step = extra["rhat"], extra["step_size"]
    if args.langevin_steps == 0:
        print("x_T | y: exact draws of the Gaussian start (training end states' spectrum), "
              "no Langevin steps")
        return {"steps": 0}
    out = {"steps": args.langevin_steps, "max_rhat": float(rhat.max()),
           "max_rhat_per_statistic": dict(zip(("mean", "norm", "misfit"),
                                              rhat.amax(0).tolist(), strict=True)),
           "median_step_size": float(step.median())}
    print(f"Langevin x_T | y: {args.langevin_steps} steps, max split-R̂ {out['max_rhat']:.3f} "
          f"over {rhat.shape[0]} observations and {rhat.shape[1]} statistics, median step "
          f"size {out['median_step_size']:.3g}")
    if out["max_rhat"] > RHAT_WARN:
        print(f"warning: max R̂ {out['max_rhat']:.3f} > {RHAT_WARN}: chains did not agree: "
              "raise --langevin-steps")
    return out
