// Test support: one user-service per test file (the cargo-built binary on
// SQLite in a temp dir, development keys made here), fresh users, tokens,
// and waiting for conditions.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createStore, type Store } from "tinybase";
import { type DevKeys, generateDevKeys, mintSessionToken } from "../dev/dev-auth.js";
import { DevUserService, type ServiceClients } from "../dev/user-service.js";
import { type ConnectionStatus, type UserDataPersisterOptions, type UserDataWriteError, createUserDataPersister } from "../src/index.js";

export interface Harness {
  service: DevUserService;
  admin: ServiceClients;
  keys: DevKeys;
  close(): Promise<void>;
}

export async function startHarness(args: string[] = []): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), "userdata-web-test-"));
  const keys = generateDevKeys();
  const service = await DevUserService.start({ dataDir: dir, publicKeyPem: keys.publicKeyPem, args });
  return {
    service,
    admin: service.clients(),
    keys,
    async close() {
      await service.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

let counter = 0;
/** A Clerk-shaped id unique to this run. */
export function freshClerkId(): string {
  counter += 1;
  return `user_t${Date.now().toString(36)}${process.pid}x${counter}`;
}

/** Creates a user as the gateway would. */
export async function createUser(h: Harness, clerkId = freshClerkId()): Promise<string> {
  await h.admin.users.createUser({ user: { clerkId, email: `${clerkId}@example.org` } });
  return clerkId;
}

/** What a client records while it runs. */
export interface Client {
  store: Store;
  persister: ReturnType<typeof createUserDataPersister>;
  errors: UserDataWriteError[];
  statuses: ConnectionStatus[];
  /** RPC method names called, in order. */
  calls: string[];
  tokensMinted: () => number;
}

const opened: ReturnType<typeof createUserDataPersister>[] = [];

/** Destroys every persister made by {@link client} (a failed test leaves none running). */
export async function destroyClients(): Promise<void> {
  await Promise.all(opened.splice(0).map((p) => p.destroy()));
}

/** A store and a persister for `clerkId` with tokens minted by the dev key. */
export function client(h: Harness, clerkId: string, options: Partial<UserDataPersisterOptions> & { ttlSeconds?: number } = {}): Client {
  const store = createStore();
  const errors: UserDataWriteError[] = [];
  const statuses: ConnectionStatus[] = [];
  const calls: string[] = [];
  let minted = 0;
  const persister = createUserDataPersister(store, {
    baseUrl: h.service.url,
    getToken: async () => {
      minted += 1;
      return mintSessionToken(h.keys.privateKeyPem, { sub: clerkId, ttlSeconds: options.ttlSeconds ?? 60 });
    },
    fetch: (input, init) => {
      const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
      calls.push(url.slice(url.lastIndexOf("/") + 1));
      return fetch(input, init);
    },
    onWriteError: (e) => errors.push(e),
    onStatus: (s) => statuses.push(s),
    reconnectDelayMs: 50,
    maxReconnectDelayMs: 500,
    ...options,
  });
  opened.push(persister);
  return { store, persister, errors, statuses, calls, tokensMinted: () => minted };
}

/** Waits until `condition` holds (checked every 10 ms), failing after `timeoutMs`. */
export async function until(what: string, condition: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Waits until the client's stream is live. */
export function live(c: Client): Promise<void> {
  return until("the stream to be live", () => c.statuses.at(-1) === "live");
}

/** A TinyBase result as plain JSON (TinyBase's objects have no prototype). */
export function plain<T>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}
