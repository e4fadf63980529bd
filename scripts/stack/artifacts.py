"""sam build (arm64): the toolchain it needs, and the check that every function has an ELF
aarch64 bootstrap in .aws-sam/build."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from .common import ROOT, VENV_BIN, StackError, require_tool
from .supervisor import Supervisor
from .template import functions


ARM64_TARGET = "aarch64-unknown-linux-gnu"
SAM_BUILD_DIR = ROOT / ".aws-sam" / "build"
EM_AARCH64 = 183


def elf_machine(path: Path) -> str:
    """'aarch64', 'x86_64', another e_machine number, or why the file is not a 64-bit ELF."""
    with open(path, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return "not an ELF file"
    if header[4] != 2:
        return "not a 64-bit ELF file"
    machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    return {EM_AARCH64: "aarch64", 62: "x86_64"}.get(machine, f"e_machine {machine}")


def check_sam_artifacts(template: dict[str, Any], build_dir: Path = SAM_BUILD_DIR) -> list[str]:
    """Every function of the template has an aarch64 `bootstrap` in the build directory."""
    problems = []
    for logical_id in functions(template):
        bootstrap = build_dir / logical_id / "bootstrap"
        if not bootstrap.is_file():
            problems.append(f"{bootstrap.relative_to(ROOT)} is missing")
            continue
        machine = elf_machine(bootstrap)
        if machine != "aarch64":
            problems.append(f"{bootstrap.relative_to(ROOT)} is {machine}, not aarch64")
        elif not os.access(bootstrap, os.X_OK):
            problems.append(f"{bootstrap.relative_to(ROOT)} is not executable")
    return problems


def ensure_arm64_toolchain(sup: Supervisor, env: dict[str, str]) -> None:
    """The aarch64 Rust target (rustup) and zig (the `ziglang` package in .venv, which cargo
    lambda runs as `python3 -m ziglang` when the venv is first on PATH)."""
    rustup = require_tool("rustup", "install Rust with rustup (https://rustup.rs)")
    installed = subprocess.run([rustup, "target", "list", "--installed"], env=env, cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split()
    if ARM64_TARGET not in installed:
        print(f"stack: rustup target add {ARM64_TARGET}", flush=True)
        if sup.run("rustup target add", [rustup, "target", "add", ARM64_TARGET], env=env) != 0:
            raise StackError(f"rustup target add {ARM64_TARGET} failed")
    zig = subprocess.run([str(VENV_BIN / "python"), "-m", "ziglang", "version"], env=env, cwd=ROOT,
                         capture_output=True, text=True)
    if zig.returncode != 0:
        raise StackError("zig is not available (`.venv/bin/python -m ziglang version` failed): "
                         "scripts/dev installs it from requirements.txt (ziglang, a dependency of cargo-lambda)")
    if not (VENV_BIN / "cargo-lambda").exists():
        raise StackError("cargo-lambda is not installed in .venv: run scripts/dev, which installs requirements.txt")
    print(f"stack: Rust target {ARM64_TARGET} installed; zig {zig.stdout.strip()} (.venv, ziglang); "
          f"cargo-lambda {VENV_BIN / 'cargo-lambda'}", flush=True)
