// The browser test of the account-security page (web/), run by `scripts/dev test` against the
// local stack: Debian's Chromium, headless, through playwright-core, with a CDP virtual
// authenticator for the passkeys. Every step acts on the page as a person would, asserts what
// the page then shows, and saves a screenshot.
//
// The TOTP secret is read back out of the page: the QR code's pixels (a screenshot of the
// canvas) are decoded with jsqr, the otpauth URI parsed and the codes computed with otpauth,
// none of which the page uses.
//
// Environment (set by scripts/stack/browser.py):
//   PAGE_URL               the page, http://localhost:<port> (the origin the functions accept)
//   BROWSER_TEST_API_KEY   a personal API key (scope *) of the test's user
//   BROWSER_TEST_EMAIL     that user's email, also a user of the local user pool ...
//   BROWSER_TEST_PASSWORD  ... with this password
//   SCREENSHOT_DIR         where the screenshots go (made if missing)
//   CHROMIUM               the browser (default /usr/bin/chromium)

import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import jsQR from "jsqr";
import * as OTPAuth from "otpauth";
import { chromium } from "playwright-core";
import { PNG } from "pngjs";

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined || value === "") {
    console.error(`browser test: ${name} is not set`);
    process.exit(2);
  }
  return value;
};

const PAGE_URL = env("PAGE_URL").replace(/\/$/, "");
const API_KEY = env("BROWSER_TEST_API_KEY");
const EMAIL = env("BROWSER_TEST_EMAIL");
const PASSWORD = env("BROWSER_TEST_PASSWORD");
const SHOTS = path.resolve(env("SCREENSHOT_DIR"));
const CHROMIUM = env("CHROMIUM", "/usr/bin/chromium");
const STEP_TIMEOUT = 60_000;

// The launch flags this machine needs (shared/spec/TOOLING.md); playwright adds --headless and
// a fresh --user-data-dir of its own.
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

// The same API the page calls, from here (for the exact `detail` an error should show). Node
// reaches the page server by its IPv4 address, which it answers to as well as to localhost.
const DIRECT_URL = PAGE_URL.replace("//localhost:", "//127.0.0.1:");

async function apiDirect(method, route, body) {
  const headers = { Authorization: `Bearer ${API_KEY}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(DIRECT_URL + route, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  return { status: resp.status, body: text ? JSON.parse(text) : null };
}

// --- assertions --------------------------------------------------------------------------------

class StepFailure extends Error {}

function check(condition, message) {
  if (!condition) throw new StepFailure(message);
}

function equal(actual, expected, what) {
  check(actual === expected, `${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
}

function includes(text, part, what) {
  check(typeof text === "string" && text.includes(part), `${what}: expected it to contain ${JSON.stringify(part)}, got ${JSON.stringify(text)}`);
}

// --- the run -----------------------------------------------------------------------------------

mkdirSync(SHOTS, { recursive: true });
const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
const context = await browser.newContext({ viewport: { width: 1000, height: 900 } });
const page = await context.newPage();
page.setDefaultTimeout(STEP_TIMEOUT);
const consoleProblems = [];
page.on("console", (msg) => {
  if (msg.type() === "error") consoleProblems.push(msg.text());
});
page.on("pageerror", (err) => consoleProblems.push(`uncaught: ${err.message}`));

// A virtual platform authenticator (CTAP2, resident keys, user verification that succeeds,
// presence simulated), as the page's passkey prompts expect.
const cdp = await context.newCDPSession(page);
await cdp.send("WebAuthn.enable", { enableUI: false });
const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
  options: {
    protocol: "ctap2",
    transport: "internal",
    hasResidentKey: true,
    hasUserVerification: true,
    isUserVerified: true,
    automaticPresenceSimulation: true,
  },
});

let stepNo = 0;
const passed = [];

async function step(name, body) {
  stepNo += 1;
  const slug = `${String(stepNo).padStart(2, "0")}-${name.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "")}`;
  const started = Date.now();
  try {
    await body(slug);
  } catch (err) {
    const shot = path.join(SHOTS, `${slug}-FAILED.png`);
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    console.error(`browser test: step ${stepNo} "${name}" FAILED: ${err instanceof StepFailure ? err.message : err.stack || err}`);
    console.error(`browser test: the page's status lines: ${JSON.stringify(await statusLines().catch(() => ({})))}`);
    if (consoleProblems.length) console.error(`browser test: the page's console errors: ${JSON.stringify(consoleProblems)}`);
    console.error(`browser test: screenshot ${shot}`);
    throw err;
  }
  await page.screenshot({ path: path.join(SHOTS, `${slug}.png`), fullPage: true });
  passed.push(name);
  console.log(`browser test: ok ${stepNo} ${name} (${Date.now() - started} ms)`);
}

