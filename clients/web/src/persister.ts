/**
 * `createUserDataPersister`: a TinyBase persister whose other side is
 * user-service. Loading reads the signed-in user's state through the typed
 * RPCs; auto-load follows `WatchChanges`; saving writes local edits back
 * through the typed RPCs with etags, and puts refused edits back.
 *
 * @module
 */
import { fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Content, Store } from "tinybase";
import { createCustomPersister, type Persister, type PersisterListener } from "tinybase/persisters";
import { type ClientOptions, type GetToken, type UserDataClients, createUserDataClients } from "./client.js";
import { type FieldViolation, UserDataWriteError, hasCode } from "./errors.js";
import { ChangeKind, type Change } from "./gen/userdata/v1/change_service_pb.js";
import {
  CUSTOM_CELL,
  CUSTOM_PREFIX,
  CUSTOM_TABLE,
  FLAG_CELL,
  FLAGS_KEY,
  FLAGS_TABLE,
  ONBOARDING_KEY,
  type OnboardingState,
  PREFERENCE_VALUES,
  type PreferenceId,
  type PreferencesState,
  PREFERENCES_KEY,
  PROFILE_VALUES,
  profileFromJson,
  profileFromProto,
  flagsFromJson,
  jsonEqual,
  onboardingFromJson,
  onboardingFromProto,
  preferencesFromJson,
  preferencesFromProto,
  stepToProto,
  themeToProto,
} from "./layout.js";
import {
  type Flat,
  type Location,
  type ServerState,
  changesFor,
  contentFor,
  describeLocation,
  emptyState,
  flattenState,
  flattenStore,
  locationKey,
  parseLocationKey,
} from "./state.js";
import { readSessionClaims } from "./token.js";

/** Where the persister's change stream is. */
export type ConnectionStatus =
  /** Opening the stream (first time, or after a token refresh). */
  | "connecting"
  /** Following: every committed change is being applied. */
  | "live"
  /** The stream broke; trying again with backoff, from the last cursor. */
  | "reconnecting"
  /** `getToken()` gave no token; trying again with backoff. */
  | "signed-out"
  /** Auto-load stopped. */
  | "stopped";

/** Options of {@link createUserDataPersister}. */
export interface UserDataPersisterOptions extends ClientOptions {
  /**
   * The user's Clerk id. Default: the `sub` claim of the session token (read,
   * not verified: user-service verifies it and only serves that user).
   */
  clerkId?: string;
  /** Called with each local edit the server refused, after it was rolled back. */
  onWriteError?: (error: UserDataWriteError) => void;
  /** Called when the stream's status changes. */
  onStatus?: (status: ConnectionStatus) => void;
  /** Called with errors that were handled by retrying (network, server restarts). */
  onIgnoredError?: (error: unknown) => void;
  /** First reconnect delay; doubles up to `maxReconnectDelayMs`, with jitter. Default 250 ms. */
  reconnectDelayMs?: number;
  /** Longest reconnect delay. Default 10 s. */
  maxReconnectDelayMs?: number;
  /** No change or heartbeat for this long means the stream is dead: reconnect. Default 45 s. */
  idleTimeoutMs?: number;
  /** Reopen the stream with a fresh token this long before the current one expires. Default 5 s. */
  tokenRefreshMarginMs?: number;
}

/** What one stream got to; read by the reconnect loop when the stream fails. */
interface StreamAttempt {
  /** It got as far as following (the server accepted its token). */
  healthy: boolean;
  /** The session token it was opened with. */
  token: string | undefined;
}

/** The key a refused profile edit names: the user record, not user data. */
const USER_KEY = "user";

/** How many times a write is tried again after a stale etag that did not touch its fields. */
const MAX_ETAG_RETRIES = 2;

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (error: unknown) => void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Waits `ms`, or less if `signal` aborts. */
const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done);
  });

/** The JSON of a google.protobuf.Value field, undefined when absent. */
function jsonOf(value: Change["after"]): JsonValue | undefined {
  return value === undefined ? undefined : toJson(ValueSchema, value);
}

