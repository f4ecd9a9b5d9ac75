// The demo: a signed-in user's preferences, flags, onboarding and one custom
// value in a TinyBase store that @userdata/web keeps in step with
// user-service. Sign-in is the development kind: this page's dev server mints
// the token (see vite.config.ts); with Clerk, pass Clerk's getToken instead.
import { createStore } from "tinybase";
import {
  type ConnectionStatus,
  ONBOARDING_STEPS,
  type StepName,
  UserDataWriteError,
  createUserDataPersister,
  startBrowserCache,
} from "@userdata/web";

const params = new URLSearchParams(location.search);
const baseUrl = params.get("api") ?? import.meta.env.VITE_USER_SERVICE_URL ?? "http://127.0.0.1:50061";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

/** Development stand-in for Clerk's `getToken()`: cached until shortly before it expires. */
function devGetToken(clerkId: string): () => Promise<string> {
  let cached: { token: string; exp: number } | undefined;
  return async () => {
    if (cached && cached.exp * 1000 - Date.now() > 10_000) return cached.token;
    const response = await fetch(`/dev/token?sub=${encodeURIComponent(clerkId)}`);
    if (!response.ok) throw new Error(`dev token: ${response.status} ${await response.text()}`);
    const { token, exp } = (await response.json()) as { token: string; exp: number };
    cached = { token, exp };
    return token;
  };
}

async function signIn(clerkId: string): Promise<void> {
  const store = createStore();
  // Last state at once from IndexedDB, then the server's.
  await startBrowserCache(store, clerkId, "indexeddb");

  const persister = createUserDataPersister(store, {
    baseUrl,
    getToken: devGetToken(clerkId),
    onStatus: (status) => showStatus(status),
    onWriteError: (error) => showError(error),
  });
  // Exposed for the browser test and for poking at in the console.
  Object.assign(window, { userdata: { store, persister } });

  $("sign-in").hidden = true;
  $("app").hidden = false;
  signedIn.set(store, clerkId);
  bind(store);
  await persister.startAutoPersisting();
}

function showStatus(status: ConnectionStatus): void {
  const el = $("status");
  el.textContent = status;
  el.dataset["status"] = status;
}

function showError(error: UserDataWriteError): void {
  const el = $("error");
  const fields = error.fieldViolations.map((v) => `${v.field}: ${v.description}`).join("; ");
  const reverted = error.rolledBack.length > 0 ? ` Reverted ${error.rolledBack.join(", ")}.` : "";
  el.textContent = `Not saved (${error.key}): ${fields || error.message}.${reverted}`;
  el.hidden = false;
}

type Store = ReturnType<typeof createStore>;

const signedIn = new WeakMap<Store, string>();
const clerkIdOf = (store: Store) => signedIn.get(store) ?? "";

function bind(store: Store): void {
  document.querySelectorAll<HTMLInputElement>('input[name="theme"]').forEach((radio) =>
    radio.addEventListener("change", () => radio.checked && store.setValue("theme", radio.value)),
  );
  $<HTMLInputElement>("notifications").addEventListener("change", (e) =>
    store.setValue("notifications", (e.target as HTMLInputElement).checked),
  );
  $<HTMLSelectElement>("language").addEventListener("change", (e) =>
    store.setValue("language", (e.target as HTMLSelectElement).value),
  );
  $("timezone-form").addEventListener("submit", (e) => {
    e.preventDefault();
    store.setValue("timezone", $<HTMLInputElement>("timezone").value.trim());
  });
  $("next-step").addEventListener("click", () => {
    const current = ONBOARDING_STEPS.indexOf((store.getValue("onboardingStep") as StepName | undefined) ?? "welcome");
    const next = ONBOARDING_STEPS[Math.min(current + 1, ONBOARDING_STEPS.length - 1)];
    if (next) store.setValue("onboardingStep", next);
  });
  $("note-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $<HTMLInputElement>("note").value;
    if (text === "") store.delRow("custom", "note");
    else store.setCell("custom", "note", "value", text);
  });

  const render = () => {
    const name = [store.getValue("firstName"), store.getValue("lastName")].filter(Boolean).join(" ");
    const email = store.getValue("email");
    $("who").textContent = [name, email ? `<${String(email)}>` : "", `(${clerkIdOf(store)})`].filter(Boolean).join(" ");
    const theme = String(store.getValue("theme") ?? "system");
    document.body.dataset["theme"] = theme;
    document.querySelectorAll<HTMLInputElement>('input[name="theme"]').forEach((r) => (r.checked = r.value === theme));
    $<HTMLInputElement>("notifications").checked = store.getValue("notifications") !== false;
    const language = String(store.getValue("language") ?? "en");
    const select = $<HTMLSelectElement>("language");
    if (![...select.options].some((o) => o.value === language)) select.add(new Option(language, language));
    select.value = language;
    const tz = $<HTMLInputElement>("timezone");
    if (document.activeElement !== tz) tz.value = String(store.getValue("timezone") ?? "UTC");

    const step = (store.getValue("onboardingStep") as StepName | undefined) ?? "welcome";
    const reached = ONBOARDING_STEPS.indexOf(step);
    const completed = store.getValue("onboardingCompleted") === true;
    $("steps").replaceChildren(
      ...ONBOARDING_STEPS.map((name, i) => {
        const li = document.createElement("li");
        li.textContent = name;
        li.dataset["state"] = i < reached || completed ? "done" : i === reached ? "current" : "todo";
        return li;
      }),
    );
    $<HTMLButtonElement>("next-step").disabled = completed;

    const flags = store.getSortedRowIds("flags").map((flag) => {
      const li = document.createElement("li");
      const enabled = store.getCell("flags", flag, "enabled") === true;
      li.innerHTML = `<code></code><span class="${enabled ? "flag-on" : "flag-off"}">${enabled ? "on" : "off"}</span>`;
      li.querySelector("code")!.textContent = flag;
      li.dataset["flag"] = flag;
      return li;
    });
    if (flags.length === 0) {
      const li = document.createElement("li");
      li.textContent = "none set";
      flags.push(li);
    }
    $("flags").replaceChildren(...flags);

    const note = $<HTMLInputElement>("note");
    if (document.activeElement !== note) {
      const value = store.getCell("custom", "note", "value");
      note.value = value === undefined ? "" : typeof value === "string" ? value : JSON.stringify(value);
    }
  };
  store.addValuesListener(render);
  store.addTablesListener(render);
  render();
}

$("sign-in").addEventListener("submit", (e) => {
  e.preventDefault();
  const clerkId = $<HTMLInputElement>("clerk-id").value.trim();
  if (clerkId) void signIn(clerkId);
});
const preset = params.get("user");
if (preset) void signIn(preset);
