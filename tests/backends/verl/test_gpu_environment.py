"""The GPU environment: envs/gpu.yaml (what Snakemake builds for the verl and vLLM rules) and
envs/gpu.lock.txt (its exact resolution, `make gpu-lock`) agree with each other and with the package
metadata of the verl 0.9.1 installed here.

verl is installed in the test environment without its GPU extras, but its metadata carries the pins of
every extra (verl[vllm]: torch, vllm, transformers), so the lock can be checked against it on CPU.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[3]
GPU_YAML = ROOT / "envs" / "gpu.yaml"
GPU_LOCK = ROOT / "envs" / "gpu.lock.txt"
GPU_LOCK_ENV = ROOT / "envs" / "gpu.lock.yaml"  # what the GPU rules' `conda:` names
# The GPU path runs verl's trainer on TransferQueue; the tests run that hand-off on CPU with these
# packages from the test environment, so they must be the versions the GPU environment gets.
SHARED_WITH_TESTS = ("verl", "transferqueue", "tensordict", "ray")
# Minimum NVIDIA driver branch (Linux) per CUDA major version.
DRIVER_FOR_CUDA = {12: "R525", 13: "R580"}


def gpu_env() -> dict:
    return yaml.safe_load(GPU_YAML.read_text())


def pip_requirements(env: dict) -> list[Requirement]:
    for dep in env["dependencies"]:
        if isinstance(dep, dict) and "pip" in dep:
            return [Requirement(line) for line in dep["pip"]]
    raise AssertionError(f"{GPU_YAML} has no pip section")


def conda_python(env: dict) -> str:
    for dep in env["dependencies"]:
        if isinstance(dep, str) and re.fullmatch(r"python\s*=+\s*[\d.]+", dep):
            return re.split(r"=+", dep, maxsplit=1)[1].strip()
    raise AssertionError(f"{GPU_YAML} does not pin python")


def read_lock(text: str) -> dict[str, Version]:
    """name -> version of a uv-compiled requirements file; every line must be an exact pin."""
    pins: dict[str, Version] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;@]+)", line)
        assert match, f"{GPU_LOCK.name}:{number}: not an exact pin without markers: {raw!r}"
        name = canonicalize_name(match[1])
        assert name not in pins, f"{GPU_LOCK.name}:{number}: {name} pinned twice"
        pins[name] = Version(match[2])
    return pins


def lock_header_option(text: str, option: str) -> str:
    match = re.search(rf"^#.*uv pip compile .*{option} (\S+)", text, re.MULTILINE)
    assert match, f"{GPU_LOCK.name} does not say which {option} it was resolved for"
    return match[1]


@pytest.fixture(scope="module")
def lock_text() -> str:
    assert GPU_LOCK.exists(), f"{GPU_LOCK} is missing: run `make gpu-lock`"
    return GPU_LOCK.read_text()


@pytest.fixture(scope="module")
def lock(lock_text) -> dict[str, Version]:
    return read_lock(lock_text)


def lock_environment(lock_text: str, extra: str = "") -> dict[str, str]:
    """The marker environment of the lock's target: its Python, Linux x86_64."""
    python = lock_header_option(lock_text, "--python-version")
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": extra,
    }


def requirements_of(dist: str, extras: set[str], env: dict[str, str]) -> list[Requirement]:
    """The requirements of dist[extras] that apply on the target, extras of itself followed
    (verl[vllm] requires verl[verl-core])."""
    own = canonicalize_name(dist)
    todo, done, out = set(extras) | {""}, set(), []
    while todo:
        extra = todo.pop()
        done.add(extra)
        for req in map(Requirement, metadata.requires(dist) or []):
            if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
                continue
            if canonicalize_name(req.name) == own:
                todo |= set(req.extras) - done
            elif req not in out:
                out.append(req)
    return out


def test_every_gpu_yaml_requirement_is_in_the_lock(lock):
    reqs = pip_requirements(gpu_env())
    assert any(canonicalize_name(r.name) == "verl" and "vllm" in r.extras for r in reqs)
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in lock, f"{req} (envs/gpu.yaml) is not in {GPU_LOCK.name}: run `make gpu-lock`"
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"{GPU_LOCK.name} has {name}=={lock[name]}, envs/gpu.yaml asks for {req}: run `make gpu-lock`"
        )


def test_lock_is_for_the_gpu_yaml_python_on_linux_x86_64(lock_text):
    python = conda_python(gpu_env())
    assert python == "3.11"
    assert lock_header_option(lock_text, "--python-version") == python
    platform = lock_header_option(lock_text, "--python-platform")
    assert re.fullmatch(r"x86_64-manylinux_2_\d+", platform), platform