/** A local edit refused before reaching the server. */
function localRefusal(key: string, code: Code, violations: FieldViolation[]): UserDataWriteError {
  return new UserDataWriteError({
    code,
    key,
    message: violations.map((v) => `${v.field}: ${v.description}`).join("; "),
    fieldViolations: violations,
    reason: code === Code.InvalidArgument ? "INVALID_ARGUMENT" : "READ_ONLY",
  });
}

/**
 * The state of one persister: what the server holds, the stream that keeps
 * it current, and the writes.
 */
class UserDataSync {
  readonly clients: UserDataClients;
  state: ServerState | undefined;
  private clerkId: string | undefined;
  private cursor = "";
  private listener: PersisterListener | undefined;
  private running: AbortController | undefined;
  private firstSnapshot: Deferred<Content> | undefined;
  private status: ConnectionStatus = "stopped";

  constructor(
    readonly store: Store,
    readonly options: UserDataPersisterOptions,
  ) {
    this.clients = createUserDataClients(options);
  }

  // ---- identity ------------------------------------------------------------

  private async token(): Promise<string | undefined> {
    return (await this.options.getToken()) ?? undefined;
  }

  /** The user addressed: the option, else the token's `sub`. */
  async user(): Promise<string> {
    if (this.options.clerkId) return this.options.clerkId;
    if (this.clerkId) return this.clerkId;
    const token = await this.token();
    if (!token) throw new ConnectError("no session token: getToken() returned none", Code.Unauthenticated);
    this.clerkId = readSessionClaims(token).sub;
    return this.clerkId;
  }

  private setStatus(status: ConnectionStatus): void {
    if (status !== this.status) {
      this.status = status;
      this.options.onStatus?.(status);
    }
  }

  private ignored(error: unknown): void {
    this.options.onIgnoredError?.(error);
  }

  // ---- reading ---------------------------------------------------------------

  /** Reads everything the layout holds, with etags. */
  async snapshot(signal?: AbortSignal): Promise<ServerState> {
    const clerkId = await this.user();
    const call = signal ? { signal } : {};
    const [user, prefs, onboarding, flags, custom] = await Promise.all([
      this.clients.users.getUser({ clerkId }, call),
      this.clients.data.getPreferences({ clerkId }, call),
      this.clients.data.getOnboarding({ clerkId }, call),
      this.clients.data.listFeatureFlags({ clerkId }, call),
      this.listCustom(clerkId, signal),
    ]);
    return {
      profile: profileFromProto(user.user),
      preferences: preferencesFromProto(prefs.preferences),
      preferencesEtag: prefs.etag,
      onboarding: onboardingFromProto(onboarding.status),
      onboardingEtag: onboarding.etag,
      flags: { ...flags.flags },
      flagsEtag: flags.etag,
      custom,
    };
  }

  private async listCustom(clerkId: string, signal?: AbortSignal): Promise<ServerState["custom"]> {
    const custom: ServerState["custom"] = new Map();
    let pageToken = "";
    do {
      const page = await this.clients.data.listUserData({ clerkId, pageSize: 1000, pageToken }, signal ? { signal } : {});
      for (const entry of page.entries) {
        if (entry.key.startsWith(CUSTOM_PREFIX) && entry.value) {
          custom.set(entry.key.slice(CUSTOM_PREFIX.length), { value: toJson(ValueSchema, entry.value), etag: entry.etag });
        }
      }
      pageToken = page.nextPageToken;
    } while (pageToken);
    return custom;
  }

  /** TinyBase's `getPersisted`. */
  async getPersisted(): Promise<Content | undefined> {
    if (this.firstSnapshot) {
      // Auto-loading: the stream takes the snapshot once it is attached, so
      // that no change can fall between the two.
      return this.firstSnapshot.promise;
    }
    if (this.running && this.state) return contentFor(this.state, this.store);
    this.state = await this.snapshot();
    return contentFor(this.state, this.store);
  }