async function statusLines() {
  return page.evaluate(() => Object.fromEntries([...document.querySelectorAll(".status:not([hidden])")]
    .map((el) => [el.id, `${el.dataset.state}: ${el.textContent}`])));
}

// Does `action` and waits for the status line `id` to show a new result; returns it.
async function result(id, action) {
  const before = (await page.getAttribute(`#${id}`, "data-seq")) ?? "0";
  await action();
  await page.waitForFunction(([sid, seq]) => {
    const el = document.getElementById(sid);
    return el && !el.hidden && el.dataset.seq && el.dataset.seq !== seq;
  }, [id, before], { timeout: STEP_TIMEOUT });
  return page.evaluate((sid) => {
    const el = document.getElementById(sid);
    return { state: el.dataset.state, text: el.textContent, code: el.dataset.code ?? null };
  }, id);
}

async function expectOk(id, action, part) {
  const r = await result(id, action);
  equal(r.state, "ok", `#${id} (${r.text})`);
  includes(r.text, part, `#${id}`);
  return r;
}

const text = (selector) => page.locator(selector).innerText();
const passkeyItems = () => page.locator('[data-testid="passkey-item"]');
const passkeyNamed = (label) => page.locator(`[data-testid="passkey-item"][data-label=${JSON.stringify(label)}]`);

async function passkeysShown() {
  return page.$$eval('[data-testid="passkey-item"]', (items) => items.map((li) => ({
    id: li.dataset.id,
    label: li.querySelector('[data-testid="passkey-name"]').value,
    badge: li.querySelector('[data-testid="passkey-verified"]').textContent,
    verifyShown: !li.querySelector('[data-testid="passkey-verify"]').hidden,
  })));
}

async function backupCodesShown() {
  return page.$$eval('[data-testid="backup-code"]', (items) => items.map((li) => li.textContent.trim()));
}

// --- the steps ---------------------------------------------------------------------------------

let totp; // the authenticator app, made from the QR code

