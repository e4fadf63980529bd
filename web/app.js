// The account-security page of the local users API: sign in with a personal API key or the
// local user pool, then TOTP, backup codes, passkeys and the sign-in check, each through the
// API's own routes (same origin: scripts/page_server.py serves this page and passes /api/ on).
//
// No build step: an ES module, with the QR encoder (qrcode-generator, MIT, pinned in
// web/package-lock.json) served by the page server from web/node_modules.
//
// The key or access token lives in one variable of this module, nowhere else (no storage, no
// URL, no log): reloading the page signs out.

import qrcode from "/vendor/qrcode.mjs";

const $ = (id) => document.getElementById(id);

// --- the credential (memory only) --------------------------------------------------------------

let session = null; // {bearer: string, via: "key" | "pool"}
let config = { userPool: null };

// --- status lines ------------------------------------------------------------------------------

// Every section reports the result of its last action in its status line: data-state is
// "busy" while it runs, then "ok" or "error"; data-seq counts the results shown (the browser
// test waits for it to move); an API error's code is in data-code.
function setStatus(id, state, text, code) {
  const el = $(id);
  el.hidden = false;
  el.dataset.state = state;
  el.textContent = text;
  if (code) el.dataset.code = code; else delete el.dataset.code;
  if (state !== "busy") el.dataset.seq = String(Number(el.dataset.seq || 0) + 1);
}

function clearStatus(id) {
  const el = $(id);
  el.hidden = true;
  el.textContent = "";
  delete el.dataset.state;
  delete el.dataset.code;
}

// Runs one action of a section: its status line says "busy", then what `action` returns (the
// success message) or the error's message (an API error: the API's `detail`). The section's
// buttons are disabled meanwhile.
async function act(statusId, busyText, action) {
  const section = $(statusId).closest("section");
  const controls = [...section.querySelectorAll("button, input")];
  const wasDisabled = controls.map((c) => c.disabled);
  controls.forEach((c) => { c.disabled = true; });
  setStatus(statusId, "busy", busyText);
  try {
    const message = await action();
    setStatus(statusId, "ok", message);
    return true;
  } catch (err) {
    setStatus(statusId, "error", messageOf(err), err.code);
    return false;
  } finally {
    controls.forEach((c, i) => { c.disabled = wasDisabled[i]; });
  }
}

function messageOf(err) {
  if (err instanceof ApiError) return err.message;
  if (err && err.name === "NotAllowedError") return "The passkey request was cancelled or timed out.";
  if (err && err.name === "InvalidStateError") return "This authenticator already holds a passkey of this account.";
  if (err && err.name === "SecurityError") return "The browser refused the passkey request (RP id or origin).";
  if (err && err.name === "NotSupportedError") return "This browser or authenticator does not support passkeys.";
  return (err && err.message) || String(err);
}

// --- the API -----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message, code, attr) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.attr = attr;
  }
}

async function api(method, path, body) {
  if (!session) throw new Error("Sign in first.");
  const headers = { Authorization: `Bearer ${session.bearer}`, Accept: "application/json" };
  const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  return call(path, init);
}

async function call(path, init) {
  let resp;
  try {
    resp = await fetch(path, init);
  } catch {
    throw new Error("The server did not answer.");
  }
  const text = resp.status === 204 ? "" : await resp.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!resp.ok) {
    // The API's error envelope: {type, code, detail, attr}.
    if (data && typeof data.detail === "string") throw new ApiError(resp.status, data.detail, data.code, data.attr);
    // Anything else (the local front's 502, Cognito's errors): its message, if any.
    const message = data && (data.message || data.Message);
    throw new ApiError(resp.status, message ? String(message) : `HTTP ${resp.status}`, data && data.__type);
  }
  return data;
}

// --- base64url and WebAuthn JSON ---------------------------------------------------------------