  // ---- following -------------------------------------------------------------

  /** TinyBase's `addPersisterListener`: starts following the stream. */
  start(listener: PersisterListener): AbortController {
    const controller = new AbortController();
    this.running = controller;
    this.listener = listener;
    this.firstSnapshot = deferred<Content>();
    // getPersisted may give up on the first snapshot; nobody else awaits it.
    this.firstSnapshot.promise.catch(() => undefined);
    void this.follow(controller.signal);
    return controller;
  }

  /** TinyBase's `delPersisterListener`. */
  stop(controller: AbortController): void {
    controller.abort();
    if (this.running === controller) {
      this.running = undefined;
      this.listener = undefined;
      this.firstSnapshot?.reject(new Error("auto-load stopped before the first snapshot"));
      this.firstSnapshot = undefined;
      this.setStatus("stopped");
    }
  }

  /** Hands a fresh state to the store: to the first load, else as changes. */
  private publish(state: ServerState): void {
    const before = this.state ? flattenState(this.state) : flattenStore(this.store);
    this.state = state;
    if (this.firstSnapshot) {
      const first = this.firstSnapshot;
      this.firstSnapshot = undefined;
      first.resolve(contentFor(state, this.store));
      return;
    }
    // A reload: every location that changed, except those with a local edit.
    this.pushToStore(before, flattenState(state));
  }

  /** Applies to the store each location that moved from `before` to `after`, unless edited locally. */
  private pushToStore(before: Flat, after: Flat): void {
    const current = flattenStore(this.store);
    const updates = new Map<string, JsonValue | undefined>();
    for (const key of new Set([...before.keys(), ...after.keys()])) {
      const was = before.get(key);
      const now = after.get(key);
      if (jsonEqual(was, now)) continue;
      const shown = current.get(key);
      // A location the user has edited (it differs from what the server had)
      // keeps the edit: its write decides.
      if (!jsonEqual(shown, was) && !jsonEqual(shown, now)) continue;
      if (!jsonEqual(shown, now)) updates.set(key, now);
    }
    const changes = changesFor(updates);
    if (changes) {
      if (this.listener) this.listener(undefined, changes);
      else this.store.applyChanges(changes);
    }
  }

  private async follow(signal: AbortSignal): Promise<void> {
    const initialDelay = this.options.reconnectDelayMs ?? 250;
    const maxDelay = this.options.maxReconnectDelayMs ?? 10_000;
    let delay = initialDelay;
    this.setStatus("connecting");
    while (!signal.aborted) {
      const attempt: StreamAttempt = { healthy: false, token: undefined };
      const outcome = await this.followOnce(signal, attempt).catch((error: unknown) => ({ error }));
      if (signal.aborted) break;
      if ("error" in outcome) {
        const error = outcome.error;
        if (hasCode(error, Code.OutOfRange) && this.cursor !== "") {
          // The cursor is older than retention: reload everything, then
          // follow. (From an empty cursor it cannot be: back off below.)
          this.cursor = "";
          this.ignored(error);
          continue;
        }
        if (hasCode(error, Code.Unauthenticated) && attempt.healthy && (await this.hasFreshToken(attempt.token))) {
          // The server ended a stream it had accepted because its token
          // expired (our early reopen lost the race, e.g. clock skew). Not an
          // outage: reopen at once from the cursor with the new token. Only
          // after a stream that was live, so a token refused at open still
          // backs off below instead of spinning.
          this.ignored(error);
          this.setStatus("connecting");
          delay = initialDelay;
          continue;
        }
        // A stream that was live and then broke is a new outage: start the
        // backoff from the beginning.
        if (attempt.healthy) delay = initialDelay;
        // A first snapshot that failed: let load() finish (the store keeps
        // what it has, e.g. a browser cache); it is published when it comes.
        this.firstSnapshot?.reject(error);
        this.firstSnapshot = undefined;
        this.ignored(error);
        this.setStatus(hasCode(error, Code.Unauthenticated) && !(await this.hasToken()) ? "signed-out" : "reconnecting");
        const jitter = 0.5 + Math.random() / 2;
        await sleep(delay * jitter, signal);
        delay = Math.min(delay * 2, maxDelay);
      } else {
        // Ended cleanly: a token refresh, an idle stream, or the server
        // closing it. Resume at once.
        // Status stays as it is: a planned reopen is not an outage.
        if (outcome.healthy) delay = initialDelay;
      }
    }
  }

