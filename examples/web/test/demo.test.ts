// The demo page in a real browser: two pages of one user stay in step with
// user-service and with each other.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, afterEach, before, test } from "node:test";
import { promisify } from "node:util";
import { REPO_ROOT } from "../../../clients/web/dev/user-service.js";
import { type Stack, createUser, freshClerkId, startStack, until } from "./support.js";

const run = promisify(execFile);
const GRPCURL = process.env["GRPCURL"] ?? join(REPO_ROOT, ".tools", "bin", "grpcurl");

let stack: Stack;
before(async () => {
  stack = await startStack();
});
afterEach(async () => {
  await stack.closePages();
});
after(async () => {
  await stack?.close();
});

test("a theme change in one page shows in the other within a second", async () => {
  const clerkId = freshClerkId();
  await createUser(stack.service, clerkId);
  const [a, b] = [await stack.open(clerkId), await stack.open(clerkId)];

  await a.locator('input[name="theme"][value="dark"]').check();

  await b.locator('body[data-theme="dark"]').waitFor({ timeout: 1_000 });
  const stored = await stack.service.clients().data.getPreferences({ clerkId });
  assert.equal(stored.preferences?.theme, 2 /* THEME_DARK */);
});

test("choosing a language in the select writes it to user-service and shows it in the other page", async () => {
  const clerkId = freshClerkId();
  await createUser(stack.service, clerkId);
  const [a, b] = [await stack.open(clerkId), await stack.open(clerkId)];

  await a.getByTestId("language").selectOption("de");

  await until(async () => (await stack.service.clients().data.getPreferences({ clerkId })).preferences?.language === "de");
  await b.waitForFunction(() => (document.getElementById("language") as HTMLSelectElement).value === "de", null, { timeout: 5_000 });
});

test("unticking notifications turns them off on user-service", async () => {
  const clerkId = freshClerkId();
  await createUser(stack.service, clerkId);
  const page = await stack.open(clerkId);
  assert.equal(await page.getByTestId("notifications").isChecked(), true);

  await page.getByTestId("notifications").uncheck();

  await until(async () => (await stack.service.clients().data.getPreferences({ clerkId })).preferences?.notifications === false);
});

test("the next-step button advances onboarding on user-service and in the other page", async () => {
  const clerkId = freshClerkId();
  await createUser(stack.service, clerkId);
  const [a, b] = [await stack.open(clerkId), await stack.open(clerkId)];
  await a.locator('#steps li[data-state="current"]', { hasText: "welcome" }).waitFor({ timeout: 5_000 });

  await a.getByTestId("next-step").click();

  await until(async () => (await stack.service.clients().data.getOnboarding({ clerkId })).status?.step === 2 /* PROFILE */);
  await b.locator('#steps li[data-state="current"]', { hasText: "profile" }).waitFor({ timeout: 5_000 });
});

test("a saved note is written to user-service as custom.note", async () => {
  const clerkId = freshClerkId();
  await createUser(stack.service, clerkId);
  const page = await stack.open(clerkId);

  await page.getByTestId("note").fill("remember the milk");
  await page.getByTestId("note").press("Enter");

  await until(async () => {
    const stored = await stack.service.clients().data.getUserData({ clerkId, key: "custom.note" }).catch(() => undefined);
    return stored?.entry?.value?.kind.case === "stringValue" && stored.entry.value.kind.value === "remember the milk";
  });
});

test("a flag set by an administrator shows in the page, which offers no control to change it", async () => {
  const clerkId = freshClerkId();
  await createUser(stack.service, clerkId);
  const page = await stack.open(clerkId);

  await stack.service.clients().data.updateFeatureFlags({ clerkId, set: { beta_search: true } });

  const flag = page.locator('#flags li[data-flag="beta_search"]');
  await flag.getByText("on").waitFor({ timeout: 5_000 });
  // Flags are read-only for a signed-in user (the server refuses their edits), so the demo only shows them.
  assert.equal(await page.locator("#flags").locator("input, select, button").count(), 0);
});