try {
  await step("the page loads with its security headers", async () => {
    const resp = await page.goto(PAGE_URL + "/");
    equal(resp.status(), 200, "GET /");
    const headers = resp.headers();
    equal(headers["cache-control"], "no-store", "Cache-Control");
    includes(headers["content-security-policy"] ?? "", "script-src 'self'", "Content-Security-Policy");
    includes(headers["content-security-policy"] ?? "", "default-src 'none'", "Content-Security-Policy");
    await page.waitForSelector("body[data-ready='true']");
    check(await page.locator("#account").isHidden(), "the account sections are hidden before signing in");
    check(await page.locator("#pool-submit").isEnabled(), "the user-pool sign-in is offered (config.json names the pool)");
    equal(await page.evaluate(() => window.isSecureContext), true, "the page is a secure context");
  });

  await step("sign in with the user pool", async () => {
    await page.fill("#pool-username", EMAIL);
    await page.fill("#pool-password", PASSWORD);
    await expectOk("signin-status", () => page.click("#pool-submit"), `Signed in as ${EMAIL} through the user pool.`);
    equal(await text("#user-email"), EMAIL, "the user's email");
    includes(await text("#user-credential"), "user pool", "signed in with");
    equal(await page.inputValue("#pool-password"), "", "the password field is emptied");
  });

  await step("sign out", async () => {
    await expectOk("signin-status", () => page.click("#sign-out"), "Signed out.");
    check(await page.locator("#account").isHidden(), "the account sections are hidden after signing out");
  });

  await step("a wrong API key shows the API's detail", async () => {
    const wrong = "phx_" + "a".repeat(48); // well-formed, but no key of this deployment
    const direct = await fetch(DIRECT_URL + "/api/users/@me/", { headers: { Authorization: `Bearer ${wrong}` } });
    const expected = await direct.json();
    equal(direct.status, 401, "the API's answer to a wrong key");
    await page.fill("#api-key", wrong);
    const r = await result("signin-status", () => page.click("#key-submit"));
    equal(r.state, "error", "#signin-status state");
    equal(r.text, expected.detail, "#signin-status shows the API's detail");
    check(await page.locator("#account").isHidden(), "still signed out");
  });

  await step("sign in with the API key", async () => {
    await page.fill("#api-key", API_KEY);
    await expectOk("signin-status", () => page.click("#key-submit"), `Signed in as ${EMAIL} with a personal API key.`);
    equal(await text("#user-email"), EMAIL, "the user's email");
    includes(await text("#user-credential"), "personal API key", "signed in with");
    equal(await page.inputValue("#api-key"), "", "the key field is emptied");
    const stored = await page.evaluate(() => ({
      local: localStorage.length, session: sessionStorage.length, cookies: document.cookie, url: location.href,
    }));
    equal(stored.local + stored.session, 0, "nothing in web storage");
    equal(stored.cookies, "", "no cookies");
    check(!stored.url.includes("phx_"), "the key is not in the URL");
    equal(await text("#tf-enabled"), "off", "two-factor sign-in before any setup");
    check(await page.locator("#passkey-empty").isVisible(), "no passkeys yet");
  });

  await step("passkeys for 2FA are refused without a verified passkey", async () => {
    const direct = await apiDirect("PATCH", "/api/users/@me/", { passkeys_enabled_for_2fa: true });
    equal(direct.status, 400, "the API's answer");
    // A click, not page.check(): the page unticks the box again as soon as the API refuses.
    const r = await result("passkeys-status", () => page.click("#passkey-2fa"));
    equal(r.state, "error", "#passkeys-status state");
    equal(r.text, direct.body.detail, "#passkeys-status shows the API's detail");
    equal(r.code, direct.body.code, "the error's code");
    equal(await page.isChecked("#passkey-2fa"), false, "the box is unticked again");
  });

  await step("register a passkey", async () => {
    await page.fill("#passkey-label", "Spare key");
    await expectOk("passkeys-status", () => page.click("#passkey-register"), 'Passkey "Spare key" added.');
    const shown = await passkeysShown();
    equal(shown.length, 1, "passkeys listed");
    equal(shown[0].label, "Spare key", "its name");
    equal(shown[0].badge, "Not verified", "a new passkey is unverified");
    const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
    check(credentials.length >= 1, "the authenticator holds the credential");
    check(credentials.every((c) => c.rpId === "localhost" && c.isResidentCredential), "a discoverable credential for RP id localhost");
  });

  await step("delete a passkey", async () => {
    page.once("dialog", (dialog) => dialog.accept());
    await expectOk("passkeys-status", () => passkeyNamed("Spare key").locator('[data-testid="passkey-delete"]').click(),
      'Passkey "Spare key" deleted.');
    equal((await passkeysShown()).length, 0, "passkeys listed");
    check(await page.locator("#passkey-empty").isVisible(), "the list says there are none");
  });

  await step("register another passkey", async () => {
    await page.fill("#passkey-label", "Laptop");
    await expectOk("passkeys-status", () => page.click("#passkey-register"), 'Passkey "Laptop" added.');
    const shown = await passkeysShown();
    equal(shown.length, 1, "passkeys listed");
    equal(shown[0].badge, "Not verified", "unverified");
    check(shown[0].verifyShown, "it offers to verify it");
  });

  await step("verify the passkey", async () => {
    await expectOk("passkeys-status", () => passkeyNamed("Laptop").locator('[data-testid="passkey-verify"]').click(),
      'Passkey "Laptop" is verified.');
    const [p] = await passkeysShown();
    equal(p.badge, "Verified", "the badge");
    check(!p.verifyShown, "no verify button once verified");
    equal(await text("#tf-passkeys"), "registered", "the 2FA status's passkeys");
  });

  await step("rename the passkey", async () => {
    const item = passkeyNamed("Laptop");
    await item.locator('[data-testid="passkey-name"]').fill("Work laptop");
    await expectOk("passkeys-status", () => item.locator('[data-testid="passkey-rename"]').click(),
      'Passkey renamed to "Work laptop".');
    const shown = await passkeysShown();
    equal(shown.length, 1, "passkeys listed");
    equal(shown[0].label, "Work laptop", "the new name, as the API lists it");
  });

  await step("turn on passkeys for 2FA", async () => {
    await expectOk("passkeys-status", () => page.click("#passkey-2fa"), "Passkeys are on for two-factor sign-in.");
    equal(await page.isChecked("#passkey-2fa"), true, "the box");
    equal(await text("#tf-passkey-2fa"), "on", "the 2FA status's passkeys for two-factor");
    equal(await text("#tf-enabled"), "on", "two-factor sign-in");
  });

  await step("sign-in check with the passkey", async () => {
    await expectOk("check-status", () => page.click("#check-passkey"), "(method: passkey)");
  });

  await step("TOTP setup shows a QR code that decodes to the secret", async (slug) => {
    await expectOk("totp-status", () => page.click("#totp-start"), "Scan the QR code");
    const canvas = page.locator("#totp-qr");
    check(await canvas.isVisible(), "the QR code is shown");
    const png = await canvas.screenshot({ path: path.join(SHOTS, `${slug}-qr.png`) });
    const image = PNG.sync.read(png);
    const decoded = jsQR(new Uint8ClampedArray(image.data.buffer, image.data.byteOffset, image.data.length),
      image.width, image.height);
    check(decoded && decoded.data, "jsqr finds a QR code in the canvas's pixels");
    const uri = decoded.data;
    check(uri.startsWith("otpauth://totp/"), `the QR code holds an otpauth URI (got ${uri.slice(0, 20)}…)`);
    totp = OTPAuth.URI.parse(uri);
    check(totp instanceof OTPAuth.TOTP, "a TOTP URI");
    equal(totp.digits, 6, "digits");
    equal(totp.period, 30, "period");
    equal(totp.algorithm, "SHA1", "algorithm");
    includes(decodeURIComponent(totp.label), EMAIL, "the account in the URI");
    const shownSecret = (await page.locator("#totp-secret").textContent()).replace(/\s+/g, "");
    equal(totp.secret.base32, shownSecret, "the secret in the QR code and the one shown for typing");
  });

  await step("a wrong TOTP code shows the API's detail", async () => {
    const near = new Set([-30_000, 0, 30_000].map((dt) => totp.generate({ timestamp: Date.now() + dt })));
    let wrong = Number(totp.generate());
    do { wrong = (wrong + 111_111) % 1_000_000; } while (near.has(String(wrong).padStart(6, "0")));
    await page.fill("#totp-code", String(wrong).padStart(6, "0"));
    const r = await result("totp-status", () => page.click("#totp-submit"));
    equal(r.state, "error", "#totp-status state");
    equal(r.text, "Token is not valid", "#totp-status shows the API's detail (docs/API.md §4)");
    equal(r.code, "token_invalid", "the error's code");
    check(await page.locator("#totp-setup").isVisible(), "the setup stays open");
  });

  await step("turn on TOTP with the code computed from the QR code", async () => {
    await page.fill("#totp-code", totp.generate());
    await expectOk("totp-status", () => page.click("#totp-submit"), "The authenticator app is on");
    check(await page.locator("#totp-setup").isHidden(), "the setup is closed");
    equal(await text("#tf-totp"), "set up", "the 2FA status's authenticator app");
    equal(await text("#tf-enabled"), "on", "two-factor sign-in");
  });

  let codes;
  await step("regenerate the backup codes", async () => {
    await expectOk("backup-status", () => page.click("#backup-regenerate"), "10 new backup codes");
    codes = await backupCodesShown();
    equal(codes.length, 10, "backup codes shown");
    check(codes.every((c) => /^[a-z2-7]{8}$/.test(c)), `codes of 8 characters from [a-z2-7]: ${codes.join(" ")}`);
  });

  await step("sign-in check with a TOTP code", async () => {
    // A later time step than the one that confirmed the setup (a step is accepted once).
    await page.fill("#check-code", totp.generate({ timestamp: Date.now() + 30_000 }));
    await expectOk("check-status", () => page.click("#check-code-submit"), "(method: totp)");
  });

  await step("sign-in check with a backup code", async () => {
    await page.fill("#check-code", codes[0]);
    await expectOk("check-status", () => page.click("#check-code-submit"), "(method: backup_code)");
  });

  await step("the used backup code is gone", async () => {
    await expectOk("backup-status", () => page.click("#backup-show"), "9 unused backup codes.");
    const left = await backupCodesShown();
    equal(left.length, 9, "backup codes shown");
    check(!left.includes(codes[0]), "the used code is not listed");
    check(left.every((c) => codes.includes(c)), "the others are the ones made before");
  });

  await step("no Content-Security-Policy violation or uncaught error", async () => {
    const csp = consoleProblems.filter((m) => /Content.Security.Policy|Refused to/i.test(m));
    check(csp.length === 0, `the page broke its Content-Security-Policy: ${JSON.stringify(csp)}`);
    const uncaught = consoleProblems.filter((m) => m.startsWith("uncaught:"));
    check(uncaught.length === 0, `the page threw: ${JSON.stringify(uncaught)}`);
  });
} catch (err) {
  if (!(err instanceof StepFailure) && stepNo === 0) console.error(err);
  writeFileSync(path.join(SHOTS, "result.txt"), `failed at step ${stepNo}; passed: ${passed.join(", ")}\n`);
  await browser.close();
  console.error(`browser test: ${passed.length} steps passed, step ${stepNo} failed; screenshots in ${SHOTS}`);
  process.exit(1);
}

writeFileSync(path.join(SHOTS, "result.txt"), `passed: ${passed.join(", ")}\n`);
await browser.close();
console.log(`browser test: all ${passed.length} steps passed; screenshots in ${SHOTS}`);