  private async hasToken(): Promise<boolean> {
    try {
      return Boolean(await this.token());
    } catch {
      return false;
    }
  }

  /** Whether getToken() now gives a token other than `refused`. */
  private async hasFreshToken(refused: string | undefined): Promise<boolean> {
    try {
      const token = await this.token();
      return token !== undefined && token !== "" && token !== refused;
    } catch {
      return false;
    }
  }

  /**
   * One stream: opens it (after the last cursor, or from now with a fresh
   * snapshot when there is none), applies what it brings, and returns when it
   * ends. `healthy` says it got as far as following.
   */
  private async followOnce(signal: AbortSignal, attempt: StreamAttempt): Promise<{ healthy: boolean }> {
    const token = await this.token();
    if (!token) throw new ConnectError("no session token: getToken() returned none", Code.Unauthenticated);
    attempt.token = token;
    const claims = readSessionClaims(token);
    const clerkId = this.options.clerkId ?? claims.sub;
    this.clerkId ??= clerkId;

    const stream = new AbortController();
    const stopStream = () => stream.abort();
    signal.addEventListener("abort", stopStream);
    const timers: ReturnType<typeof setTimeout>[] = [];
    if (claims.exp !== undefined) {
      // Reopen with a fresh token before this one expires.
      const margin = this.options.tokenRefreshMarginMs ?? 5_000;
      const wait = Math.max(claims.exp * 1000 - Date.now() - margin, 1_000);
      timers.push(setTimeout(stopStream, wait));
    }
    const idleTimeout = this.options.idleTimeoutMs ?? 45_000;
    let idle = setTimeout(stopStream, idleTimeout);
    const alive = () => {
      clearTimeout(idle);
      idle = setTimeout(stopStream, idleTimeout);
    };

    const needSnapshot = this.cursor === "" || this.state === undefined;
    // Until the snapshot is in, changes wait here and the cursor is not saved.
    let buffered: Change[] | undefined = needSnapshot ? [] : undefined;
    let pendingCursor = "";
    let healthy = false;
    const opened = deferred<void>();

    const messages = this.clients.changes.watchChanges(
      { cursor: needSnapshot ? "" : this.cursor, clerkId },
      {
        signal: stream.signal,
        headers: { authorization: `Bearer ${token}` },
        onHeader: () => opened.resolve(),
      },
    );

    const consume = async () => {
      for await (const message of messages) {
        alive();
        opened.resolve();
        const event = message.event;
        if (event.case === "change") {
          if (buffered) {
            buffered.push(event.value);
            pendingCursor = event.value.cursor;
          } else {
            this.applyChange(event.value);
            this.cursor = event.value.cursor;
          }
        } else if (event.case === "heartbeat") {
          if (buffered) pendingCursor = event.value.cursor;
          else this.cursor = event.value.cursor;
        }
      }
    };

    const takeSnapshot = async () => {
      await opened.promise;
      if (!needSnapshot) {
        // Resuming (auto-load restarted): the state held is current as of the cursor.
        if (this.firstSnapshot && this.state) this.publish(this.state);
        healthy = true;
        attempt.healthy = true;
        this.setStatus("live");
        return;
      }
      const state = await this.snapshot(stream.signal);
      for (const change of buffered ?? []) applyToState(state, change);
      buffered = undefined;
      this.cursor = pendingCursor;
      this.publish(state);
      healthy = true;
      attempt.healthy = true;
      this.setStatus("live");
    };

    try {
      const consuming = consume();
      const snapshotting = takeSnapshot();
      // Whichever fails first ends this stream.
      consuming.catch(() => opened.reject(new Error("stream failed before it opened")));
      await Promise.all([consuming, snapshotting]);
      return { healthy };
    } catch (error) {
      if (stream.signal.aborted && !signal.aborted) return { healthy };
      throw error;
    } finally {
      clearTimeout(idle);
      for (const timer of timers) clearTimeout(timer);
      signal.removeEventListener("abort", stopStream);
      stream.abort();
    }
  }