function toBase64url(buffer) {
  const bytes = new Uint8Array(buffer);
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function fromBase64url(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const s = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(s, (c) => c.charCodeAt(0)).buffer;
}

// Extension inputs that no browser takes (webauthn-rs asks for `uvm`).
const UNSUPPORTED_EXTENSIONS = ["uvm"];

function withoutUnsupportedExtensions(options) {
  const out = { ...options };
  if (out.extensions) {
    out.extensions = { ...out.extensions };
    for (const name of UNSUPPORTED_EXTENSIONS) delete out.extensions[name];
  }
  return out;
}

function creationOptions(json) {
  const options = withoutUnsupportedExtensions(json);
  if (typeof PublicKeyCredential.parseCreationOptionsFromJSON === "function") {
    return PublicKeyCredential.parseCreationOptionsFromJSON(options);
  }
  return {
    ...options,
    challenge: fromBase64url(options.challenge),
    user: { ...options.user, id: fromBase64url(options.user.id) },
    excludeCredentials: (options.excludeCredentials || []).map((c) => ({ ...c, id: fromBase64url(c.id) })),
  };
}

function requestOptions(json) {
  const options = withoutUnsupportedExtensions(json);
  if (typeof PublicKeyCredential.parseRequestOptionsFromJSON === "function") {
    return PublicKeyCredential.parseRequestOptionsFromJSON(options);
  }
  return {
    ...options,
    challenge: fromBase64url(options.challenge),
    allowCredentials: (options.allowCredentials || []).map((c) => ({ ...c, id: fromBase64url(c.id) })),
  };
}

// A credential as JSON (PublicKeyCredential.toJSON, or the same by hand where it is missing).
function credentialJSON(cred) {
  if (typeof cred.toJSON === "function") return cred.toJSON();
  const r = cred.response;
  const response = { clientDataJSON: toBase64url(r.clientDataJSON) };
  if (r.attestationObject) {
    response.attestationObject = toBase64url(r.attestationObject);
    response.transports = typeof r.getTransports === "function" ? r.getTransports() : [];
    if (typeof r.getAuthenticatorData === "function") response.authenticatorData = toBase64url(r.getAuthenticatorData());
    const publicKey = typeof r.getPublicKey === "function" ? r.getPublicKey() : null;
    if (publicKey) response.publicKey = toBase64url(publicKey);
    if (typeof r.getPublicKeyAlgorithm === "function") response.publicKeyAlgorithm = r.getPublicKeyAlgorithm();
  } else {
    response.authenticatorData = toBase64url(r.authenticatorData);
    response.signature = toBase64url(r.signature);
    response.userHandle = r.userHandle ? toBase64url(r.userHandle) : null;
  }
  return {
    id: cred.id,
    rawId: toBase64url(cred.rawId),
    type: cred.type,
    response,
    clientExtensionResults: cred.getClientExtensionResults(),
    authenticatorAttachment: cred.authenticatorAttachment ?? null,
  };
}

function requirePasskeys() {
  if (!window.PublicKeyCredential || !navigator.credentials) {
    throw new Error("This browser does not support passkeys (or the page is not in a secure context).");
  }
}

async function createPasskey(optionsJSON) {
  requirePasskeys();
  const cred = await navigator.credentials.create({ publicKey: creationOptions(optionsJSON) });
  if (!cred) throw new Error("No passkey was created.");
  return credentialJSON(cred);
}

async function getAssertion(optionsJSON) {
  requirePasskeys();
  const cred = await navigator.credentials.get({ publicKey: requestOptions(optionsJSON) });
  if (!cred) throw new Error("No passkey answered.");
  return credentialJSON(cred);
}

// --- sign-in -----------------------------------------------------------------------------------

async function loadConfig() {
  try {
    const resp = await fetch("/config.json", { cache: "no-store", credentials: "omit" });
    if (resp.ok) config = await resp.json();
  } catch {
    config = { userPool: null };
  }
  const pool = config.userPool;
  $("pool-unavailable").hidden = Boolean(pool);
  for (const id of ["pool-username", "pool-password", "pool-submit"]) $(id).disabled = !pool;
}

async function signInWithKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  $("api-key").value = ""; // the key is kept in the session only, never in the field
  await act("signin-status", "Checking the key…", async () => {
    if (!key) throw new Error("Enter a personal API key.");
    const user = await startSession({ bearer: key, via: "key" });
    return `Signed in as ${user.email} with a personal API key.`;
  });
}

