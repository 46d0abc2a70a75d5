"""The package installs as one: the wheel's metadata lists the runtime dependencies, the extras and
the console scripts, the Hydra configs ship inside it, requirements.txt pins exactly what
pyproject.toml declares, and the console scripts do what the checkout's scripts do."""

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
SCRIPTS = {"dcgmm-train": "train", "dcgmm-evaluate": "evaluate", "dcgmm-sample": "sample"}


def pins() -> dict[str, str]:
    """``requirements.txt`` as {canonical name: pinned version}; every line but ``-e .`` is ``name==version``."""
    pinned = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line == "-e .":
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        assert match, f"requirements.txt: {line!r} is not name==version"
        pinned[canonicalize_name(match.group(1))] = match.group(2)
    return pinned


def declared(extras: tuple[str, ...] = ("dev", "docs")) -> list[Requirement]:
    """The runtime dependencies and those of ``extras`` (the self-reference ``dcgmm[docs]`` left out)."""
    reqs = [Requirement(text) for text in PROJECT["dependencies"]]
    for extra in extras:
        reqs += [Requirement(text) for text in PROJECT["optional-dependencies"][extra] if not text.startswith("dcgmm[")]
    return reqs


def test_requirements_pin_exactly_what_the_package_declares():
    pinned = pins()
    reqs = declared()
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is declared in pyproject.toml but not pinned in requirements.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), f"requirements.txt pins {req.name}=={pinned[name]}, outside {req}"
    unused = set(pinned) - {canonicalize_name(req.name) for req in reqs}
    assert not unused, f"requirements.txt pins packages pyproject.toml does not declare: {sorted(unused)}"
    assert "rich" not in pinned


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the package's sources (nothing written into the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = out.glob("dcgmm-*.whl")
    return path


def test_the_wheel_lists_dependencies_extras_and_console_scripts(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(archive.read(metadata).decode())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entries = archive.read(entry_points).decode()
    requires = [Requirement(text) for text in meta.get_all("Requires-Dist")]
    runtime = {canonicalize_name(r.name) for r in requires if r.marker is None}
    for req in PROJECT["dependencies"]:
        assert canonicalize_name(Requirement(req).name) in runtime, f"the wheel does not require {req}"
    for name in ("torch", "lightning", "hydra-core", "wandb", "scikit-learn"):
        assert name in runtime
    assert {"dev", "docs", "peers"} <= set(meta.get_all("Provides-Extra"))
    extra_of = {canonicalize_name(r.name): str(r.marker) for r in requires if r.marker is not None}
    assert 'extra == "peers"' in extra_of["spflow"] and 'extra == "docs"' in extra_of["mkdocs"] and 'extra == "dev"' in extra_of["pytest"]
    for script, module in SCRIPTS.items():
        assert re.search(rf"^{script} = dcgmm\.app\.entrypoints\.{module}:main$", entries, flags=re.M), f"{script} is not a console script"
    assert re.search(r"^dcgmm-results = dcgmm\.results\.launch:main$", entries, flags=re.M), "dcgmm-results is not a console script"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "LICENSE is not in the wheel"


def test_the_wheel_ships_every_config(wheel):
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if n.startswith("dcgmm/conf/")}
    configs = {f"dcgmm/conf/{p.relative_to(ROOT / 'src' / 'dcgmm' / 'conf').as_posix()}" for p in (ROOT / "src" / "dcgmm" / "conf").rglob("*.yaml")}
    assert configs and configs <= shipped, f"configs missing from the wheel: {sorted(configs - shipped)[:5]}"
    assert "dcgmm/conf/train.yaml" in shipped and "dcgmm/conf/logger/wandb_online.yaml" in shipped


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_scripts_do_what_the_checkouts_scripts_do(tmp_path, script):
    """The installed console script and the checkout's script print the same composed job config."""
    console = Path(sys.executable).with_name(script)
    if not console.exists():
        pytest.fail(f"{console} is missing: install the package (make setup, or pip install -e .)")
    args = ["--cfg", "job", f"paths.log_dir={tmp_path}", "model=dcgmm3" if script == "dcgmm-train" else "ckpt_path=/some/model.ckpt", "data=fashion"]
    root_script = [sys.executable, f"{SCRIPTS[script]}.py"]
    outputs = [subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True, timeout=120) for cmd in ([str(console)], root_script)]
    for result in outputs:
        assert result.returncode == 0, result.stderr[-2000:]
    assert outputs[0].stdout == outputs[1].stdout
    assert "_target_" in outputs[0].stdout


def test_results_console_script_does_what_results_py_does(tmp_path):
    """``dcgmm-results`` and the checkout's ``results.py`` print the same plan of the tiny preset."""
    console = Path(sys.executable).with_name("dcgmm-results")
    if not console.exists():
        pytest.fail(f"{console} is missing: install the package (make setup, or pip install -e .)")
    args = ["preset=tiny", "mode=plan", f"out={tmp_path}"]
    outputs = [subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True, timeout=120) for cmd in ([str(console)], [sys.executable, "results.py"])]
    for result in outputs:
        assert result.returncode == 0, result.stderr[-2000:]
    assert outputs[0].stdout == outputs[1].stdout and "mnist/table_dcgmm2_s12345" in outputs[0].stdout