  /** Applies one streamed change to the state and the store. */
  private applyChange(change: Change): void {
    if (!this.state) return;
    const before = flattenState(this.state);
    applyToState(this.state, change);
    this.pushToStore(before, flattenState(this.state));
  }

  // ---- writing ---------------------------------------------------------------

  /** TinyBase's `setPersisted`: writes every location where the store differs from the server. */
  async save(): Promise<void> {
    const state = this.state;
    if (!state) return; // Nothing loaded yet: the load will replace the store.
    const server = flattenState(state);
    const shown = flattenStore(this.store);
    const edits = new Map<string, JsonValue | undefined>();
    for (const key of new Set([...server.keys(), ...shown.keys()])) {
      if (!jsonEqual(server.get(key), shown.get(key))) edits.set(key, shown.get(key));
    }
    if (edits.size === 0) return;

    const prefs = new Map<PreferenceId, JsonValue | undefined>();
    const readOnly: Location[] = [];
    let step: JsonValue | undefined | null = null;
    const flags = new Map<string, JsonValue | undefined>();
    const custom = new Map<string, JsonValue | undefined>();
    for (const [key, value] of edits) {
      const location = parseLocationKey(key);
      if (location.kind === "value") {
        if ((PREFERENCE_VALUES as readonly string[]).includes(location.id)) prefs.set(location.id as PreferenceId, value);
        else if (location.id === "onboardingStep") step = value;
        else readOnly.push(location);
      } else if (location.table === FLAGS_TABLE) {
        flags.set(location.row, value);
      } else {
        custom.set(location.row, value);
      }
    }
    const clerkId = await this.user();
    if (prefs.size > 0) await this.guard(PREFERENCES_KEY, edits, this.writePreferences(clerkId, prefs));
    if (step !== null) await this.guard(ONBOARDING_KEY, edits, this.writeOnboarding(clerkId, step));
    for (const [key, description] of [
      [ONBOARDING_KEY, "is read-only: it follows onboardingStep"],
      [USER_KEY, "is read-only: the profile comes from Clerk"],
    ] as const) {
      const locations = readOnly.filter((l) => keyOf(l) === key);
      if (locations.length === 0) continue;
      const refusal = localRefusal(
        key,
        Code.InvalidArgument,
        locations.map((l) => ({ field: describeLocation(l), description })),
      );
      this.refuse(refusal, locations.map((l) => [locationKey(l), edits.get(locationKey(l))]));
    }
    if (flags.size > 0) await this.guard(FLAGS_KEY, edits, this.writeFlags(clerkId, flags));
    for (const [name, value] of custom) {
      await this.guard(CUSTOM_PREFIX + name, edits, this.writeCustom(clerkId, name, value));
    }
  }

  /** Runs a write; on refusal rolls its locations back and reports the error. */
  private async guard(
    key: string,
    edits: Map<string, JsonValue | undefined>,
    write: Promise<void>,
  ): Promise<void> {
    try {
      await write;
    } catch (error) {
      const locations = [...edits.entries()].filter(([k]) => keyOf(parseLocationKey(k)) === key);
      const wrapped = error instanceof UserDataWriteError ? error : UserDataWriteError.fromCall(key, error, []);
      this.refuse(wrapped, locations);
    }
  }