async function signInWithPool(event) {
  event.preventDefault();
  const username = $("pool-username").value.trim();
  const password = $("pool-password").value;
  $("pool-password").value = "";
  await act("signin-status", "Signing in to the user pool…", async () => {
    const pool = config.userPool;
    if (!pool) throw new Error("The page server knows no user pool.");
    // Cognito's InitiateAuth (USER_PASSWORD_AUTH), through the page server's same-origin path.
    const result = await call(pool.endpoint, {
      method: "POST",
      headers: {
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "AWSCognitoIdentityProviderService.InitiateAuth",
      },
      body: JSON.stringify({
        AuthFlow: "USER_PASSWORD_AUTH",
        ClientId: pool.clientId,
        AuthParameters: { USERNAME: username, PASSWORD: password },
      }),
      cache: "no-store",
      credentials: "omit",
    });
    const token = result && result.AuthenticationResult && result.AuthenticationResult.AccessToken;
    if (!token) throw new Error("The user pool asked for another step (a challenge), which this page does not do.");
    const user = await startSession({ bearer: token, via: "pool" });
    return `Signed in as ${user.email} through the user pool.`;
  });
}

// Takes a credential on trial: it becomes the session only if the API accepts it.
async function startSession(candidate) {
  const previous = session;
  session = candidate;
  let user;
  try {
    user = await api("GET", "/api/users/@me/");
  } catch (err) {
    session = previous;
    throw err;
  }
  showUser(user);
  $("user-credential").textContent = candidate.via === "key" ? "a personal API key" : "the user pool (access token)";
  $("account").hidden = false;
  for (const id of ["user-status", "two-factor-status", "totp-status", "backup-status", "passkeys-status", "check-status"]) {
    clearStatus(id);
  }
  $("totp-setup").hidden = true;
  $("backup-codes").hidden = true;
  const [status, passkeys] = await Promise.allSettled([refreshStatus(), refreshPasskeys()]);
  if (status.status === "rejected") setStatus("two-factor-status", "error", messageOf(status.reason), status.reason.code);
  if (passkeys.status === "rejected") setStatus("passkeys-status", "error", messageOf(passkeys.reason), passkeys.reason.code);
  return user;
}

function signOut() {
  session = null;
  $("account").hidden = true;
  for (const id of ["user-email", "user-name", "user-uuid", "user-credential", "totp-secret"]) $(id).textContent = "";
  $("backup-codes").replaceChildren();
  $("passkey-list").replaceChildren();
  $("totp-setup").hidden = true;
  const canvas = $("totp-qr");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  setStatus("signin-status", "ok", "Signed out.");
}

// --- the user and the 2FA status ---------------------------------------------------------------

function showUser(user) {
  $("user-email").textContent = user.email;
  $("user-name").textContent = `${user.first_name || ""} ${user.last_name || ""}`.trim() || "—";
  $("user-uuid").textContent = user.uuid;
  $("passkey-2fa").checked = Boolean(user.passkeys_enabled_for_2fa);
}

const yesNo = (v) => (v ? "on" : "off");

// GET two_factor_status: the facts, and the backup codes (shown only when asked for).
async function refreshStatus() {
  const s = await api("GET", "/api/users/@me/two_factor_status/");
  $("tf-enabled").textContent = yesNo(s.is_enabled);
  $("tf-method").textContent = s.method || "none";
  $("tf-totp").textContent = s.has_totp ? "set up" : "not set up";
  $("tf-passkeys").textContent = s.has_passkeys ? "registered" : "none";
  $("tf-passkey-2fa").textContent = yesNo(s.passkeys_enabled_for_2fa);
  $("passkey-2fa").checked = Boolean(s.passkeys_enabled_for_2fa);
  return s;
}

function showBackupCodes(codes) {
  const list = $("backup-codes");
  list.replaceChildren(...codes.map((c) => {
    const li = document.createElement("li");
    li.textContent = c;
    li.dataset.testid = "backup-code";
    return li;
  }));
  list.hidden = codes.length === 0;
}

// --- TOTP --------------------------------------------------------------------------------------

// Draws the otpauth URI as a QR code: dark modules on white, a quiet zone of 4 modules.
function drawQr(canvas, text) {
  const qr = qrcode(0, "M");
  qr.addData(text, "Byte");
  qr.make();
  const modules = qr.getModuleCount();
  const quiet = 4;
  const scale = Math.max(4, Math.floor(240 / (modules + 2 * quiet)));
  const size = (modules + 2 * quiet) * scale;
  canvas.width = size;
  canvas.height = size;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, size, size);
  ctx.fillStyle = "#000";
  for (let r = 0; r < modules; r++) {
    for (let c = 0; c < modules; c++) {
      if (qr.isDark(r, c)) ctx.fillRect((c + quiet) * scale, (r + quiet) * scale, scale, scale);
    }
  }
}

