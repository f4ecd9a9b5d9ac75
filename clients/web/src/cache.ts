/**
 * Keeping the store in the browser, so that a reload shows the last state at
 * once while the persister catches up with the server.
 *
 * @module
 */
import type { Store } from "tinybase";
import type { Persister } from "tinybase/persisters";
import { createLocalPersister } from "tinybase/persisters/persister-browser";
import { createIndexedDbPersister } from "tinybase/persisters/persister-indexed-db";

/** Where to keep the copy: `localStorage` (synchronous, small) or IndexedDB. */
export type BrowserCacheKind = "local-storage" | "indexeddb";

/**
 * Loads the last saved copy of the store for `clerkId` (if any) and keeps
 * saving it. Call it before starting the user-data persister: the cache only
 * saves, so the server's state always wins once it is loaded. Destroy the
 * returned persister (and clear the storage) when the user signs out.
 */
export async function startBrowserCache(
  store: Store,
  clerkId: string,
  kind: BrowserCacheKind = "indexeddb",
): Promise<Persister> {
  const name = `userdata:${clerkId}`;
  const cache = kind === "indexeddb" ? createIndexedDbPersister(store, name) : createLocalPersister(store, name);
  await cache.load();
  await cache.startAutoSave();
  return cache;
}