def test_lock_satisfies_verl_metadata(lock, lock_text):
    """torch, vllm and transformers are exactly what verl 0.9.1 pins for its vllm extra, and every
    other requirement of verl[vllm] on the target is in the lock within verl's range."""
    assert metadata.version("verl") == "0.9.1" and lock["verl"] == Version("0.9.1")
    reqs = requirements_of("verl", {"vllm"}, lock_environment(lock_text))
    pins = {canonicalize_name(r.name): r for r in reqs if any(s.operator == "==" for s in r.specifier)}
    for name in ("torch", "vllm", "transformers", "torchvision"):
        assert name in pins, f"verl's metadata no longer pins {name} for verl[vllm]"
        (spec,) = [s for s in pins[name].specifier if s.operator == "=="]
        assert lock[name] == Version(spec.version), f"lock {name}=={lock[name]}, verl[vllm] pins {pins[name]}"
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in lock, f"verl[vllm] requires {req}, missing from {GPU_LOCK.name}"
        assert req.specifier.contains(lock[name], prereleases=True), f"lock {name}=={lock[name]} vs verl's {req}"


def test_lock_is_closed_under_its_packages_requirements_known_here(lock, lock_text):
    """Packages installed in the test environment at the lock's version: their own requirements on the
    target are in the lock too (the lock names everything that gets installed)."""
    env = lock_environment(lock_text)
    checked = 0
    for name, version in lock.items():
        try:
            if Version(metadata.version(name)) != version:
                continue
        except metadata.PackageNotFoundError:
            continue
        checked += 1
        for req in requirements_of(name, set(), env):
            dep = canonicalize_name(req.name)
            assert dep in lock, f"{name}=={version} requires {req}, missing from {GPU_LOCK.name}"
            assert req.specifier.contains(lock[dep], prereleases=True), f"{name} requires {req}, lock has {lock[dep]}"
    assert checked >= 50


def test_hand_off_tests_run_the_locked_transfer_queue_stack(lock):
    """The CPU tests of the trainer hand-off exercise the same verl, TransferQueue, tensordict and Ray
    as the GPU environment."""
    for name in SHARED_WITH_TESTS:
        assert Version(metadata.version(name)) == lock[name], (
            f"tests run {name} {metadata.version(name)}, the GPU lock has {lock[name]}"
        )


def test_driver_note_matches_the_locked_cuda(lock):
    """The comment at the top of envs/gpu.yaml names the CUDA major of the locked wheels and its
    minimum driver branch."""
    cuda = lock["cuda-toolkit"].major
    assert any(name.endswith(f"-cu{cuda}") for name in lock), f"no -cu{cuda} NVIDIA wheels in the lock"
    header = "".join(line for line in GPU_YAML.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert f"CUDA {cuda}" in header and f"{DRIVER_FOR_CUDA[cuda]} or newer" in header, (
        f"envs/gpu.yaml must say the locked wheels need CUDA {cuda} (driver {DRIVER_FOR_CUDA[cuda]} or newer)"
    )


def test_the_conda_environment_of_the_gpu_rules_is_exactly_the_lock(lock):
    """envs/gpu.lock.yaml (built by Snakemake's --sdm conda for train_verl and predict_vllm) has
    envs/gpu.yaml's channels and conda packages, and as its pip list every pin of the lock, nothing else."""
    built, source = yaml.safe_load(GPU_LOCK_ENV.read_text()), gpu_env()
    assert built["channels"] == source["channels"]
    conda_part = lambda env: [d for d in env["dependencies"] if not isinstance(d, dict)]  # noqa: E731
    assert conda_part(built) == conda_part(source)
    pins = {}
    for req in pip_requirements(built):
        (spec,) = req.specifier
        assert spec.operator == "==" and not req.extras and req.marker is None, f"{req} is not an exact pin"
        pins[canonicalize_name(req.name)] = Version(spec.version)
    assert len(pins) == len(pip_requirements(built))
    assert pins == lock, f"{GPU_LOCK_ENV.name} differs from {GPU_LOCK.name}: run `make envs/gpu.lock.yaml`"


def test_lock_reader_rejects_loose_lines():
    assert read_lock("a==1.0  # via b\n# comment\n\nB_c==2.0rc1\n") == {"a": Version("1.0"), "b-c": Version("2.0rc1")}
    for bad in ("a>=1.0\n", "a==1.0 ; sys_platform == 'win32'\n", "-e .\n", "a @ https://x/a.whl\n"):
        with pytest.raises(AssertionError):
            read_lock(bad)