async function startTotp() {
  await act("totp-status", "Starting the setup…", async () => {
    const setup = await api("GET", "/api/users/@me/two_factor_start_setup/");
    drawQr($("totp-qr"), setup.otpauth_uri);
    $("totp-secret").textContent = setup.secret.replace(/(.{4})/g, "$1 ").trim();
    $("totp-setup").hidden = false;
    $("totp-code").value = "";
    return "Scan the QR code, then enter the app's code to turn it on.";
  });
  if (!$("totp-setup").hidden) $("totp-code").focus();
}

async function confirmTotp(event) {
  event.preventDefault();
  const token = $("totp-code").value.replace(/\s+/g, "");
  await act("totp-status", "Checking the code…", async () => {
    await api("POST", "/api/users/@me/two_factor_validate/", { token });
    $("totp-setup").hidden = true;
    $("totp-secret").textContent = "";
    $("totp-code").value = "";
    $("totp-qr").getContext("2d").clearRect(0, 0, $("totp-qr").width, $("totp-qr").height);
    await refreshStatus().catch(() => {});
    return "The authenticator app is on: two-factor sign-in asks for its codes.";
  });
}

// --- backup codes ------------------------------------------------------------------------------

async function showBackup() {
  await act("backup-status", "Loading…", async () => {
    const s = await refreshStatus();
    showBackupCodes(s.backup_codes || []);
    const n = (s.backup_codes || []).length;
    return n ? `${n} unused backup code${n === 1 ? "" : "s"}.` : "No backup codes.";
  });
}

async function regenerateBackup() {
  await act("backup-status", "Making new codes…", async () => {
    const result = await api("POST", "/api/users/@me/two_factor_backup_codes/");
    showBackupCodes(result.backup_codes);
    return `${result.backup_codes.length} new backup codes: keep them somewhere safe. The earlier ones no longer work.`;
  });
}

// --- passkeys ----------------------------------------------------------------------------------

function describe(p) {
  const when = p.created_at ? new Date(p.created_at) : null;
  const added = when && !Number.isNaN(when.getTime()) ? `added ${when.toLocaleString()}` : "";
  return [p.authenticator_type, added].filter(Boolean).join(", ");
}

function showPasskeys(passkeys) {
  const template = $("passkey-item");
  const items = passkeys.map((p) => {
    const li = template.content.firstElementChild.cloneNode(true);
    li.dataset.id = p.id;
    li.dataset.label = p.label;
    li.dataset.verified = String(Boolean(p.verified));
    const name = li.querySelector(".passkey-name");
    name.value = p.label;
    name.setAttribute("aria-label", `Name of the passkey ${p.label}`);
    const badge = li.querySelector(".badge");
    badge.textContent = p.verified ? "Verified" : "Not verified";
    badge.classList.toggle("ok", Boolean(p.verified));
    li.querySelector(".passkey-info").textContent = describe(p);
    const verify = li.querySelector(".passkey-verify");
    verify.hidden = Boolean(p.verified);
    verify.setAttribute("aria-label", `Verify the passkey ${p.label}`);
    verify.addEventListener("click", () => verifyPasskey(p));
    const del = li.querySelector(".passkey-delete");
    del.setAttribute("aria-label", `Delete the passkey ${p.label}`);
    del.addEventListener("click", () => deletePasskey(p));
    li.querySelector(".passkey-rename").addEventListener("submit", (e) => renamePasskey(e, p, name));
    return li;
  });
  $("passkey-list").replaceChildren(...items);
  $("passkey-empty").hidden = items.length > 0;
}

async function refreshPasskeys() {
  const passkeys = await api("GET", "/api/webauthn/credentials/");
  showPasskeys(passkeys);
  return passkeys;
}

async function registerPasskey(event) {
  event.preventDefault();
  const label = $("passkey-label").value.trim();
  await act("passkeys-status", "Follow your browser's passkey prompt…", async () => {
    if (!label) throw new Error("Name the passkey first.");
    const options = await api("POST", "/api/webauthn/register/begin/");
    const credential = await createPasskey(options);
    await api("POST", "/api/webauthn/register/complete/", { ...credential, label });
    $("passkey-label").value = "";
    await refreshPasskeys();
    await refreshStatus().catch(() => {});
    return `Passkey "${label}" added. Verify it to use it for sign-in.`;
  });
}