  /** Puts each location back to the server's value (unless edited again since) and reports. */
  private refuse(error: UserDataWriteError, locations: [string, JsonValue | undefined][]): void {
    const server = this.state ? flattenState(this.state) : new Map<string, JsonValue>();
    const shown = flattenStore(this.store);
    const updates = new Map<string, JsonValue | undefined>();
    const rolledBack: string[] = [];
    for (const [key, attempted] of locations) {
      if (jsonEqual(shown.get(key), attempted)) {
        updates.set(key, server.get(key));
        rolledBack.push(describeLocation(parseLocationKey(key)));
      }
    }
    const changes = changesFor(updates);
    if (changes) this.store.applyChanges(changes);
    const reported = new UserDataWriteError({
      code: error.code,
      key: error.key,
      message: error.message,
      fieldViolations: error.fieldViolations,
      reason: error.reason,
      rolledBack,
      cause: error.cause ?? error,
    });
    this.options.onWriteError?.(reported);
  }

  /**
   * Sends a conditional write. Without a known etag (or when nothing was
   * stored), or after a stale one,
   * re-reads the key: if the fields being written still hold what this client
   * last saw, writes against the fresh etag; otherwise someone else changed
   * them first, and the edit is refused (`ABORTED`).
   */
  private async conditional<T>(
    key: string,
    etag: string | undefined,
    send: (etag: string) => Promise<T>,
    reread: () => Promise<{ etag: string; conflicts: string[] }>,
  ): Promise<T> {
    // "" means nothing was stored when this client read it; the server takes
    // an empty etag as "unconditional", so re-read instead.
    let tag = etag || undefined;
    for (let attempt = 0; ; attempt++) {
      if (tag === undefined) {
        const fresh = await reread();
        if (fresh.conflicts.length > 0) {
          throw new UserDataWriteError({
            code: Code.Aborted,
            key,
            message: `${fresh.conflicts.join(", ")} changed elsewhere before this edit was written`,
            fieldViolations: fresh.conflicts.map((field) => ({ field, description: "changed elsewhere first" })),
            reason: "CONFLICT",
          });
        }
        tag = fresh.etag;
      }
      try {
        return await send(tag);
      } catch (error) {
        if (hasCode(error, Code.Aborted) && attempt < MAX_ETAG_RETRIES) {
          tag = undefined;
          continue;
        }
        throw error;
      }
    }
  }

  private async writePreferences(clerkId: string, edits: Map<PreferenceId, JsonValue | undefined>): Promise<void> {
    const state = this.state!;
    const basis = { ...state.preferences };
    const violations: FieldViolation[] = [];
    const theme = edits.has("theme") ? themeToProto(edits.get("theme")) : undefined;
    if (edits.has("theme") && theme === undefined) {
      violations.push({ field: "preferences.theme", description: "must be one of light, dark, system" });
    }
    const notifications = edits.get("notifications");
    if (edits.has("notifications") && typeof notifications !== "boolean") {
      violations.push({ field: "preferences.notifications", description: "must be a boolean" });
    }
    for (const field of ["language", "timezone"] as const) {
      if (edits.has(field) && typeof edits.get(field) !== "string") {
        violations.push({ field: `preferences.${field}`, description: "must be a string" });
      }
    }
    if (violations.length > 0) throw localRefusal(PREFERENCES_KEY, Code.InvalidArgument, violations);
    const fields = [...edits.keys()];
    const response = await this.conditional(
      PREFERENCES_KEY,
      state.preferencesEtag,
      (etag) =>
        this.clients.data.updatePreferences({
          clerkId,
          preferences: {
            theme: theme ?? 0,
            notifications: notifications === true,
            language: (edits.get("language") as string | undefined) ?? "",
            timezone: (edits.get("timezone") as string | undefined) ?? "",
          },
          updateMask: { paths: fields },
          etag,
        }),
      async () => {
        const fresh = await this.clients.data.getPreferences({ clerkId });
        const now = preferencesFromProto(fresh.preferences);
        return { etag: fresh.etag, conflicts: fields.filter((f) => now[f] !== basis[f]).map((f) => `preferences.${f}`) };
      },
    );
    this.confirm(() => {
      state.preferences = preferencesFromProto(response.preferences);
      state.preferencesEtag = response.etag;
    });
  }

