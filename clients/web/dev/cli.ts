/**
 * DEVELOPMENT ONLY: local sign-in without a Clerk account.
 *
 *   tsx dev/cli.ts keys                 make (once) the dev key pair under data/dev-web/
 *   tsx dev/cli.ts token <clerk_id>     print a session token for that user (valid 1 h)
 *   tsx dev/cli.ts serve [clerk_id…]    run user-service on 127.0.0.1:50061 trusting the dev key,
 *                                       with CORS for the demo page, and create those users
 *
 * DEV_WEB_KEYS_DIR puts the key pair elsewhere (default data/dev-web/, as for the demo's dev server).
 *
 * @module
 */
import { join } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import { loadOrCreateDevKeys, mintSessionToken } from "./dev-auth.js";
import { DevUserService, REPO_ROOT } from "./user-service.js";

const DATA_DIR = join(REPO_ROOT, "data", "dev-web");
// The key pair's directory; the same variable the demo's dev server reads, so
// tests can use a temporary pair and leave a developer's keys alone.
const KEYS_DIR = process.env["DEV_WEB_KEYS_DIR"] ?? DATA_DIR;
const DEMO_ORIGINS = ["http://localhost:5173", "http://127.0.0.1:5173"];

async function main(): Promise<void> {
  const [command, ...rest] = process.argv.slice(2);
  const keys = loadOrCreateDevKeys(KEYS_DIR);
  switch (command) {
    case "keys":
      console.log(`development key pair in ${KEYS_DIR} (public key: dev-jwt-public.pem)`);
      return;
    case "token": {
      const sub = rest[0];
      if (!sub) throw new Error("usage: token <clerk_id>");
      console.log(await mintSessionToken(keys.privateKeyPem, { sub, ttlSeconds: 3600 }));
      return;
    }
    case "serve": {
      const service = await DevUserService.start({
        dataDir: DATA_DIR,
        publicKeyPem: keys.publicKeyPem,
        corsOrigins: DEMO_ORIGINS,
        port: Number(process.env["DEV_USER_SERVICE_PORT"] ?? 50061),
        verbose: true,
      });
      const { users } = service.clients();
      for (const clerkId of rest.length > 0 ? rest : ["user_dev_demo"]) {
        try {
          await users.createUser({ user: { clerkId, email: `${clerkId}@example.org`, firstName: "Dev" } });
          console.error(`dev: created ${clerkId}`);
        } catch (error) {
          if (!(error instanceof ConnectError && error.code === Code.AlreadyExists)) throw error;
        }
      }
      console.error(`dev: user-service on ${service.url} (development keys; service token in ${service.tokensFile})`);
      const stop = () => void service.stop().then(() => process.exit(0));
      process.on("SIGINT", stop);
      process.on("SIGTERM", stop);
      return;
    }
    default:
      throw new Error("usage: cli.ts keys | token <clerk_id> | serve [clerk_id…]");
  }
}

main().catch((error: unknown) => {
  console.error(`dev: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
});