test("a change made with grpcurl shows in both pages", async () => {
  assert.ok(existsSync(GRPCURL), `grpcurl not found at ${GRPCURL}: run scripts/setup`);
  const clerkId = freshClerkId();
  await createUser(stack.service, clerkId);
  const pages = [await stack.open(clerkId), await stack.open(clerkId)];

  const address = stack.service.url.replace("http://", "");
  const body = JSON.stringify({ clerk_id: clerkId, preferences: { language: "fr" }, update_mask: { paths: ["language"] } });
  await run(GRPCURL, [
    "-plaintext",
    "-H",
    `authorization: Bearer ${stack.service.serviceToken}`,
    "-d",
    body,
    address,
    "userdata.v1.UserDataService/UpdatePreferences",
  ]);

  for (const page of pages) {
    await page.waitForFunction(() => (document.getElementById("language") as HTMLSelectElement).value === "fr", null, { timeout: 5_000 });
  }
});

test("an invalid timezone is refused with the server's field violation and rolled back", async () => {
  const clerkId = freshClerkId();
  await createUser(stack.service, clerkId);
  const [a, b] = [await stack.open(clerkId), await stack.open(clerkId)];

  await a.getByTestId("timezone").fill("Mars/Olympus_Mons");
  await a.getByTestId("timezone-save").click();

  await a.getByTestId("error").getByText("preferences.timezone").waitFor({ timeout: 5_000 });
  await a.waitForFunction(() => (document.getElementById("timezone") as HTMLInputElement).value === "UTC", null, { timeout: 5_000 });
  assert.equal(await a.evaluate(() => (window as unknown as { userdata: { store: { getValue(id: string): unknown } } }).userdata.store.getValue("timezone")), "UTC");
  assert.equal(await b.getByTestId("timezone").inputValue(), "UTC");
  const stored = await stack.service.clients().data.getPreferences({ clerkId });
  assert.equal(stored.preferences?.timezone, "UTC");
});

test("after user-service restarts, both pages catch up", async () => {
  const clerkId = freshClerkId();
  await createUser(stack.service, clerkId);
  const pages = [await stack.open(clerkId), await stack.open(clerkId)];

  await stack.service.restart();
  // Written as soon as the service is back, likely before the pages have
  // reconnected: they get it by resuming from their cursor.
  await stack.service.clients().data.advanceOnboarding({ clerkId, step: 3 /* PREFERENCES */ });
  await stack.service.clients().data.updatePreferences({ clerkId, preferences: { theme: 1 /* LIGHT */ }, updateMask: { paths: ["theme"] } });

  for (const page of pages) {
    await page.locator('body[data-theme="light"]').waitFor({ timeout: 15_000 });
    await page.locator('#steps li[data-state="current"]', { hasText: "preferences" }).waitFor({ timeout: 5_000 });
    await page.locator('[data-testid="status"][data-status="live"]').waitFor({ timeout: 5_000 });
  }
});

test("a reload shows the last state from IndexedDB before user-service answers, then catches up", async () => {
  const clerkId = freshClerkId();
  await createUser(stack.service, clerkId);
  const page = await stack.open(clerkId);
  await page.locator('input[name="theme"][value="dark"]').check();
  await until(async () => (await stack.service.clients().data.getPreferences({ clerkId })).preferences?.theme === 2 /* DARK */);
  // Saved by the browser cache (TinyBase's IndexedDB persister) too.
  await page.waitForFunction(async (name) => {
    const db = await new Promise<IDBDatabase>((resolve, reject) => {
      const open = indexedDB.open(name);
      open.onsuccess = () => resolve(open.result);
      open.onerror = () => reject(open.error);
    });
    const stores = [...db.objectStoreNames];
    const rows = await Promise.all(
      stores.map((store) => new Promise<unknown[]>((resolve) => {
        const all = db.transaction(store).objectStore(store).getAll();
        all.onsuccess = () => resolve(all.result);
      })),
    );
    db.close();
    return JSON.stringify(rows).includes('"dark"');
  }, `userdata:${clerkId}`);
  await stack.service.kill();

  await page.reload();
  await page.locator('body[data-theme="dark"]').waitFor({ timeout: 5_000 });
  assert.notEqual(await page.getByTestId("status").getAttribute("data-status"), "live");

  await stack.service.restart();
  await stack.service.clients().data.updatePreferences({ clerkId, preferences: { theme: 1 /* LIGHT */ }, updateMask: { paths: ["theme"] } });
  await page.locator('body[data-theme="light"]').waitFor({ timeout: 15_000 });
  await page.locator('[data-testid="status"][data-status="live"]').waitFor({ timeout: 5_000 });
});