  private async writeOnboarding(clerkId: string, step: JsonValue | undefined): Promise<void> {
    const state = this.state!;
    const proto = stepToProto(step);
    if (proto === undefined) {
      throw localRefusal(ONBOARDING_KEY, Code.InvalidArgument, [
        { field: "onboardingStep", description: "must be one of welcome, profile, preferences, complete" },
      ]);
    }
    const basis = state.onboarding.onboardingStep;
    const response = await this.conditional(
      ONBOARDING_KEY,
      state.onboardingEtag,
      (etag) => this.clients.data.advanceOnboarding({ clerkId, step: proto, etag }),
      async () => {
        const fresh = await this.clients.data.getOnboarding({ clerkId });
        const now = onboardingFromProto(fresh.status).onboardingStep;
        return { etag: fresh.etag, conflicts: now === basis ? [] : ["onboarding_status.step"] };
      },
    );
    this.confirm(() => {
      state.onboarding = onboardingFromProto(response.status);
      state.onboardingEtag = response.etag;
    });
  }

  private async writeFlags(clerkId: string, edits: Map<string, JsonValue | undefined>): Promise<void> {
    const state = this.state!;
    const basis = { ...state.flags };
    const set: Record<string, boolean> = {};
    const clear: string[] = [];
    const violations: FieldViolation[] = [];
    for (const [flag, value] of edits) {
      if (value === undefined) clear.push(flag);
      else if (typeof value === "boolean") set[flag] = value;
      else violations.push({ field: `flags.${flag}`, description: "must be a boolean" });
    }
    if (violations.length > 0) throw localRefusal(FLAGS_KEY, Code.InvalidArgument, violations);
    const response = await this.conditional(
      FLAGS_KEY,
      state.flagsEtag,
      (etag) => this.clients.data.updateFeatureFlags({ clerkId, set, clear, etag }),
      async () => {
        const fresh = await this.clients.data.listFeatureFlags({ clerkId });
        const conflicts = [...edits.keys()].filter((f) => fresh.flags[f] !== basis[f]).map((f) => `feature_flags.${f}`);
        return { etag: fresh.etag, conflicts };
      },
    );
    this.confirm(() => {
      state.flags = { ...response.flags };
      state.flagsEtag = response.etag;
    });
  }

  private async writeCustom(clerkId: string, name: string, value: JsonValue | undefined): Promise<void> {
    const state = this.state!;
    const key = CUSTOM_PREFIX + name;
    const basis = state.custom.get(name);
    const reread = async () => {
      try {
        const fresh = await this.clients.data.getUserData({ clerkId, key });
        const now = fresh.entry?.value ? toJson(ValueSchema, fresh.entry.value) : undefined;
        return { etag: fresh.entry?.etag ?? "", conflicts: jsonEqual(now, basis?.value) ? [] : [key] };
      } catch (error) {
        if (!hasCode(error, Code.NotFound)) throw error;
        return { etag: "", conflicts: basis === undefined ? [] : [key] };
      }
    };
    if (value === undefined) {
      await this.conditional(
        key,
        basis?.etag,
        async (etag) => {
          try {
            await this.clients.data.deleteUserData({ clerkId, key, etag });
          } catch (error) {
            // Already gone: what the edit asked for.
            if (!hasCode(error, Code.NotFound)) throw error;
          }
        },
        reread,
      );
      this.confirm(() => state.custom.delete(name));
      return;
    }
    const response = await this.conditional(
      key,
      basis ? basis.etag : "",
      (etag) => this.clients.data.setUserData({ clerkId, key, value: fromJson(ValueSchema, value), etag }),
      reread,
    );
    const entry = response.entry;
    this.confirm(() => {
      if (entry?.value) state.custom.set(name, { value: toJson(ValueSchema, entry.value), etag: entry.etag });
    });
  }

