// The built package in plain Node 20, with no TypeScript loader: `@userdata/web`
// is imported by its name, so Node resolves it through package.json's
// `exports` to dist/, as an application installing it from npm would. The
// other tests import src/ through tsx and cannot catch a broken emit, import
// specifier or exports map. Plain JavaScript on purpose; run by `npm test`
// after `npm run build`.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { SignJWT, importPKCS8 } from "jose";
import { createStore } from "tinybase";
import { createUserDataClients, createUserDataPersister } from "@userdata/web";

const REPO_ROOT = resolve(fileURLToPath(import.meta.url), "../../../../..");
// Must match what user-service is told to expect (CLERK_ISSUER below).
const ISSUER = "https://clerk.dev-only.invalid";
const THEME_DARK = 2;

let dir;
let service;
let baseUrl;
let admin;
let privateKeyPem;

/** Starts the cargo-built user-service on SQLite trusting a fresh development key; resolves with its URL. */
function startUserService(publicKeyPem, tokensFile) {
  const bin =
    process.env.USER_SERVICE_BIN ?? join(process.env.CARGO_TARGET_DIR ?? join(REPO_ROOT, "target"), "debug", "user-service");
  if (!existsSync(bin)) throw new Error(`user-service binary not found at ${bin}: run \`cargo build -p user-service\` or set USER_SERVICE_BIN`);
  const env = { ...process.env, CLERK_JWT_KEY: publicKeyPem, CLERK_ISSUER: ISSUER, RUST_LOG: "info" };
  delete env.DATABASE_URL;
  delete env.USER_SERVICE_CORS_ORIGINS;
  const args = ["--listen", "127.0.0.1:0", "--database-url", `sqlite://${join(dir, "userdata.db")}`];
  args.push("--auth-tokens", tokensFile, "--metrics-listen", "off", "--log-format", "json");
  service = spawn(bin, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  return new Promise((resolveUrl, reject) => {
    let output = "";
    const onData = (chunk) => {
      output += chunk;
      for (const line of String(chunk).split("\n")) {
        if (!line.includes("user-service listening")) continue;
        const addr = JSON.parse(line).addr;
        if (addr) resolveUrl(`http://${addr}`);
      }
    };
    service.stdout.on("data", onData);
    service.stderr.on("data", onData);
    service.once("error", reject);
    service.once("exit", (code) => reject(new Error(`user-service (${bin}) exited (${code}) before listening:\n${output}`)));
  });
}

/** A session token as Clerk would issue it, signed with the development key. */
async function sessionToken(sub) {
  const key = await importPKCS8(privateKeyPem, "RS256");
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ sid: `sess_${randomBytes(8).toString("hex")}` })
    .setProtectedHeader({ alg: "RS256", kid: "dev" })
    .setSubject(sub)
    .setIssuer(ISSUER)
    .setIssuedAt(now)
    .setNotBefore(now - 5)
    .setExpirationTime(now + 60)
    .sign(key);
}

/** Waits until `condition` holds, checked every 10 ms. */
async function until(what, condition, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "userdata-web-node-"));
  const keys = generateKeyPairSync("rsa", {
    modulusLength: 2048,
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
    publicKeyEncoding: { type: "spki", format: "pem" },
  });
  privateKeyPem = keys.privateKey;
  const serviceToken = randomBytes(24).toString("hex");
  const tokensFile = join(dir, "tokens");
  writeFileSync(tokensFile, `test-admin read,write,admin ${serviceToken}\n`, { mode: 0o600 });
  baseUrl = await startUserService(keys.publicKey, tokensFile);
  // The package's own typed clients, with a service token, stand in for the gateway and an admin.
  admin = createUserDataClients({ baseUrl, getToken: async () => serviceToken });
});

after(async () => {
  if (service && service.exitCode === null) {
    await new Promise((done) => {
      service.once("exit", done);
      service.kill("SIGKILL");
    });
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("the built package, imported by name in plain Node, loads a signed-in user's state and follows a change", async () => {
  const clerkId = `user_node${Date.now().toString(36)}`;
  await admin.users.createUser({ user: { clerkId, email: `${clerkId}@example.org` } });
  await admin.data.updatePreferences({ clerkId, preferences: { theme: THEME_DARK }, updateMask: { paths: ["theme"] } });

  const store = createStore();
  const statuses = [];
  const persister = createUserDataPersister(store, {
    baseUrl,
    getToken: () => sessionToken(clerkId),
    onStatus: (status) => statuses.push(status),
  });
  try {
    await persister.startAutoLoad();
    assert.equal(store.getValue("theme"), "dark");
    assert.equal(store.getValue("email"), `${clerkId}@example.org`);
    await until("the stream to be live", () => statuses.at(-1) === "live");

    await admin.data.updatePreferences({ clerkId, preferences: { language: "fr" }, updateMask: { paths: ["language"] } });

    await until("the change to arrive through WatchChanges", () => store.getValue("language") === "fr");
  } finally {
    await persister.destroy();
  }
});