async function verifyPasskey(p) {
  await act("passkeys-status", "Use the passkey to verify it…", async () => {
    const options = await api("POST", `/api/webauthn/credentials/${encodeURIComponent(p.id)}/verify/`);
    const assertion = await getAssertion(options);
    const verified = await api("POST", `/api/webauthn/credentials/${encodeURIComponent(p.id)}/verify_complete/`, assertion);
    await refreshPasskeys();
    await refreshStatus().catch(() => {});
    return `Passkey "${verified.label}" is verified.`;
  });
}

async function renamePasskey(event, p, input) {
  event.preventDefault();
  const label = input.value.trim();
  await act("passkeys-status", "Renaming…", async () => {
    const updated = await api("PATCH", `/api/webauthn/credentials/${encodeURIComponent(p.id)}/`, { label });
    await refreshPasskeys();
    return `Passkey renamed to "${updated.label}".`;
  });
}

async function deletePasskey(p) {
  if (!window.confirm(`Delete the passkey "${p.label}"? It can no longer be used to sign in.`)) return;
  await act("passkeys-status", "Deleting…", async () => {
    await api("DELETE", `/api/webauthn/credentials/${encodeURIComponent(p.id)}/`);
    await refreshPasskeys();
    await refreshStatus().catch(() => {});
    return `Passkey "${p.label}" deleted.`;
  });
}

async function togglePasskey2fa(event) {
  const box = event.target;
  const wanted = box.checked;
  await act("passkeys-status", "Saving…", async () => {
    let user;
    try {
      user = await api("PATCH", "/api/users/@me/", { passkeys_enabled_for_2fa: wanted });
    } catch (err) {
      box.checked = !wanted;
      throw err;
    }
    box.checked = Boolean(user.passkeys_enabled_for_2fa);
    await refreshStatus().catch(() => {});
    return wanted ? "Passkeys are on for two-factor sign-in." : "Passkeys are off for two-factor sign-in.";
  });
}

// --- the sign-in check -------------------------------------------------------------------------

const METHODS = { totp: "an authenticator code", backup_code: "a backup code", passkey: "a passkey" };

function checkedMessage(result) {
  return `Sign-in check passed with ${METHODS[result.method] || result.method} (method: ${result.method}).`;
}

async function checkCode(event) {
  event.preventDefault();
  const token = $("check-code").value.trim();
  await act("check-status", "Checking…", async () => {
    const result = await api("POST", "/api/users/@me/two_factor_verify/", { token });
    $("check-code").value = "";
    return checkedMessage(result);
  });
}

async function checkPasskey() {
  await act("check-status", "Use a passkey to sign in…", async () => {
    const options = await api("POST", "/api/users/@me/two_factor_passkey_begin/");
    const assertion = await getAssertion(options);
    const result = await api("POST", "/api/users/@me/two_factor_verify/", {
      credential_id: assertion.id,
      response: assertion.response,
    });
    return checkedMessage(result);
  });
}

// --- wiring ------------------------------------------------------------------------------------

function refreshAll() {
  return act("user-status", "Refreshing…", async () => {
    const user = await api("GET", "/api/users/@me/");
    showUser(user);
    await Promise.all([refreshStatus(), refreshPasskeys()]);
    return "Up to date.";
  });
}

function init() {
  $("key-form").addEventListener("submit", signInWithKey);
  $("pool-form").addEventListener("submit", signInWithPool);
  $("sign-out").addEventListener("click", signOut);
  $("user-refresh").addEventListener("click", refreshAll);
  $("tf-refresh").addEventListener("click", () =>
    act("two-factor-status", "Refreshing…", async () => { await refreshStatus(); return "Up to date."; }));
  $("totp-start").addEventListener("click", startTotp);
  $("totp-form").addEventListener("submit", confirmTotp);
  $("backup-show").addEventListener("click", showBackup);
  $("backup-regenerate").addEventListener("click", regenerateBackup);
  $("passkey-register-form").addEventListener("submit", registerPasskey);
  $("passkey-2fa").addEventListener("change", togglePasskey2fa);
  $("check-code-form").addEventListener("submit", checkCode);
  $("check-passkey").addEventListener("click", checkPasskey);
  document.body.dataset.ready = "true";
  return loadConfig();
}

init();
