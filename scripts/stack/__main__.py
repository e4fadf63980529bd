"""The local stack: DynamoDB Local, moto (Secrets Manager, SES, and Cognito for sign-in tokens)
and `cargo lambda watch`, set up from template.yaml, the one description of the deployed stack.

Run it through `scripts/dev`, which installs the tools first.

  run           start everything on the usual ports, create a demo user and key and the same
                user in the local user pool (a password to sign in with), serve the API on
                http://127.0.0.1:3000 and the account-security page (web/) on
                http://localhost:3001 until Ctrl-C
  test [-- ARGS]
                start everything on free ports, run `cargo nextest run` against it (ARGS go to
                nextest, e.g. `-- -E 'test(two_factor)'`), fuzz the API with schemathesis
                against openapi.yaml, drive the account page in headless Chromium
                (tests/browser), then the template checks (cfn-lint, sam validate --lint,
                the deploy rehearsal, the router, and the policies against what each function
                did in the tests); exits non-zero if anything failed
  build         `sam build` for arm64 (adds the aarch64 Rust target; zig comes from .venv) and
                check that every function has an ELF aarch64 bootstrap in .aws-sam/build
  rehearse [--verbose]
                a deploy rehearsal without AWS: template.yaml translated by the SAM translator
                and made as a stack in moto's CloudFormation (in-process), with the defaults
                and with the user pool, email and passkeys on; then the tables' keys, indexes
                and TTL against the store's requests (shared/src/store), the functions'
                environment against what shared/src reads, resolved to the resources made, the
                roles' policies, the encryption-key secret, the HTTP API's routes, the
                dashboard and every output; names each resource or property moto cannot make,
                and why
  routes        print the routes that template.yaml declares, as JSON
  openapi-routes
                print the operations that openapi.yaml documents, as JSON
  cors          print the HTTP API's CorsConfiguration with the local CorsAllowOrigins (the
                account page on --page-port), as the local API applies it: a JSON list of one
                object (none when the API has no CORS)
  check-policies
                compare each function's policies with the AWS calls (DynamoDB, Secrets
                Manager, SES) it made in the last test run (too narrow: it would fail in AWS;
                too wide: a grant never used)
  gen-router    write .local/cargo-lambda.toml, cargo lambda watch's router, from template.yaml
                (the local API writes it itself each time it starts)
  gen-sam-local-env
                write scripts/sam-local-env.json (`sam local start-api --env-vars`) from
                template.yaml
  check-router  fail when that router would route otherwise than template.yaml says
  gen-alarms    write template.yaml's alarms, dashboard and every function's gradual-deploy
                settings (DeploymentPreference and its rollback alarms) from its functions and
                tables (scripts/stack/alarms.py); run it after adding or removing either
  check-alarms  fail when those differ from what gen-alarms would write, naming what is
                missing or stale
  env           print the environment the functions get locally (for a shell: eval it), with
                the local user pool's ids (LOCAL_USER_POOL_ID, LOCAL_USER_POOL_CLIENT_ID) and
                token settings while `scripts/dev run` runs (the pool exists only then)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

if not __package__:
    # Run as `python scripts/stack`: Python put scripts/stack itself first on sys.path, where
    # its modules would pass for top-level ones; the package is imported from scripts/.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from stack.alarms import check_alarms, write_alarms  # noqa: E402
from stack.artifacts import SAM_BUILD_DIR, check_sam_artifacts, ensure_arm64_toolchain  # noqa: E402
from stack.browser import run_browser_test, start_test_page  # noqa: E402
from stack.checkov import run_checkov  # noqa: E402
from stack.cognito import (  # noqa: E402
    DEMO_PASSWORD, create_demo_user, find_user_pool, moto_private_key_files, sign_in_example,
)
from stack.common import (  # noqa: E402
    LOG_DIR, REGION, ROOT, TEMPLATE, VENV_BIN, StackError, cargo_target_dir, process_env, require_tool,
)
from stack.fuzz import run_schemathesis  # noqa: E402
from stack.nextest import NextestCounts  # noqa: E402
from stack.observed import OBSERVED_DIR, fresh_observed_dir, latest_observed_dir  # noqa: E402
from stack.openapi import openapi_routes  # noqa: E402
from stack.page import page_url, start_page_server, wait_page  # noqa: E402
from stack.policies import check_policies  # noqa: E402
from stack.router import ROUTER_FILE, check_router, write_router  # noqa: E402
from stack.sam_local_env import SAM_LOCAL_ENV, check_sam_local_env, sam_local_env  # noqa: E402
from stack.services import (  # noqa: E402
    RUN_STATE, free_port, port_is_free, read_run_state, remove_run_state, setup_services, stack_env,
    start_services, users_admin, wait_services, write_run_state,
)
from stack.supervisor import Supervisor, supervised  # noqa: E402
from stack.template import (  # noqa: E402
    LOCAL_PAGE_PORT, functions, load_template, local_cors_configuration, routes,
)
from stack.watch import start_watch, wait_watch, warm_functions  # noqa: E402

DEMO_EMAIL = "demo@example.com"


def cmd_routes(_args: argparse.Namespace) -> int:
    out = [{"method": r.method, "path": r.path, "function": r.function} for r in routes(load_template())]
    print(json.dumps(out, indent=2))
    return 0


def cmd_openapi_routes(_args: argparse.Namespace) -> int:
    print(json.dumps(openapi_routes(), indent=2))
    return 0


def cmd_cors(args: argparse.Namespace) -> int:
    page_port = args.page_port or int((read_run_state() or {}).get("page_port", LOCAL_PAGE_PORT))
    cors = local_cors_configuration(load_template(), page_port)
    print(json.dumps([] if cors is None else [cors], indent=2))
    return 0


def cmd_check_policies(args: argparse.Namespace) -> int:
    directory = Path(args.observed_dir).resolve() if args.observed_dir else latest_observed_dir()
    return report(check_policies(directory),
                  f"template.yaml's policies do not match what the functions did in the tests ({directory}):",
                  f"template.yaml: every function's policies are exactly what it used in the tests ({directory})")


def cmd_rehearse(args: argparse.Namespace) -> int:
    from stack.rehearse import rehearse  # moto and the SAM translator: imported only here

    return 1 if rehearse(verbose=args.verbose) else 0


def report(problems: list[str], failed: str, passed: str) -> int:
    """A check's outcome for a command: its problems under `failed` (exit 1), or `passed`."""
    if problems:
        print(failed, file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(passed)
    return 0


def cmd_gen_alarms(_args: argparse.Namespace) -> int:
    changed = write_alarms()
    print(f"{TEMPLATE.relative_to(ROOT)}: alarms, dashboard and deploy settings "
          f"{'written' if changed else 'already up to date'}")
    return 0


def cmd_check_alarms(_args: argparse.Namespace) -> int:
    return report(check_alarms(), "template.yaml's alarms, dashboard or deploy settings do not match its functions "
                  "and tables:", "template.yaml: alarms, dashboard and deploy settings match its functions and tables")


def cmd_gen_sam_local_env(_args: argparse.Namespace) -> int:
    text = sam_local_env(load_template())
    changed = not SAM_LOCAL_ENV.exists() or SAM_LOCAL_ENV.read_text() != text
    if changed:
        SAM_LOCAL_ENV.write_text(text)
    print(f"{SAM_LOCAL_ENV.relative_to(ROOT)} {'written' if changed else 'already up to date'}")
    return 0


def cmd_gen_router(_args: argparse.Namespace) -> int:
    path = write_router(load_template())
    print(f"{path.relative_to(ROOT)} written (cargo lambda watch --global {path.relative_to(ROOT)})")
    return 0


def cmd_check_router(_args: argparse.Namespace) -> int:
    name = ROUTER_FILE.relative_to(ROOT)
    return report(check_router(), f"{name} does not route as template.yaml does:",
                  f"{name} routes as template.yaml does")


def cmd_env(args: argparse.Namespace) -> int:
    # The ports: as given, else those of the `scripts/dev run` that runs, else the usual ones.
    running = read_run_state() or {}
    s = argparse.Namespace(
        dynamodb_url=f"http://127.0.0.1:{args.dynamodb_port}" if args.dynamodb_port
        else running.get("dynamodb_url", "http://127.0.0.1:8000"),
        moto_url=f"http://127.0.0.1:{args.moto_port}" if args.moto_port else running.get("moto_url", "http://127.0.0.1:5000"),
    )
    page_port = args.page_port or int(running.get("page_port", LOCAL_PAGE_PORT))
    env = stack_env(load_template(), s, page_port)  # type: ignore[arg-type]
    # The user pool is made by `scripts/dev run` in its moto, with new ids each time: asked of
    # that moto, never assumed.
    pool = find_user_pool(s.moto_url)
    if pool is not None:
        env.update(pool.function_env())
        env.update(pool.ids_env())
    else:
        where = (f"the `scripts/dev run` that runs has none in its moto ({s.moto_url})" if running else
                 f"no `scripts/dev run` is running (it says where its services are in "
                 f"{RUN_STATE.relative_to(ROOT)}), and moto at {s.moto_url} has none")
        print(f"scripts/dev env: no local user pool: {where}. The pool exists only while `scripts/dev run` runs, "
              "with new ids each time: LOCAL_USER_POOL_ID and LOCAL_USER_POOL_CLIENT_ID are not exported, and "
              "TOKEN_* keep template.yaml's values (no sign-in tokens).", file=sys.stderr)
    for k, v in sorted(env.items()):
        print(f"export {k}={shlex.quote(v)}")
    return 0


def cmd_run(args: argparse.Namespace, sup: Supervisor) -> int:
    template = load_template()
    require_tool("cargo", "install Rust with rustup")
    if not port_is_free(args.port):
        raise StackError(f"port {args.port} is in use (another `scripts/dev run`?); choose another with --port")
    if args.page_port == args.port or not port_is_free(args.page_port):
        raise StackError(f"port {args.page_port} is in use (another `scripts/dev run`?); choose another with --page-port")
    services = start_services(sup, "run", free_port(8000), free_port(5000))
    env = stack_env(template, services, args.page_port)
    penv = process_env(env)
    print("stack: building the workspace (cargo build --workspace)", flush=True)
    if sup.run("cargo build", ["cargo", "build", "--workspace"], env=penv) != 0:
        raise StackError("cargo build failed")
    wait_services(services)
    pool = setup_services(template, services, env)
    env.update(pool.function_env())  # the functions accept the local pool's access tokens
    penv = process_env(env)
    target = cargo_target_dir()
    user = users_admin(target, penv, "create-user", "--email", DEMO_EMAIL, "--first-name", "Demo", "--staff")
    key = users_admin(target, penv, "create-key", "--user", user["uuid"], "--scopes", "*", "--label", "demo")
    # The same person in the local user pool. A staff user's sign-in is never linked by email
    # at its first use (docs/API.md §2): an operator links it, as here.
    claims = create_demo_user(pool, user["email"], DEMO_PASSWORD)
    users_admin(target, penv, "link-identity", "--user", user["uuid"], "--subject", claims["sub"])
    url = f"http://127.0.0.1:{args.port}"
    write_run_state(services, url, args.page_port)
    try:
        watch = start_watch(sup, args.port, penv, log=None, ignore_changes=False, concurrency=args.concurrency,
                            page_port=args.page_port)
        wait_watch(watch, url, timeout=1800)
        page = start_page_server(sup, args.page_port, url, pool, log=LOG_DIR / "run-page.log")
        wait_page(page, args.page_port)
        page_address = page_url(args.page_port)
        api_key = key["api_key"]
        sign_in = sign_in_example(pool, url, user["email"], DEMO_PASSWORD).replace("\n", "\n  ")
        print(
            "\n"
            f"  API            {url}   (cargo lambda watch; code changes reload the functions)\n"
            f"  account page   {page_address}   (web/: sign in with the key or the user pool, TOTP, backup codes,\n"
            f"                 passkeys; open it as localhost, the origin passkeys are bound to)\n"
            f"  DynamoDB Local {services.dynamodb_url}   (in memory: gone when this stops)\n"
            f"  moto           {services.moto_url}   (Secrets Manager, SES, Cognito: {services.moto_url}/moto-api/data.json)\n"
            f"  logs           {LOG_DIR.relative_to(ROOT)}/run-*.log\n"
            f"  demo user      {user['email']} ({user['uuid']}), staff\n"
            f"  API key        {api_key}\n"
            f"  user pool      {pool.pool_id}, app client {pool.client_id} (moto's Cognito; new ids each run)\n"
            f"  sign-in        {user['email']} / {DEMO_PASSWORD}\n"
            "\n"
            "  With the API key:\n"
            "\n"
            f"  curl -s {url}/api/users/@me/ -H 'Authorization: Bearer {api_key}'\n"
            "\n"
            "  Signed in to the local user pool, with its access token:\n"
            "\n"
            f"  {sign_in}\n"
            "\n"
            f"  Or open {page_address} and sign in with the key or as {user['email']} / {DEMO_PASSWORD}.\n"
            "\n"
            "  `eval \"$(scripts/dev env)\"` exports the functions' environment and the pool's ids.\n"
            "  Ctrl-C stops everything.\n",
            flush=True,
        )
        code = watch.popen.wait()
        raise StackError(f"cargo lambda watch exited with code {code}")
    finally:
        remove_run_state()

def cmd_build(args: argparse.Namespace, sup: Supervisor) -> int:
    template = load_template()
    require_tool("cargo", "install Rust with rustup")
    env = process_env({"AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION})
    ensure_arm64_toolchain(sup, env)
    started = time.monotonic()
    # sam build runs `cargo lambda build --release --arm64 --bin <function>` once per function,
    # one after another, so its whole-program LTO links would run one at a time. The same
    # command for every function at once lets cargo link as many as there are cores; sam's
    # own invocations then find each binary up to date (same flags, same workspace-wide
    # feature resolution) and only copy it.
    binaries = sorted(set(functions(template).values()))
    prebuild = [str(VENV_BIN / "cargo-lambda"), "lambda", "build", "--release", "--arm64",
                *(arg for b in binaries for arg in ("--bin", b)), *(["--timings"] if args.timings else [])]
    print(f"stack: cargo lambda build --release --arm64 for the {len(binaries)} functions at once "
          "(release, fat LTO; a cold build compiles the dependencies first)", flush=True)
    if sup.run("cargo lambda build", prebuild, env=env) != 0:
        raise StackError("cargo lambda build failed")
    linked = time.monotonic()
    argv = [str(VENV_BIN / "sam"), "build", "--template-file", str(TEMPLATE), "--build-dir", str(SAM_BUILD_DIR)]
    print(f"stack: sam build (template.yaml -> {SAM_BUILD_DIR.relative_to(ROOT)}): each function's binary, "
          "already built, is found up to date and copied", flush=True)
    if sup.run("sam build", argv, env=env) != 0:
        raise StackError("sam build failed")
    problems = check_sam_artifacts(template)
    if problems:
        raise StackError("sam build's output is incomplete:\n  " + "\n  ".join(problems))
    n = len(functions(template))
    print(f"stack: {n} functions built for arm64 in {time.monotonic() - started:.0f} s "
          f"(cargo lambda {linked - started:.0f} s, sam build {time.monotonic() - linked:.0f} s): "
          f"{SAM_BUILD_DIR.relative_to(ROOT)}/<Function>/bootstrap (ELF aarch64). Deploy with "
          f"`.venv/bin/sam deploy --guided`.", flush=True)
    return 0

def cmd_test(args: argparse.Namespace, sup: Supervisor) -> int:
    template = load_template()
    require_tool("cargo", "install Rust with rustup")
    steps: list[tuple[str, bool]] = []
    counts = NextestCounts()

    def step(name: str, ok: bool) -> bool:
        steps.append((name, ok))
        print(f"stack: {name}: {'ok' if ok else 'FAILED'}", flush=True)
        return ok

    observed_dir = fresh_observed_dir()
    filtered = bool(args.nextest_args)
    services = start_services(sup, "test", free_port(), free_port())
    env = stack_env(template, services)  # (WEBAUTHN_ORIGINS follows once the page has its port)
    penv = process_env(env)
    print("stack: building (cargo build --workspace --all-targets)", flush=True)
    built = step("cargo build", sup.run("cargo build", ["cargo", "build", "--workspace", "--all-targets"], env=penv) == 0)
    if built:
        wait_services(services)
        pool = setup_services(template, services, env)
        private_jwk, private_der = moto_private_key_files()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        # The account page's server takes a free port now, before cargo lambda watch picks one
        # of its own; the functions, users-admin and the tests are told its origin
        # (WEBAUTHN_ORIGINS: the Rust tests' software authenticator takes it as its own).
        page = None if args.no_browser or filtered else start_test_page(
            sup, url, pool, avoid={port, services.dynamodb_port, services.moto_port})
        env = stack_env(template, services, page.port if page else LOCAL_PAGE_PORT)
        env.update(pool.function_env())  # the functions accept the local pool's access tokens
        penv = process_env(env)
        watch_log = LOG_DIR / "test-watch.log"
        watch = start_watch(sup, port, penv, log=watch_log, ignore_changes=True, concurrency=args.concurrency,
                            page_port=page.port if page else LOCAL_PAGE_PORT)
        try:
            wait_watch(watch, url, timeout=args.watch_timeout)
            problems = warm_functions(template, url, timeout=args.watch_timeout)
        except StackError as e:
            problems = [str(e)]
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        if step("every function answers through cargo lambda watch", not problems):
            test_env = dict(penv)
            test_env.update({
                "TEST_API_URL": url,
                "MOTO_URL": services.moto_url,
                "TEST_PYTHON": str(VENV_BIN / "python"),
                "TEMPLATE_PATH": str(TEMPLATE),
                "OBSERVED_DIR": str(observed_dir),
                "WATCH_LOG": str(watch_log.resolve()),
                # The test threads' stack: the dev profile's unoptimised handlers, run in process
                # under the harness's layers, need more than Rust's default 2 MiB (a Lambda
                # function's main thread has 8 MiB, and release builds use far less).
                "RUST_MIN_STACK": str(8 << 20),
                # The local user pool (sign-in tokens), and moto's signing key, with which the
                # tests forge tokens the functions take for the pool's.
                **pool.ids_env(),
                "TEST_MOTO_COGNITO_PRIVATE_JWK": str(private_jwk),
                "TEST_MOTO_COGNITO_PRIVATE_KEY_DER": str(private_der),
            })
            require_tool("cargo-nextest", "install it with `cargo install cargo-nextest --locked`")
            require_tool("openssl", "the TLS test makes its certificates with it (apt-get install openssl)")
            color = ["--color", "always"] if sys.stdout.isatty() else ["--color", "never"]
            code = sup.run("cargo nextest", ["cargo", "nextest", "run", "--workspace", "--no-fail-fast", *color,
                                             *args.nextest_args], env=test_env, on_line=counts.feed)
            step("cargo nextest run", code == 0)
            if args.no_fuzz or filtered:
                print("stack: schemathesis: skipped (--no-fuzz, or arguments for nextest were given)", flush=True)
            else:
                started = time.monotonic()
                ok = run_schemathesis(sup, penv, url, seed=args.fuzz_seed, examples=args.fuzz_examples,
                                      timeout=args.fuzz_timeout)
                step(f"schemathesis openapi.yaml ({time.monotonic() - started:.0f} s)", ok)
            if page is None:
                print("stack: browser test: skipped (--no-browser, or arguments for nextest were given)", flush=True)
            else:
                ok = run_browser_test(sup, penv, page, pool, timeout=args.browser_timeout)
                step("browser test (the account page in headless Chromium, tests/browser)", ok)
        else:
            print(f"stack: cargo lambda watch log: {watch_log.relative_to(ROOT)}", file=sys.stderr)
            step("cargo nextest run (not run)", False)
        sup.stop(watch)
    sup.stop_all()  # the services are not needed for the template checks

    step("cfn-lint template.yaml",
         sup.run("cfn-lint", [str(VENV_BIN / "cfn-lint"), str(TEMPLATE)], env=process_env({})) == 0)
    step("checkov template.yaml (as is, and with EdgeProtection and CreateUserPool on)", run_checkov(sup))
    step("sam validate --lint",
         sup.run("sam validate", [str(VENV_BIN / "sam"), "validate", "--lint", "--template-file", str(TEMPLATE)],
                 env=process_env({"AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION})) == 0)
    step("rehearse (template.yaml deployed to moto's CloudFormation)",
         sup.run("rehearse", [str(VENV_BIN / "python"), str(ROOT / "scripts" / "stack"), "rehearse"],
                 env=process_env({})) == 0)
    problems = check_router() + check_sam_local_env()
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    step("check-router (the local router and scripts/sam-local-env.json match template.yaml)", not problems)
    problems = check_alarms()
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    step("check-alarms (every function has its alarms, dashboard widgets and rollback triggers)", not problems)
    if filtered:
        print("stack: check-policies: skipped (arguments for nextest were given: the tests that ran may not "
              "exercise every function)", flush=True)
    elif built:
        problems = check_policies(observed_dir)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        step("check-policies (template.yaml grants exactly what the tests used)", not problems)

    failed_steps = [name for name, ok in steps if not ok]
    print("stack: " + "; ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in steps), flush=True)
    # The closing line counts tests and checks: nextest's tests, plus the other steps.
    checks = [ok for name, ok in steps if not name.startswith("cargo nextest")]
    passed = (counts.passed or 0) + sum(checks)
    failed = counts.failed + (len(checks) - sum(checks))
    if any(name.startswith("cargo nextest") and not ok for name, ok in steps) and counts.failed == 0:
        failed += 1  # nextest failed without a test failing (build error, no tests run, ...)
    print(f"summary: {passed} passed, {failed} failed", flush=True)
    return 1 if failed_steps else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/dev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="serve the API locally with a demo user")
    p.add_argument("--port", type=int, default=3000, help="port of the API (default 3000)")
    p.add_argument("--page-port", type=int, default=LOCAL_PAGE_PORT,
                   help=f"port of the account-security page, http://localhost:PORT (default {LOCAL_PAGE_PORT})")
    p.add_argument("--concurrency", type=int, default=1, help="processes per function (default 1)")
    p = sub.add_parser("test", help="run the tests against a local stack on free ports, then the template checks")
    p.add_argument("--concurrency", type=int, default=2,
                   help="processes per function, so that concurrent requests really race (default 2)")
    p.add_argument("--watch-timeout", type=float, default=1800,
                   help="seconds to wait for a function's first answer, which may compile it (default 1800)")
    p.add_argument("--no-fuzz", action="store_true", help="skip the schemathesis step")
    p.add_argument("--fuzz-seed", type=int, default=20261127, help="schemathesis seed (default 20261127)")
    p.add_argument("--fuzz-examples", type=int, default=50,
                   help="schemathesis examples per operation in the fuzzing and stateful phases (default 50)")
    p.add_argument("--fuzz-timeout", type=float, default=420,
                   help="seconds before the schemathesis step is stopped and failed (default 420)")
    p.add_argument("--no-browser", action="store_true", help="skip the browser test of the account page")
    p.add_argument("--browser-timeout", type=float, default=600,
                   help="seconds before the browser test is stopped and failed (default 600)")
    p.add_argument("nextest_args", nargs=argparse.REMAINDER, help="arguments for cargo nextest run")
    p = sub.add_parser("rehearse", help="deploy template.yaml to moto's CloudFormation (no AWS) and check what it made")
    p.add_argument("--verbose", action="store_true", help="list every check that passed")
    sub.add_parser("routes", help="print the routes of template.yaml as JSON")
    sub.add_parser("openapi-routes", help="print the operations of openapi.yaml as JSON")
    p = sub.add_parser("cors", help="print the HTTP API's CORS configuration as the local API applies it, as JSON")
    p.add_argument("--page-port", type=int, default=None,
                   help=f"the account page's port, an allowed origin (default: that of the `scripts/dev run` "
                        f"that runs, else {LOCAL_PAGE_PORT})")
    p = sub.add_parser("check-policies",
                       help="fail when a function's policies are narrower or wider than what it did in the tests")
    p.add_argument("--observed-dir", default=None,
                   help=f"the tests' observations (default: the latest run's, in {OBSERVED_DIR.relative_to(ROOT)}/<pid>)")
    sub.add_parser("gen-router", help="write .local/cargo-lambda.toml (cargo lambda watch's router) from template.yaml")
    sub.add_parser("gen-sam-local-env", help="write scripts/sam-local-env.json from template.yaml")
    sub.add_parser("gen-alarms", help="write template.yaml's alarms, dashboard and gradual-deploy settings "
                                      "from its functions and tables")
    sub.add_parser("check-alarms", help="fail when template.yaml's alarms, dashboard or gradual-deploy settings "
                                        "do not match its functions and tables")
    sub.add_parser("check-router", help="fail when the local router would route otherwise than template.yaml")
    build = sub.add_parser("build", help="sam build for arm64: one bootstrap per function in .aws-sam/build")
    build.add_argument("--timings", action="store_true",
                       help="cargo's build timing report (target/cargo-timings/cargo-timing.html): where the time goes")
    p = sub.add_parser("env", help="print the local environment of the functions as shell exports")
    p.add_argument("--dynamodb-port", type=int, default=None,
                   help="default: that of the `scripts/dev run` that runs, else 8000")
    p.add_argument("--moto-port", type=int, default=None,
                   help="default: that of the `scripts/dev run` that runs, else 5000")
    p.add_argument("--page-port", type=int, default=None,
                   help=f"the account page's port, in WEBAUTHN_ORIGINS (default: that of the `scripts/dev run` "
                        f"that runs, else {LOCAL_PAGE_PORT})")
    args = parser.parse_args(argv)
    if getattr(args, "nextest_args", None) and args.nextest_args[0] == "--":
        args.nextest_args = args.nextest_args[1:]

    simple = {"routes": cmd_routes, "gen-router": cmd_gen_router, "check-router": cmd_check_router, "env": cmd_env,
              "openapi-routes": cmd_openapi_routes, "check-policies": cmd_check_policies, "cors": cmd_cors,
              "gen-sam-local-env": cmd_gen_sam_local_env, "gen-alarms": cmd_gen_alarms,
              "check-alarms": cmd_check_alarms, "rehearse": cmd_rehearse}
    if args.command in simple:
        try:
            return simple[args.command](args)
        except StackError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1

    commands = {"run": cmd_run, "test": cmd_test, "build": cmd_build}
    return supervised("stack", lambda sup: commands[args.command](args, sup))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
