// Development mode as the README documents it: `npx tsx dev/cli.ts token <clerk id>`
// prints a session token that a user-service started with the matching
// development key accepts for that user.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { DevUserService } from "../dev/user-service.js";
import { createUserDataClients } from "../src/index.js";

const run = promisify(execFile);
const PACKAGE_DIR = join(dirname(fileURLToPath(import.meta.url)), "..");

let dir: string;
let service: DevUserService | undefined;
before(() => {
  dir = mkdtempSync(join(tmpdir(), "userdata-web-dev-cli-"));
});
after(async () => {
  await service?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test("a token printed by `dev/cli.ts token` reads that user's own preferences from a user-service with the matching key", async () => {
  const clerkId = `user_cli${Date.now().toString(36)}`;
  // A temporary key pair (DEV_WEB_KEYS_DIR), so a developer's data/dev-web/ is left alone.
  const keysDir = join(dir, "keys");
  const { stdout } = await run("npx", ["tsx", "dev/cli.ts", "token", clerkId], {
    cwd: PACKAGE_DIR,
    env: { ...process.env, DEV_WEB_KEYS_DIR: keysDir },
  });
  const token = stdout.trim();
  assert.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/, "one JWT on stdout");

  service = await DevUserService.start({
    dataDir: join(dir, "service"),
    publicKeyPem: readFileSync(join(keysDir, "dev-jwt-public.pem"), "utf8"),
  });
  await service.clients().users.createUser({ user: { clerkId, email: `${clerkId}@example.org` } });
  const asUser = createUserDataClients({ baseUrl: service.url, getToken: async () => token });

  const { preferences } = await asUser.data.getPreferences({ clerkId });

  assert.equal(preferences?.timezone, "UTC");
  assert.equal(preferences?.language, "en");
});
