"""checkov, the template's security scanner, on template.yaml as it is and with every
optional part on (EdgeProtection, CreateUserPool, and an AlarmEmail for the alarm topic)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from .common import LOCAL_DIR, ROOT, TEMPLATE, StackError, process_env
from .supervisor import Supervisor

# checkov (the template's security scanner) lives in an environment of its own: its exact
# boto3 pin and aws-sam-cli's cannot share one (scripts/checkov-requirements.txt says more).
CHECKOV_REQUIREMENTS = ROOT / "scripts" / "checkov-requirements.txt"
CHECKOV_VENV = LOCAL_DIR / "checkov-venv"


def ensure_checkov(sup: Supervisor) -> Path:
    """checkov from .local/checkov-venv, (re)installed when scripts/checkov-requirements.txt
    changed (a stamp holds the hash of what was installed, as scripts/dev does for .venv)."""
    import hashlib

    digest = hashlib.sha256(CHECKOV_REQUIREMENTS.read_bytes()).hexdigest()
    stamp = CHECKOV_VENV / ".requirements.sha256"
    checkov = CHECKOV_VENV / "bin" / "checkov"
    if checkov.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return checkov
    print(f"stack: installing checkov into {CHECKOV_VENV.relative_to(ROOT)} ({CHECKOV_REQUIREMENTS.name})", flush=True)
    python = CHECKOV_VENV / "bin" / "python"
    if not python.exists() and sup.run("venv", [sys.executable, "-m", "venv", str(CHECKOV_VENV)]) != 0:
        raise StackError(f"could not create {CHECKOV_VENV}")
    if sup.run("pip install checkov", [str(python), "-m", "pip", "install", "--disable-pip-version-check",
                                       "--no-input", "-q", "-r", str(CHECKOV_REQUIREMENTS)]) != 0:
        raise StackError(f"could not install {CHECKOV_REQUIREMENTS.name} into {CHECKOV_VENV}")
    stamp.write_text(digest + "\n")
    return checkov


# The "true"/"false" parameters that add resources: checkov evaluates conditions with the
# parameters' defaults, so what they add is scanned only in a copy where they default to "true".
OPTIONAL_PARTS = ("EdgeProtection", "CreateUserPool")
# The parameters whose empty default leaves resources out, with a value that adds them.
OPTIONAL_VALUES = {"AlarmEmail": "alarms@example.com"}


def all_parts_variant(template_text: str) -> str:
    """template.yaml with every OPTIONAL_PARTS parameter defaulting to "true" and every
    OPTIONAL_VALUES parameter to its value: the CloudFront and WAF resources, the Cognito user
    pool and the alarm topic and its key are scanned in this copy (they do not touch each
    other, so one copy serves all)."""
    text = template_text
    for name in OPTIONAL_PARTS:
        text, n = re.subn(rf'(\n  {name}:\n(?:    .*\n)*?    Default: )"false"', r'\1"true"', text)
        if n != 1:
            raise StackError(f'template.yaml: no {name} parameter with Default: "false"')
    for name, value in OPTIONAL_VALUES.items():
        text, n = re.subn(rf'(\n  {name}:\n(?:    .*\n)*?    Default: )""', rf'\1"{value}"', text)
        if n != 1:
            raise StackError(f'template.yaml: no {name} parameter with Default: ""')
    return text


def run_checkov(sup: Supervisor) -> bool:
    """checkov on template.yaml as it is and with every optional part on; every failed check
    fails (a check that does not apply is skipped in the template, beside the resource, with
    its reason). Offline: --skip-download keeps it from asking Prisma Cloud for its mappings."""
    try:
        checkov = ensure_checkov(sup)
    except StackError as e:
        print(f"  {e}", file=sys.stderr)
        return False
    variant = LOCAL_DIR / "checkov" / "template-all-parts.yaml"
    variant.parent.mkdir(parents=True, exist_ok=True)
    variant.write_text(all_parts_variant(TEMPLATE.read_text()))
    return sup.run("checkov", [str(checkov), "--framework", "cloudformation", "--compact", "--quiet",
                               "--skip-download", "-f", str(TEMPLATE), "-f", str(variant)],
                   env=process_env({})) == 0
