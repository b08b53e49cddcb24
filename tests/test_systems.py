"""The System registry and the generic pipelines: lazy imports, plug-ins by entry point or by
package.module:Class, one-line errors for unknown or broken ones, no system names in the
pipelines."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from physdiff import systems
from physdiff.systems.heat import HeatSystem

ROOT = Path(__file__).resolve().parents[1]


def test_builtin_names_resolve_to_their_classes() -> None:
    assert systems.get("heat") is HeatSystem
    assert {"heat", "nbody", "smoke"} <= set(systems.available())
    assert systems.get("physdiff.systems.heat:HeatSystem") is HeatSystem


@pytest.mark.parametrize(("spec", "words"), [
    ("banana", ["unknown system 'banana'", "heat"]),
    ("no_such_module_xyz:Thing", ["no_such_module_xyz", "cannot be loaded"]),
    ("physdiff.systems.heat:Missing", ["Missing", "cannot be loaded"]),
    ("physdiff.systems.heat:augment_periodic", ["not a physdiff.systems.System subclass"]),
])
def test_unknown_or_broken_system_is_one_clear_error(spec: str, words: list[str]) -> None:
    with pytest.raises(systems.SystemLoadError) as err:
        systems.get(spec)
    assert len(str(err.value).splitlines()) == 1
    for word in words:
        assert word in str(err.value)


def test_entry_point_plugin_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package that declares `[project.entry-points."physdiff.systems"]` is found by name."""
    (tmp_path / "toy_plugin.py").write_text(textwrap.dedent("""
        from physdiff.systems.heat import HeatSystem

        class ToySystem(HeatSystem):
            name = "toy"
    """))
    dist = tmp_path / "toy_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[physdiff.systems]\ntoy = toy_plugin:ToySystem\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = systems.get("toy")
    assert cls.__name__ == "ToySystem" and issubclass(cls, HeatSystem)
    assert "toy" in systems.available()


def test_generate_names_an_unknown_system_in_one_line(one_line_error: object,
                                                      tmp_path: Path) -> None:
    from physdiff.cli import generate

    err = one_line_error(generate.main, ["banana", "--out", str(tmp_path)])  # type: ignore[operator]
    assert "banana" in err


def test_heat_chain_does_not_import_phiflow(tmp_path: Path) -> None:
    """generate -> train -> infer on heat, and the library API, in a fresh process: PhiFlow and
    PhiML stay out of sys.modules (only a smoke run needs them)."""
    code = textwrap.dedent(f"""
        import sys
        from physdiff.cli import generate, infer, train
        import physdiff
        out = {str(tmp_path)!r}
        generate.main(["heat", "--n-train", "6", "--n-valid", "2", "--n-test", "2", "--size",
                       "8", "--steps", "3", "--t-final", "0.05", "--out", out + "/data"])
        train.main(["--data", out + "/data", "--out", out + "/run", "--preset", "tiny",
                    "--device", "cpu"])
        infer.main(["--checkpoint", out + "/run/checkpoint.pt", "--data",
                    out + "/data/test.h5", "--n-samples", "2", "--out", out + "/post",
                    "--device", "cpu"])
        physdiff.load(out + "/run/checkpoint.pt", device="cpu")
        print("PHI", sorted(m for m in sys.modules if m.split(".")[0] in ("phi", "phiml")))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=True)
    assert "PHI []" in done.stdout, done.stdout[-2000:]


GENERIC = ["physdiff/cli/generate.py", "physdiff/cli/train.py", "physdiff/cli/infer.py",
           "physdiff/cli/infer_observed.py",
           "physdiff/cli/common.py", "physdiff/model.py", "physdiff/api.py",
           "physdiff/samplers.py", "physdiff/losses.py", "physdiff/training.py",
           "physdiff/systems/base.py", "generate.py", "train.py", "infer.py"]


@pytest.mark.parametrize("path", GENERIC)
def test_generic_pipelines_name_no_system(path: str) -> None:
    """Whatever differs between systems is asked of the system, never decided by its name."""
    text = (ROOT / path).read_text()
    found = re.findall(r"\b(heat|nbody|smoke)\b", text)
    assert not found, f"{path} names systems: {sorted(set(found))}"


def test_heat_spread_is_the_sample_std_and_absent_for_one_sample() -> None:
    """Two samples x_0 ± d have an unbiased per-pixel std of d·√2; one sample has no spread, so
    the key is absent and no degrees-of-freedom warning is raised (pytest turns it into a
    failure below)."""
    import warnings

    import torch

    from physdiff.data import Metadata

    meta = Metadata(simulator="heat", dt=0.05, g=0.1, n_steps=4, seed=0, split="test",
                    norm_mean=0.0, norm_std=1.0, version="test", params={"exponent": 4.0})
    system = HeatSystem(meta, (1, 4, 4))
    x_0 = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    pair = torch.stack([x_0 - 0.3, x_0 + 0.3], 1)
    out = system.evaluate(x_0, system.forward_noise_free(x_0), samples=pair)
    assert out["spread"] == pytest.approx(0.3 * 2 ** 0.5, rel=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = system.evaluate(x_0, system.forward_noise_free(x_0), samples=pair[:, :1])
    assert "spread" not in one and one["mse_per_sample"] == pytest.approx(0.09, rel=1e-5)
