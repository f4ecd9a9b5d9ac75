// DEVELOPMENT ONLY: `/dev/token?sub=<clerk id>` mints a session token with
// the local development key (data/dev-web/, made on first use), standing in
// for Clerk's getToken(). user-service trusts it only when started with that
// key (`scripts/dev-web`). Neither `vite build` nor `vite preview` serves it.
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { defineConfig, type Plugin } from "vite";
import { loadOrCreateDevKeys, mintSessionToken } from "../../clients/web/dev/dev-auth.js";

const REPO_ROOT = fileURLToPath(new URL("../..", import.meta.url));

const CLERK_ID = /^[A-Za-z0-9_]{1,64}$/;

function devTokens(): Plugin {
  const dir = process.env["DEV_WEB_KEYS_DIR"] ?? join(REPO_ROOT, "data", "dev-web");
  const ttlSeconds = Number(process.env["DEV_WEB_TOKEN_TTL"] ?? 60);
  return {
    name: "userdata-dev-tokens",
    apply: "serve",
    configureServer(server) {
      const keys = loadOrCreateDevKeys(dir);
      server.middlewares.use("/dev/token", (req, res) => {
        const sub = new URL(req.url ?? "", "http://dev").searchParams.get("sub") ?? "";
        if (!CLERK_ID.test(sub)) {
          res.statusCode = 400;
          res.end("sub: a Clerk user id (letters, digits, _) is required");
          return;
        }
        void mintSessionToken(keys.privateKeyPem, { sub, ttlSeconds }).then((token) => {
          res.setHeader("content-type", "application/json");
          res.setHeader("cache-control", "no-store");
          res.end(JSON.stringify({ token, exp: Math.floor(Date.now() / 1000) + ttlSeconds }));
        });
      });
    },
  };
}

export default defineConfig({
  plugins: [devTokens()],
  // One copy of each library shared with the linked @userdata/web package.
  resolve: { dedupe: ["tinybase", "@bufbuild/protobuf"] },
  server: { host: "127.0.0.1", port: 5173, strictPort: false },
});
