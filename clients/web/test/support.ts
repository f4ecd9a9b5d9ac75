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
    onWriteError: (e) => errors.push(e),
    onStatus: (s) => statuses.push(s),
    reconnectDelayMs: 50,
    maxReconnectDelayMs: 500,
    ...options,
    // Last, so a test's own fetch is wrapped rather than losing the record.
    fetch: (input, init) => {
      calls.push(methodOf(input));
      return (options.fetch ?? fetch)(input, init);
    },
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

function methodOf(input: Parameters<typeof fetch>[0]): string {
  const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
  return url.slice(url.lastIndexOf("/") + 1);
}

/** A fetch whose WatchChanges streams a test can end the way user-service ends one whose token expired. */
export interface ExpiringStreams {
  fetch: typeof fetch;
  /** The authorization header of each WatchChanges call, in order. */
  tokens: string[];
  /** Ends every open WatchChanges response with `grpc-status: 16` (UNAUTHENTICATED) after its last whole message. */
  expire(): void;
}

/**
 * Stands in for user-service ending a `WatchChanges` stream with
 * UNAUTHENTICATED when the token it was opened with expires: the real
 * response is passed through frame by frame, and `expire()` closes it with a
 * gRPC-Web trailer frame, as the server would. Once user-service does this
 * itself, the same test can run without it: tokens of a few seconds and a
 * negative `tokenRefreshMarginMs` (e.g. -60 s), so the server's ending comes
 * before the persister's own reopen.
 */
export function expiringStreams(): ExpiringStreams {
  const open = new Set<() => void>();
  const tokens: string[] = [];
  const trailer = new TextEncoder().encode("grpc-status: 16\r\ngrpc-message: session token expired\r\n");
  const wrapped: typeof fetch = async (input, init) => {
    const response = await fetch(input, init);
    if (methodOf(input) !== "WatchChanges" || !response.body) return response;
    tokens.push(new Headers(init?.headers).get("authorization") ?? "");
    const reader = response.body.getReader();
    let pending = new Uint8Array(0);
    let closed = false;
    let end = () => {};
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        end = () => {
          if (closed) return;
          closed = true;
          open.delete(end);
          const frame = new Uint8Array(5 + trailer.length);
          frame[0] = 0x80; // gRPC-Web trailer flag
          new DataView(frame.buffer).setUint32(1, trailer.length);
          frame.set(trailer, 5);
          controller.enqueue(frame);
          controller.close();
          void reader.cancel().catch(() => undefined);
        };
        open.add(end);
      },
      async pull(controller) {
        const { done, value } = await reader.read().catch(() => ({ done: true, value: undefined }));
        if (closed) return;
        if (done || !value) {
          closed = true;
          open.delete(end);
          controller.close();
          return;
        }
        const joined = new Uint8Array(pending.length + value.length);
        joined.set(pending);
        joined.set(value, pending.length);
        // Whole frames only, so the trailer can never land inside a message.
        let offset = 0;
        while (joined.length - offset >= 5) {
          const length = new DataView(joined.buffer, offset + 1, 4).getUint32(0);
          if (joined.length - offset < 5 + length) break;
          controller.enqueue(joined.slice(offset, offset + 5 + length));
          offset += 5 + length;
        }
        pending = joined.slice(offset);
      },
      cancel(reason) {
        closed = true;
        open.delete(end);
        return reader.cancel(reason);
      },
    });
    return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
  };
  return {
    fetch: wrapped,
    tokens,
    expire: () => [...open].forEach((end) => end()),
  };
}