  /** Records a write's answer as the server state and shows any normalisation. */
  private confirm(update: () => void): void {
    if (!this.state) return;
    const before = flattenState(this.state);
    update();
    this.pushToStore(before, flattenState(this.state));
  }
}

/** The server key a location belongs to. */
function keyOf(location: Location): string {
  if (location.kind === "value") {
    if ((PREFERENCE_VALUES as readonly string[]).includes(location.id)) return PREFERENCES_KEY;
    if ((PROFILE_VALUES as readonly string[]).includes(location.id)) return USER_KEY;
    return ONBOARDING_KEY;
  }
  return location.table === FLAGS_TABLE ? FLAGS_KEY : CUSTOM_PREFIX + location.row;
}

/** Applies one change of the log to a state. Etags of changed keys become unknown. */
export function applyToState(state: ServerState, change: Change): void {
  switch (change.kind) {
    case ChangeKind.USER_DELETED: {
      Object.assign(state, emptyState());
      return;
    }
    case ChangeKind.USER_CREATED:
    case ChangeKind.USER_UPDATED: {
      // Erased values (a deleted user's history) carry no profile.
      if (!change.erased) state.profile = profileFromJson(jsonOf(change.after));
      return;
    }
    case ChangeKind.DATA_SET:
    case ChangeKind.DATA_DELETED: {
      const after = change.kind === ChangeKind.DATA_SET ? jsonOf(change.after) : undefined;
      applyKey(state, change.key, after);
      return;
    }
    default:
      return;
  }
}

function applyKey(state: ServerState, key: string, after: JsonValue | undefined): void {
  if (key === PREFERENCES_KEY) {
    const next: PreferencesState = preferencesFromJson(after);
    if (!jsonEqual(next, state.preferences)) {
      state.preferences = next;
      state.preferencesEtag = after === undefined ? "" : undefined;
    }
  } else if (key === ONBOARDING_KEY) {
    const next: OnboardingState = onboardingFromJson(after);
    if (!jsonEqual(next, state.onboarding)) {
      state.onboarding = next;
      state.onboardingEtag = after === undefined ? "" : undefined;
    }
  } else if (key === FLAGS_KEY) {
    const next = flagsFromJson(after);
    if (!jsonEqual(next, state.flags)) {
      state.flags = next;
      state.flagsEtag = after === undefined ? "" : undefined;
    }
  } else if (key.startsWith(CUSTOM_PREFIX)) {
    const name = key.slice(CUSTOM_PREFIX.length);
    if (after === undefined) {
      state.custom.delete(name);
    } else if (!jsonEqual(after, state.custom.get(name)?.value)) {
      state.custom.set(name, { value: after, etag: undefined });
    }
  }
}

/** A TinyBase persister kept in step with one user's data on user-service. */
export type UserDataPersister = Persister;

/**
 * Creates a TinyBase persister for the signed-in user's data on user-service.
 *
 * - `load()` reads preferences, flags, onboarding and `custom.*` into the
 *   store (layout in the package README).
 * - `startAutoLoad()` also follows `WatchChanges`: each change is applied as
 *   it arrives; after a network drop or a token refresh the stream resumes
 *   from the last cursor; a cursor retention no longer holds reloads
 *   everything, then follows again.
 * - `startAutoSave()` writes local edits through the typed RPCs with etags; a
 *   refused edit is rolled back and passed to `onWriteError`.
 *
 * `startAutoPersisting()` does all three.
 */
export function createUserDataPersister(store: Store, options: UserDataPersisterOptions): UserDataPersister {
  const sync = new UserDataSync(store, options);
  return createCustomPersister<AbortController>(
    store,
    () => sync.getPersisted(),
    () => sync.save(),
    (listener) => sync.start(listener),
    (controller) => sync.stop(controller),
    options.onIgnoredError,
  );
}

export type { GetToken };
