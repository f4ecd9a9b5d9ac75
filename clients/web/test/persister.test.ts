// createUserDataPersister against a real user-service over gRPC-Web.
import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";
import { fromJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { ConnectError } from "@connectrpc/connect";
import { Code } from "../src/index.js";
import { OnboardingStep, Theme } from "../src/gen/userdata/v1/user_data_pb.js";
import { mintSessionToken } from "../dev/dev-auth.js";
import { type Harness, client, createUser, destroyClients, expiringStreams, live, plain, startHarness, until } from "./support.js";

let h: Harness;
before(async () => {
  h = await startHarness();
});
afterEach(destroyClients);
after(async () => {
  await h?.close();
});

describe("loading", () => {
  test("load puts preferences, onboarding, flags and custom values in the documented layout", async () => {
    const clerkId = await createUser(h);
    await h.admin.data.updatePreferences({ clerkId, preferences: { theme: Theme.DARK, timezone: "Europe/Berlin" }, updateMask: { paths: ["theme", "timezone"] } });
    await h.admin.data.advanceOnboarding({ clerkId, step: OnboardingStep.PROFILE });
    await h.admin.data.updateFeatureFlags({ clerkId, set: { beta: true, legacy_nav: false } });
    await h.admin.data.setUserData({ clerkId, key: "custom.colour", value: fromJson(ValueSchema, { rgb: [255, 128, 0] }) });

    const c = client(h, clerkId);
    await c.persister.load();

    assert.deepEqual(
      { theme: c.store.getValue("theme"), notifications: c.store.getValue("notifications"), language: c.store.getValue("language"), timezone: c.store.getValue("timezone") },
      { theme: "dark", notifications: true, language: "en", timezone: "Europe/Berlin" },
    );
    assert.equal(c.store.getValue("onboardingStep"), "profile");
    assert.equal(c.store.getValue("onboardingCompleted"), false);
    assert.match(String(c.store.getValue("onboardingStartedAt")), /^\d{4}-\d\d-\d\dT/);
    assert.equal(c.store.getValue("onboardingCompletedAt"), undefined);
    assert.deepEqual(plain(c.store.getTable("flags")), { beta: { enabled: true }, legacy_nav: { enabled: false } });
    assert.deepEqual(plain(c.store.getTable("custom")), { colour: { value: { rgb: [255, 128, 0] } } });
  });

  test("a user with nothing stored loads the documented defaults", async () => {
    const clerkId = await createUser(h);
    const c = client(h, clerkId);
    await c.persister.load();
    assert.deepEqual(plain(c.store.getValues()), {
      theme: "system",
      notifications: true,
      language: "en",
      timezone: "UTC",
      onboardingStep: "welcome",
      onboardingCompleted: false,
      email: `${clerkId}@example.org`,
    });
    assert.deepEqual(plain(c.store.getTables()), {});
  });

  test("the application's own tables and values are kept by a load", async () => {
    const c = client(h, await createUser(h));
    c.store.setValue("sidebarOpen", true).setRow("drafts", "d1", { text: "hi" });
    await c.persister.load();
    assert.equal(c.store.getValue("sidebarOpen"), true);
    assert.deepEqual(plain(c.store.getRow("drafts", "d1")), { text: "hi" });
  });
});

describe("following", () => {
  test("a change written by another client arrives in the store", async () => {
    const clerkId = await createUser(h);
    const c = client(h, clerkId);
    await c.persister.startAutoLoad();
    await live(c);

    await h.admin.data.updatePreferences({ clerkId, preferences: { theme: Theme.LIGHT }, updateMask: { paths: ["theme"] } });
    await h.admin.data.updateFeatureFlags({ clerkId, set: { new_checkout: true } });
    await h.admin.data.setUserData({ clerkId, key: "custom.seen_tour", value: fromJson(ValueSchema, true) });

    await until("theme light, flag and custom value", () =>
      c.store.getValue("theme") === "light" && c.store.getCell("flags", "new_checkout", "enabled") === true && c.store.getCell("custom", "seen_tour", "value") === true,
    );
    await h.admin.data.deleteUserData({ clerkId, key: "custom.seen_tour" });
    await until("custom value deleted", () => !c.store.hasRow("custom", "seen_tour"));
    await c.persister.destroy();
  });

  test("a change to the user record arrives in the profile values", async () => {
    const clerkId = await createUser(h);
    const c = client(h, clerkId);
    await c.persister.startAutoLoad();
    await live(c);

    await h.admin.users.updateUser({ user: { clerkId, firstName: "Ada", lastName: "Lovelace" }, updateMask: { paths: ["first_name", "last_name"] } });

    await until("profile", () => c.store.getValue("firstName") === "Ada" && c.store.getValue("lastName") === "Lovelace");
    assert.equal(c.store.getValue("email"), `${clerkId}@example.org`);
    await c.persister.destroy();
  });

  test("two persisters of one user converge on each other's edits", async () => {
    const clerkId = await createUser(h);
    const [a, b] = [client(h, clerkId), client(h, clerkId)];
    await Promise.all([a.persister.startAutoPersisting(), b.persister.startAutoPersisting()]);
    await Promise.all([live(a), live(b)]);

    a.store.setValue("language", "de");
    b.store.setCell("custom", "note", "value", "from b");

    await until("both see both edits", () =>
      [a, b].every((c) => c.store.getValue("language") === "de" && c.store.getCell("custom", "note", "value") === "from b"),
    );
    assert.deepEqual([a.errors, b.errors], [[], []]);
    await Promise.all([a.persister.destroy(), b.persister.destroy()]);
  });

  test("after user-service is killed and restarted, the stream resumes from its cursor without reloading", async () => {
    const clerkId = await createUser(h);
    const c = client(h, clerkId);
    await c.persister.startAutoLoad();
    await live(c);
    await h.admin.data.updatePreferences({ clerkId, preferences: { language: "fr" }, updateMask: { paths: ["language"] } });
    await until("first change", () => c.store.getValue("language") === "fr");

    await h.service.restart();
    await h.admin.data.updatePreferences({ clerkId, preferences: { language: "ja" }, updateMask: { paths: ["language"] } });
    await h.admin.data.advanceOnboarding({ clerkId, step: OnboardingStep.COMPLETE });

    await until("changes made across the restart", () => c.store.getValue("language") === "ja" && c.store.getValue("onboardingCompleted") === true);
    assert.ok(c.statuses.includes("reconnecting"), `statuses: ${c.statuses.join(",")}`);
    assert.equal(c.calls.filter((m) => m === "GetPreferences").length, 1, `one snapshot only: ${c.calls.join(",")}`);
    await c.persister.destroy();
  });

  test("a cursor older than retention (OUT_OF_RANGE) reloads everything, then follows again", async () => {
    // Its own user-service: it prunes changes older than 2 s when it starts.
    const short = await startHarness(["--change-retention", "2s"]);
    try {
      const clerkId = await createUser(short);
      const ignored: unknown[] = [];
      const c = client(short, clerkId, { onIgnoredError: (e) => ignored.push(e) });
      await c.persister.startAutoLoad();
      await live(c);
      await short.admin.data.updatePreferences({ clerkId, preferences: { language: "fr" }, updateMask: { paths: ["language"] } });
      await until("first change", () => c.store.getValue("language") === "fr");

      await c.persister.stopAutoLoad();
      await short.admin.data.updatePreferences({ clerkId, preferences: { language: "ja" }, updateMask: { paths: ["language"] } });
      const written = Date.now();
      // Let the changes age past retention, then restart: the startup prune
      // drops them. A fresh change (another user) keeps the log non-empty.
      await until("changes older than retention", () => Date.now() - written > 2_500);
      await createUser(short);
      await short.service.restart();
      // The prune runs in the background once the service is up: resume only
      // after it has dropped this user's changes.
      await until("pruned", async () => (await short.admin.changes.listChanges({ clerkId })).changes.length === 0);

      await c.persister.startAutoLoad();
      await until("reloaded", () => c.store.getValue("language") === "ja");
      assert.ok(ignored.some((e) => e instanceof ConnectError && e.code === Code.OutOfRange), `the stream said OUT_OF_RANGE: ${ignored.map(String).join("; ")}`);
      assert.equal(c.calls.filter((m) => m === "GetPreferences").length, 2, "loaded twice");

      await short.admin.data.updatePreferences({ clerkId, preferences: { language: "de" }, updateMask: { paths: ["language"] } });
      await until("following again", () => c.store.getValue("language") === "de");
      await c.persister.destroy();
    } finally {
      await short.close();
    }
  });

  test("the stream is reopened with a fresh token before the old one expires, losing nothing", async () => {
    const clerkId = await createUser(h);
    // 7 s tokens, reopened 5 s before expiry: a new stream about every 2 s.
    const c = client(h, clerkId, { ttlSeconds: 7 });
    await c.persister.startAutoLoad();
    await live(c);
    const streamsBefore = c.calls.filter((m) => m === "WatchChanges").length;

    for (const [i, language] of ["de", "fr", "ja", "pt-BR"].entries()) {
      await until(`stream number ${streamsBefore + i}`, () => c.calls.filter((m) => m === "WatchChanges").length >= streamsBefore + i);
      await h.admin.data.updatePreferences({ clerkId, preferences: { language }, updateMask: { paths: ["language"] } });
      await until(`language ${language}`, () => c.store.getValue("language") === language);
    }
    assert.ok(c.calls.filter((m) => m === "WatchChanges").length >= streamsBefore + 3);
    assert.equal(c.calls.filter((m) => m === "GetPreferences").length, 1);
    await c.persister.destroy();
  });
});

describe("a stream the server ends because its token expired (UNAUTHENTICATED)", () => {
  test("is reopened at once with a fresh token, from its cursor, without a reload", async () => {
    const clerkId = await createUser(h);
    const streams = expiringStreams();
    // A backoff this long outlasts every wait below: only an immediate reopen passes.
    const c = client(h, clerkId, { fetch: streams.fetch, reconnectDelayMs: 60_000, maxReconnectDelayMs: 60_000 });
    await c.persister.startAutoLoad();
    await live(c);
    await h.admin.data.updatePreferences({ clerkId, preferences: { language: "de" }, updateMask: { paths: ["language"] } });
    await until("language de", () => c.store.getValue("language") === "de");

    streams.expire();
    await until("a second stream", () => streams.tokens.length >= 2, 5_000);
    await h.admin.data.updatePreferences({ clerkId, preferences: { language: "fr" }, updateMask: { paths: ["language"] } });

    await until("language fr", () => c.store.getValue("language") === "fr", 5_000);
    await live(c);
    assert.notEqual(streams.tokens[1], streams.tokens[0]);
    assert.equal(c.calls.filter((m) => m === "GetPreferences").length, 1);
    assert.deepEqual(c.statuses.filter((s) => s === "reconnecting" || s === "signed-out"), []);
    assert.deepEqual(c.errors, []);
    await c.persister.destroy();
  });

  test("user-service's own ending at the token's expiry is followed by a reopen with a fresh token", async () => {
    const clerkId = await createUser(h);
    // 2 s tokens the persister does not refresh by itself (a margin far
    // below zero): user-service ends the stream at exp + its 5 s skew.
    const c = client(h, clerkId, { ttlSeconds: 2, tokenRefreshMarginMs: -60_000, reconnectDelayMs: 60_000, maxReconnectDelayMs: 60_000 });
    await c.persister.startAutoLoad();
    await live(c);
    await h.admin.data.updatePreferences({ clerkId, preferences: { language: "de" }, updateMask: { paths: ["language"] } });
    await until("language de", () => c.store.getValue("language") === "de");

    await until("a second stream", () => c.calls.filter((m) => m === "WatchChanges").length >= 2, 15_000);
    await h.admin.data.updatePreferences({ clerkId, preferences: { language: "ja" }, updateMask: { paths: ["language"] } });

    await until("language ja", () => c.store.getValue("language") === "ja", 5_000);
    assert.equal(c.calls.filter((m) => m === "GetPreferences").length, 1);
    assert.deepEqual(c.statuses.filter((s) => s === "reconnecting" || s === "signed-out"), []);
    assert.deepEqual(c.errors, []);
    await c.persister.destroy();
  });

  test("with no token left to give, reports signed-out instead of reopening", async () => {
    const clerkId = await createUser(h);
    const streams = expiringStreams();
    let signedIn = true;
    const c = client(h, clerkId, {
      fetch: streams.fetch,
      getToken: async () => (signedIn ? mintSessionToken(h.keys.privateKeyPem, { sub: clerkId }) : null),
    });
    await c.persister.startAutoLoad();
    await live(c);

    signedIn = false;
    streams.expire();

    await until("signed-out", () => c.statuses.at(-1) === "signed-out");
    assert.equal(streams.tokens.length, 1);
    await c.persister.destroy();
  });
});

describe("writing", () => {
  test("a local preference edit is written with UpdatePreferences", async () => {
    const clerkId = await createUser(h);
    const c = client(h, clerkId);
    await c.persister.startAutoPersisting();

    c.store.setValue("timezone", "America/New_York").setValue("notifications", false);

    await until("stored", async () => {
      const p = (await h.admin.data.getPreferences({ clerkId })).preferences;
      return p?.timezone === "America/New_York" && p.notifications === false;
    });
    assert.deepEqual(c.errors, []);
    assert.ok(c.calls.includes("UpdatePreferences"));
    await c.persister.destroy();
  });

  test("an invalid timezone is refused, rolled back, and reported with the server's field violation", async () => {
    const clerkId = await createUser(h);
    const c = client(h, clerkId);
    await c.persister.startAutoPersisting();

    c.store.setValue("timezone", "Mars/Olympus_Mons");

    await until("an error", () => c.errors.length > 0);
    const [error] = c.errors;
    assert.equal(error?.code, Code.InvalidArgument);
    assert.equal(error?.key, "preferences");
    assert.deepEqual(error?.fieldViolations.map((v) => v.field), ["preferences.timezone"]);
    assert.deepEqual(error?.rolledBack, ["values/timezone"]);
    assert.equal(c.store.getValue("timezone"), "UTC");
    assert.equal((await h.admin.data.getPreferences({ clerkId })).preferences?.timezone, "UTC");
    await c.persister.destroy();
  });

  test("onboarding moving backwards is refused with FAILED_PRECONDITION and rolled back", async () => {
    const clerkId = await createUser(h);
    await h.admin.data.advanceOnboarding({ clerkId, step: OnboardingStep.PREFERENCES });
    const c = client(h, clerkId);
    await c.persister.startAutoPersisting();

    c.store.setValue("onboardingStep", "profile");

    await until("an error", () => c.errors.length > 0);
    assert.equal(c.errors[0]?.code, Code.FailedPrecondition);
    assert.equal(c.store.getValue("onboardingStep"), "preferences");
    await c.persister.destroy();
  });

  test("advancing onboarding is written with AdvanceOnboarding and its times come back", async () => {
    const clerkId = await createUser(h);
    const c = client(h, clerkId);
    await c.persister.startAutoPersisting();

    c.store.setValue("onboardingStep", "complete");

    await until("completed with times", () => c.store.getValue("onboardingCompleted") === true && typeof c.store.getValue("onboardingCompletedAt") === "string");
    assert.equal((await h.admin.data.getOnboarding({ clerkId })).status?.step, OnboardingStep.COMPLETE);
    await c.persister.destroy();
  });

  test("a signed-in user's flag edit is refused by the server (permission) and rolled back", async () => {
    const clerkId = await createUser(h);
    await h.admin.data.updateFeatureFlags({ clerkId, set: { beta: false } });
    const c = client(h, clerkId);
    await c.persister.startAutoPersisting();

    c.store.setCell("flags", "beta", "enabled", true);

    await until("an error", () => c.errors.length > 0);
    assert.equal(c.errors[0]?.code, Code.PermissionDenied);
    assert.equal(c.store.getCell("flags", "beta", "enabled"), false);
    assert.deepEqual((await h.admin.data.listFeatureFlags({ clerkId })).flags, { beta: false });
    await c.persister.destroy();
  });

  test("a profile edit is refused locally (Clerk owns it) and rolled back", async () => {
    const clerkId = await createUser(h);
    const c = client(h, clerkId);
    await c.persister.startAutoPersisting();

    c.store.setValue("email", "someone@else.example");

    await until("an error", () => c.errors.length > 0);
    assert.equal(c.errors[0]?.key, "user");
    assert.deepEqual(c.errors[0]?.fieldViolations.map((v) => v.field), ["values/email"]);
    assert.equal(c.store.getValue("email"), `${clerkId}@example.org`);
    await c.persister.destroy();
  });

  test("read-only onboarding values are refused locally and rolled back", async () => {
    const c = client(h, await createUser(h));
    await c.persister.startAutoPersisting();

    c.store.setValue("onboardingCompleted", true);

    await until("an error", () => c.errors.length > 0);
    assert.equal(c.errors[0]?.code, Code.InvalidArgument);
    assert.deepEqual(c.errors[0]?.fieldViolations.map((v) => v.field), ["values/onboardingCompleted"]);
    assert.equal(c.store.getValue("onboardingCompleted"), false);
    await c.persister.destroy();
  });

  test("custom rows are written with SetUserData and deleted with DeleteUserData", async () => {
    const clerkId = await createUser(h);
    const c = client(h, clerkId);
    await c.persister.startAutoPersisting();

    c.store.setCell("custom", "layout", "value", { columns: 3, pinned: ["inbox"] });
    await until("stored", async () => {
      try {
        const entry = (await h.admin.data.getUserData({ clerkId, key: "custom.layout" })).entry;
        return entry?.value?.kind.case === "structValue";
      } catch {
        return false;
      }
    });

    c.store.delRow("custom", "layout");
    await until("deleted", async () => (await h.admin.data.listUserData({ clerkId })).entries.every((e) => e.key !== "custom.layout"));
    assert.deepEqual(c.errors, []);
    await c.persister.destroy();
  });

  test("an edit based on a value changed elsewhere first is refused with ABORTED and rolled back", async () => {
    const clerkId = await createUser(h);
    const c = client(h, clerkId);
    // Nothing stored yet: the first write re-reads rather than write unconditionally.
    // Loaded once and not following: the store does not see the next change.
    await c.persister.load();
    await c.persister.startAutoSave();
    await h.admin.data.updatePreferences({ clerkId, preferences: { theme: Theme.DARK }, updateMask: { paths: ["theme"] } });

    c.store.setValue("theme", "light");

    await until("an error", () => c.errors.length > 0);
    assert.equal(c.errors[0]?.code, Code.Aborted);
    assert.deepEqual(c.errors[0]?.fieldViolations.map((v) => v.field), ["preferences.theme"]);
    assert.equal(c.store.getValue("theme"), "system");
    assert.equal((await h.admin.data.getPreferences({ clerkId })).preferences?.theme, Theme.DARK);
  });

  test("an edit against a stale etag whose field changed elsewhere is refused with ABORTED", async () => {
    const clerkId = await createUser(h);
    await h.admin.data.updatePreferences({ clerkId, preferences: { theme: Theme.LIGHT }, updateMask: { paths: ["theme"] } });
    const c = client(h, clerkId);
    await c.persister.load();
    await c.persister.startAutoSave();
    await h.admin.data.updatePreferences({ clerkId, preferences: { theme: Theme.DARK }, updateMask: { paths: ["theme"] } });

    c.store.setValue("theme", "system");

    await until("an error", () => c.errors.length > 0);
    assert.equal(c.errors[0]?.code, Code.Aborted);
    assert.equal(c.store.getValue("theme"), "light");
    assert.equal((await h.admin.data.getPreferences({ clerkId })).preferences?.theme, Theme.DARK);
  });

  test("a stale etag caused by another field is re-read and the edit written", async () => {
    const clerkId = await createUser(h);
    await h.admin.data.updatePreferences({ clerkId, preferences: { timezone: "Europe/Paris" }, updateMask: { paths: ["timezone"] } });
    const c = client(h, clerkId);
    await c.persister.load();
    await c.persister.startAutoSave();
    await h.admin.data.updatePreferences({ clerkId, preferences: { language: "de" }, updateMask: { paths: ["language"] } });

    c.store.setValue("theme", "dark");

    await until("stored", async () => (await h.admin.data.getPreferences({ clerkId })).preferences?.theme === Theme.DARK);
    const stored = (await h.admin.data.getPreferences({ clerkId })).preferences;
    assert.equal(stored?.language, "de", "the other field is kept");
    assert.deepEqual(c.errors, []);
    assert.deepEqual(c.calls.filter((m) => m.endsWith("Preferences")), [
      "GetPreferences",
      "UpdatePreferences",
      "GetPreferences",
      "UpdatePreferences",
    ]);
  });
});
