// The browser tests' stack: the cargo-built user-service (SQLite in a temp
// dir, development keys made here), this demo on Vite's dev server (minting
// tokens with those keys), and Debian's Chromium driven by playwright-core.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type BrowserContext, type Page, chromium } from "playwright-core";
import { type ViteDevServer, createServer } from "vite";
import { loadOrCreateDevKeys } from "../../../clients/web/dev/dev-auth.js";
import { DevUserService, REPO_ROOT } from "../../../clients/web/dev/user-service.js";

/** Chromium from the distribution (scripts/setup installs it); never downloaded. */
export const CHROMIUM = process.env["CHROMIUM_PATH"] ?? "/usr/bin/chromium";
const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

export interface Stack {
  service: DevUserService;
  vite: ViteDevServer;
  pageUrl: string;
  browser: BrowserContext;
  /** Opens the demo signed in as `clerkId` and waits until it is live. */
  open(clerkId: string): Promise<Page>;
  /**
   * Closes the pages opened so far. Each open page holds one HTTP/1.1
   * connection for its stream, and Chromium allows six per origin.
   */
  closePages(): Promise<void>;
  close(): Promise<void>;
}

export async function startStack(): Promise<Stack> {
  const dir = mkdtempSync(join(tmpdir(), "userdata-web-e2e-"));
  const keysDir = join(dir, "keys");
  const keys = loadOrCreateDevKeys(keysDir);
  process.env["DEV_WEB_KEYS_DIR"] = keysDir;
  const vite = await createServer({
    root: join(REPO_ROOT, "examples", "web"),
    configFile: join(REPO_ROOT, "examples", "web", "vite.config.ts"),
    server: { host: "127.0.0.1", port: 0 },
    logLevel: "warn",
  });
  await vite.listen();
  const address = vite.httpServer?.address();
  if (!address || typeof address === "string") throw new Error("vite did not listen on a TCP port");
  const origin = `http://127.0.0.1:${address.port}`;
  const service = await DevUserService.start({ dataDir: join(dir, "service"), publicKeyPem: keys.publicKeyPem, corsOrigins: [origin] });
  const browser = await chromium.launchPersistentContext(join(dir, "chromium-profile"), {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_FLAGS,
  });
  const pages: Page[] = [];
  return {
    service,
    vite,
    pageUrl: origin,
    browser,
    async open(clerkId: string) {
      const page = await browser.newPage();
      pages.push(page);
      page.on("pageerror", (error) => console.error(`page error: ${error.message}`));
      await page.goto(`${origin}/?user=${encodeURIComponent(clerkId)}&api=${encodeURIComponent(service.url)}`);
      await page.locator('[data-testid="status"][data-status="live"]').waitFor({ timeout: 15_000 });
      return page;
    },
    async closePages() {
      await Promise.all(pages.splice(0).map((p) => p.close()));
    },
    async close() {
      await browser.close().catch(() => undefined);
      await vite.close().catch(() => undefined);
      await service.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A fresh user, created the way the gateway would (service token). */
export async function createUser(service: DevUserService, clerkId: string): Promise<void> {
  await service.clients().users.createUser({ user: { clerkId, email: `${clerkId}@example.org` } });
}

let counter = 0;
/** A Clerk-shaped id unique to this run. */
export function freshClerkId(): string {
  counter += 1;
  return `user_e2e${Date.now().toString(36)}${counter}`;
}

/** Waits until `condition` holds (checked every 20 ms), failing after `timeoutMs`. */
export async function until(condition: () => Promise<boolean> | boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error("timed out waiting for a condition");
    await new Promise((r) => setTimeout(r, 20));
  }
}
